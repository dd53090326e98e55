"""The Python API on a small module and the user's own DataLoaders (8x8 digits, normalised by
the test itself): data adapter, analysis against NumPy, static PTQ with an ignore list, dynamic
int8, evaluation rows, ONNX and ExecuTorch exports reloaded and compared with the pt2e model."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import vitquant as vq
from vitquant.api.data import Batches, UserData, rebatch
from vitquant.errors import VitquantError
from vitquant.quant.pt2e import weight_dtypes


class TinyNet(nn.Module):
    """conv (8x8 -> 4x4 patches of 16 channels) + LayerNorm/MLP over the 16 tokens + head."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(1, 16, 2, stride=2)
        self.norm = nn.LayerNorm(16)
        self.fc1 = nn.Linear(16, 32)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(32, 16)
        self.head = nn.Linear(16 * 16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch(x).flatten(2).transpose(1, 2)  # (N, 16 tokens, 16)
        t = t + self.fc2(self.act(self.fc1(self.norm(t))))
        return self.head(t.flatten(1))  # (N, 256) -> (N, 10)


@pytest.fixture(scope="module")
def digits():
    """sklearn's 8x8 digits as (N, 1, 8, 8) float tensors, normalised here (not by vitquant)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = (x - 0.3) / 0.37
    y = torch.tensor(d.target, dtype=torch.long)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    return x[perm], y[perm]


@pytest.fixture(scope="module")
def loaders(digits):
    x, y = digits
    parts = {"train": slice(0, 1000), "calib": slice(1000, 1128), "test": slice(1128, 1384)}
    return {
        k: DataLoader(TensorDataset(x[s], y[s]), batch_size=48, shuffle=(k == "train"))
        for k, s in parts.items()
    }


@pytest.fixture(scope="module")
def tiny(digits):
    x, y = digits
    torch.manual_seed(0)
    model = TinyNet()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(4):  # ~94% on the test slice
        for i in range(0, 1000, 50):
            loss = nn.functional.cross_entropy(model(x[i : i + 50]), y[i : i + 50])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def static(tiny, loaders):
    return vq.quantize(
        tiny,
        vq.StaticPTQ(backend="xnnpack", observer="minmax"),
        calibration=loaders["calib"],
        test=loaders["test"],
        ignore=["head", "fc2"],
        latency_batches=(),
    )


def test_import_vitquant_is_light_and_lists_the_api():
    code = (
        "import sys, vitquant as vq; "
        "print(sorted(m for m in ('torch', 'numpy', 'transformers') if m in sys.modules)); "
        "print('quantize' in dir(vq), 'StaticPTQ' in vq.__all__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split("\n")[:2] == ["[]", "True True"]


def test_api_functions_keep_their_names_over_same_named_modules():
    import vitquant.compare
    import vitquant.evaluate
    import vitquant.pipeline
    import vitquant.report.html  # noqa: F401
    from vitquant.evaluate import predict  # the module itself is untouched

    assert callable(predict)
    for name in ("evaluate", "pipeline", "compare", "report"):
        assert getattr(vq, name).__module__.startswith("vitquant.api."), name


def test_user_batches_are_recut_never_changed(digits):
    x, y = digits
    x, y = x[:200], y[:200]
    batches = [(x[i : i + 37], y[i : i + 37]) for i in range(0, 200, 37)]  # 37, ..., last 15
    data = UserData({"calib": Batches("calibration", batches)})
    assert data.sizes()["calib"] == 200 and len(data.calib_idx) == 200
    got = list(data.batches("calib", None, batch_size=50, limit=130))
    assert [len(b[0]) for b in got] == [50, 50, 30]
    assert torch.equal(torch.cat([b[0] for b in got]), x[:130])  # same values, same order
    assert torch.equal(torch.cat([b[1] for b in got]), y[:130])
    shard = torch.cat([b[0] for b in data.batches("calib", None, batch_size=64, shard=(1, 3))])
    assert torch.equal(shard, x[1::3])
    order = torch.tensor([5, 0, 199])
    picked = next(data.batches("calib", None, batch_size=8, order=order))
    assert torch.equal(picked[0], x[order]) and torch.equal(picked[1], y[order])
    same = next(rebatch(iter(batches), 37))  # a batch of the asked size passes through
    assert same[0] is batches[0][0]
    assert torch.equal(data.labels("calib", limit=10), y[:10])


def test_evaluate_feeds_the_users_batches_as_they_are(tiny, loaders):
    x = torch.cat([b[0] for b in loaders["test"]])
    y = torch.cat([b[1] for b in loaders["test"]])
    with torch.no_grad():
        expected = (tiny(x).argmax(1) == y).float().mean().item()
    ev = vq.evaluate(tiny, test=loaders["test"], latency_batches=())
    assert ev.accuracy == expected and ev.row.n == 256 and ev.row.split == "test"
    assert ev.accuracy > 0.85  # the fixture trained it
    doc = json.loads(json.dumps(ev.to_dict()))
    assert doc["accuracy"] == expected and doc["results"][0]["variant"] == "fp32"
    assert doc["n_test"] == 256 and doc["n_calib"] == 0 and doc["data"] == "user batches"


def test_unusable_inputs_are_refused_with_the_fix(tiny, loaders, digits):
    x, y = digits
    with pytest.raises(VitquantError, match=r"one-shot iterator.*list\(batches\)"):
        vq.analyze(tiny, calibration=((x[i : i + 8], y[i : i + 8]) for i in range(0, 64, 8)))
    shuffled = DataLoader(TensorDataset(x[:64], y[:64]), batch_size=16, shuffle=True)
    with pytest.raises(VitquantError, match="shuffle=False"):
        vq.evaluate(tiny, test=shuffled)
    with pytest.raises(VitquantError, match="no scaling or normalisation"):
        vq.analyze(tiny, calibration=[((x[:8] * 16).to(torch.uint8), y[:8])])
    with pytest.raises(VitquantError, match="calibration="):
        vq.quantize(tiny, vq.StaticPTQ(), test=loaders["test"])
    with pytest.raises(VitquantError, match="closest: head"):
        vq.quantize(tiny, vq.DynamicPTQ(), ignore=["haed"])
    with pytest.raises(VitquantError, match="labels run from"):
        vq.evaluate(nn.Sequential(nn.Flatten(), nn.Linear(64, 3)), test=loaders["test"])


def test_analyze_matches_numpy_on_the_same_activations(tiny, loaders):
    result = vq.analyze(tiny, calibration=loaders["calib"], sample_size=100)
    assert result.payload["family"] == "vit"  # guessed from the LayerNorm: norm/GELU observed
    assert {"norm", "act", "fc1", "head"} <= {p.point for p in result.points}
    outputs = []
    hook = tiny.fc1.register_forward_hook(lambda m, i, o: outputs.append(o.detach()))
    with torch.no_grad():
        for x, _ in loaders["calib"]:
            tiny(x)
    hook.remove()
    values = torch.cat(outputs).double().numpy().reshape(-1)
    q1, q3 = np.percentile(values, [25, 75])
    outside = (values < q1 - 1.5 * (q3 - q1)) | (values > q3 + 1.5 * (q3 - q1))
    fc1 = result.point("fc1")
    assert fc1.count == values.size
    assert fc1.q1 == pytest.approx(q1, rel=1e-12) and fc1.q3 == pytest.approx(q3, rel=1e-12)
    assert fc1.outlier_pct == pytest.approx(100 * outside.mean(), abs=1e-9)
    assert fc1.max == values.max() and fc1.min == values.min()
    doc = json.loads(json.dumps(result.to_dict()))
    assert doc["n_images"] == 128 and doc["role"] == "calib"
    assert doc["layers"][[p["point"] for p in doc["layers"]].index("fc1")]["q1"] == fc1.q1


def test_static_ptq_keeps_the_ignore_list_float(static, tiny):
    assert set(static.ignored) == {"head", "fc2"}
    assert static.int8_layers == ["patch", "fc1"]
    assert static.float_layers == ["fc2", "head"]
    dtypes = weight_dtypes(static.module)  # read from the converted graph itself
    assert dtypes["head"] == dtypes["fc2"] == torch.float32
    assert dtypes["fc1"] == dtypes["patch"] == torch.int8
    fp32, row = static.rows
    assert (fp32.variant, fp32.backend, row.variant, row.backend) == (
        "fp32",
        "pytorch",
        "static",
        "pt2e-xnnpack",
    )
    assert row.agreement_fp32 >= 0.95 and row.drop_pts < 3.0
    assert row.float_layers == 2 and row.ignored == ["fc2", "head"] and row.simulated
    doc = json.loads(json.dumps(static.to_dict()))
    assert doc["ignore"]["modules"] == ["fc2", "head"] and len(doc["results"]) == 2


@pytest.mark.parametrize("suffix", [".onnx", ".pte"])
def test_exports_reload_and_agree_with_the_pt2e_model(static, loaders, tmp_path, suffix):
    path = static.export(tmp_path / f"tiny{suffix}")
    runner = vq.load_artifact(path)
    ev = vq.evaluate(runner, reference=static, test=loaders["test"], latency_batches=())
    ref, row = ev.rows
    assert (ref.variant, ref.backend) == ("static", "pt2e-xnnpack") and row.variant == "static"
    assert row.runtime == ("onnxruntime" if suffix == ".onnx" else "executorch")
    assert row.agreement_pt2e >= 0.99
    x = torch.cat([b[0] for b in loaders["test"]])
    agree = (runner(x).argmax(1) == static(x).argmax(1)).float().mean().item()
    assert agree == row.agreement_pt2e


def test_dynamic_int8_keeps_the_ignore_list_float(tiny, loaders, tmp_path):
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    q = vq.quantize(tiny, vq.DynamicPTQ(), ignore=["type:Linear"], measure=False)
    assert q.int8_layers == [] and q.rows == []  # every Linear ignored, the conv never dynamic
    q = vq.quantize(
        tiny, vq.DynamicPTQ(), ignore=["head"], test=loaders["test"], latency_batches=(1,)
    )
    assert type(q.module.head) is nn.Linear and isinstance(q.module.fc1, DynamicLinear)
    assert q.int8_layers == ["fc1", "fc2"] and q.float_layers == ["patch", "head"]
    fp32, row = q.rows
    assert (row.variant, row.backend, row.simulated) == ("dynamic", "pytorch", False)
    assert row.agreement_fp32 >= 0.95 and row.latency_ms_per_image > 0
    ev = vq.evaluate(q, test=loaders["test"], latency_batches=())
    assert [r.accuracy for r in ev.rows] == [fp32.accuracy, row.accuracy]
    onnx = vq.evaluate(
        vq.load_artifact(q.export(tmp_path / "dynamic.onnx")),
        reference=q,
        test=loaders["test"],
        latency_batches=(),
    )
    assert onnx.row.agreement_pt2e >= 0.97  # ONNX Runtime's own dynamic int8, same layers


def test_a_quantize_job_gives_the_commands_document(tiny, loaders, tmp_path):
    job = vq.QuantizeJob(
        static=vq.StaticPTQ(observer="minmax"),
        variants=("fp32", "static", "static-ignore"),
        ignore=vq.IgnoreScope(names=("head",)),
        onnx=False,
        lower=False,
        latency_batches=(1,),
    )
    run = vq.quantize(tiny, job, calibration=loaders["calib"], test=loaders["test"], out=tmp_path)
    assert [(r.variant, r.backend) for r in run.rows] == [
        ("fp32", "pytorch"),
        ("static", "pt2e-x86"),
        ("static-ignore", "pt2e-x86"),
    ]
    doc = json.loads(json.dumps(run.to_dict()))
    cli_keys = {"model", "checkpoint", "num_classes", "data", "classes", "n_test", "method"}
    cli_keys |= {"job", "score", "results", "ignore", "auto", "notes", "threads", "plots"}
    assert cli_keys <= set(doc)
    assert doc["ignore"]["modules"] == ["head"] and (tmp_path / "artifacts/static.pt2").is_file()
    saved = json.loads(run.save(tmp_path).read_text())
    assert saved["results"] == doc["results"] and "Python API" in saved["command"]
