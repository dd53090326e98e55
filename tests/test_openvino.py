"""The OpenVINO twin (`quantize --openvino`): NNCF static int8 of the float model run by
OpenVINO's CPU plugin - rows, ignore list, size, reload by `bench`, and the refusal for layers
OpenVINO renames."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from test_quant_cli import run  # `python -m vitquant ...` in a subprocess
from vitquant.data import load_data
from vitquant.errors import VitquantError
from vitquant.evaluate import accuracy
from vitquant.layers import quantizable_names
from vitquant.registry import load_model
from vitquant.results import validate_rows

LIMITS = ("--limit", "120", "--val", "60", "--calib", "64", "--threads", "1")


@pytest.fixture(scope="module")
def quantized(tmp_path_factory, digits_models):
    out = tmp_path_factory.mktemp("ov") / "run"
    proc = run(
        "quantize",
        "digits_vit",
        "--method",
        "static",
        "--ignore",
        "head",
        "--openvino",
        "--no-onnx",
        "--no-lower",
        *LIMITS,
        "--out",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, json.loads((out / "quantize.json").read_text())


def test_openvino_twins_of_the_static_variants(quantized):
    _, doc = quantized
    validate_rows(doc["results"])  # the runtime and extra keys are in the results schema
    rows = {(r["variant"], r["backend"]): r for r in doc["results"]}
    assert set(rows) == {
        ("fp32", "pytorch"),
        ("fp32", "openvino"),
        ("static", "pt2e-x86"),
        ("static", "openvino"),
        ("static-ignore", "pt2e-x86"),
        ("static-ignore", "openvino"),
    }
    vit = load_model("digits_vit")
    names = quantizable_names(vit.model)
    fp32, ov_fp32 = rows[("fp32", "pytorch")], rows[("fp32", "openvino")]
    # the float IR computes what the float model does
    assert ov_fp32["agreement_fp32"] == 1.0 and ov_fp32["accuracy"] == fp32["accuracy"]
    for variant in ("static", "static-ignore"):
        ov, twin = rows[(variant, "openvino")], rows[(variant, "pt2e-x86")]
        assert abs(ov["accuracy"] - twin["accuracy"]) * 100 <= 3.0
        assert ov["runtime"] == "openvino" and not ov["simulated"]
        assert ov["extra"]["twin"] == [variant, "pt2e-x86"]
        assert ov["agreement_pt2e"] >= 0.95 and fp32["accuracy"] - ov["accuracy"] <= 0.03
        assert ov["extra"]["config"]["nncf_model_type"] == "transformer"
        # the size is the graph (.xml) and its weights (.bin)
        xml = Path(ov["artifact"])
        on_disk = xml.stat().st_size + xml.with_suffix(".bin").stat().st_size
        assert ov["size_mb"] == pytest.approx(on_disk / 2**20)
    # every layer int8, but the ignored head, read back from the quantized IR
    assert rows[("static", "openvino")]["extra"]["int8"] == names
    ignored = rows[("static-ignore", "openvino")]
    assert ignored["ignored"] == ["head"] and ignored["extra"]["float"] == ["head"]
    assert ignored["extra"]["int8"] == [n for n in names if n != "head"]


def test_the_saved_ir_reloads_and_scores_its_row(quantized):
    from vitquant.quant.backends import get_backend

    _, doc = quantized
    row = next(r for r in doc["results"] if r["backend"] == "openvino" and r["variant"] == "static")
    vit = load_model("digits_vit")
    model = get_backend("openvino").load(row["artifact"], threads=1)
    data = load_data("digits", limit=120)
    assert row["accuracy"] == pytest.approx(accuracy(model, data, "test", vit.spec))
    x, _ = next(data.batches("test", vit.spec, batch_size=16))
    assert model(x[:1]).shape == (1, 10) and model(x).shape == (16, 10)  # any batch


def test_a_model_whose_layers_openvino_renames_is_refused(digits_models):
    """Conv+BatchNorm fuse under a new name in the conversion: no twin rather than a wrong
    ignore list or int8 count."""
    from vitquant.quant.openvino_backend import quantize_openvino

    cnn = load_model("digits_cnn")
    with pytest.raises(VitquantError, match="renamed 3 layer"):
        quantize_openvino(
            cnn.model,
            load_data("digits", calib=32),
            cnn.spec,
            Path("unused.xml"),
            modules=quantizable_names(cnn.model),
            calib=32,
        )
    assert not Path("unused.xml").exists()


def test_a_missing_ir_is_a_clear_error(tmp_path):
    from vitquant.quant.openvino_backend import OvModel

    with pytest.raises(VitquantError, match="not found"):
        OvModel(tmp_path / "missing.xml")


def test_pipeline_offers_the_openvino_twins_to_the_final_choice(tmp_path, digits_models):
    out = tmp_path / "pipe"
    proc = run(
        "pipeline",
        "digits_vit",
        "--openvino",
        "--max-drop",
        "100",
        "--no-qat",
        "--no-lower",
        "--stats-images",
        "64",
        *LIMITS,
        "--out",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads((out / "pipeline.json").read_text())
    rows = {(r["variant"], r["backend"]): r for r in doc["results"]}
    pt2e = [v for v, b in rows if b == "pt2e-x86"]
    static = [v for v in pt2e if v.startswith("static")]
    # one OpenVINO twin per static variant (not the dynamic one), after the fp32 IR
    assert ("fp32", "openvino") in rows
    assert sorted(v for v, b in rows if b == "openvino" and v != "fp32") == sorted(static)
    steps = {d["step"]: d for d in doc["decisions"]}
    for variant in static:
        decision = steps[f"{variant} openvino"]
        assert decision["status"] == "ok" and "NNCF (transformer recipe)" in decision["decision"]
        row = rows[(variant, "openvino")]
        assert row["extra"]["twin"] == [variant, "pt2e-x86"] and row["val_accuracy"] is not None
    # timed, real int8 kernels: a candidate the final rule may pick (the emulated pt2e rows,
    # --no-lower, cannot win on speed)
    assert all(not rows[(v, "openvino")]["simulated"] for v in static)
    assert (doc["final"]["variant"], doc["final"]["backend"]) in rows
