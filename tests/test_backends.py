"""The backend suite: every registered backend quantizes `digits_vit`, exports its artifact,
reloads it from another folder and is measured by the one `Measurer`.

A backend registered tomorrow runs these tests the day it is registered (the parametrization is
the registry itself).
"""

from __future__ import annotations

import os
import shutil

import pytest

from vitquant.data import load_data
from vitquant.layers import quantizable_names
from vitquant.measure import Candidate, Measurer
from vitquant.quant.backends import BACKENDS, backend_for_label, get_backend, quantizers, register
from vitquant.quant.backends.x86 import X86Backend
from vitquant.quant.configs import StaticPTQ, check_export
from vitquant.quant.pt2e import quantize_static
from vitquant.registry import load_model
from vitquant.results import validate_rows

MAX_DROP = 0.03  # int8 accuracy within 3 points of fp32 on the 120 test images
MIN_RELOAD_AGREEMENT = 0.99


@pytest.fixture(scope="module")
def digits():
    return load_data("digits", calib=64, val=60, limit=120)


@pytest.fixture(scope="module")
def vit(digits_models):
    return load_model("digits_vit")


@pytest.mark.parametrize("name", BACKENDS)
def test_quantize_export_reload_and_measure(name, vit, digits, tmp_path):
    backend = get_backend(name)
    # ONNX Runtime mirrors a PyTorch variant: it quantizes the float ONNX export with the
    # recipe, int8 layers and ignore list of the default quantizer's static model.
    cfg = StaticPTQ(backend=name if backend.pt2e else quantizers()[0], calib=64)
    qm = quantize_static(vit.model, digits, vit.spec, cfg)
    path = tmp_path / "made" / f"static{backend.suffix}"
    exported = backend.export(qm, path, model=vit.model, bundle=digits, spec=vit.spec)
    assert exported.path.suffix == backend.suffix and exported.path.is_file()
    names = quantizable_names(vit.model)
    assert exported.int8_layers == qm.int8_layers and set(exported.int8_layers) <= set(names)
    # in memory: the pt2e graph the artifact was made from (ONNX Runtime, which has no PyTorch
    # model of its own: the session opened on the file it wrote, before the file moves)
    in_memory = qm.module if backend.pt2e else backend.load(exported.path, threads=1)
    moved = tmp_path / "moved" / exported.path.name
    moved.parent.mkdir()
    # the artifact must not depend on where it was written (OpenVINO's .bin moves with it)
    for part in exported.path.parent.glob(exported.path.stem + ".*"):
        shutil.move(part, moved.parent / part.name)
    reloaded = backend.load(moved, threads=1)

    measurer = Measurer(
        digits, vit.spec, latency_batches=(1,), latency_batch=1, threads=1, log=None
    )
    measurer.measure(Candidate("fp32", "pytorch", vit.model.eval(), float_layers=names))
    measurer.measure(
        Candidate(
            "in-memory",
            backend.graph_label or backend.label,
            in_memory,
            runtime="pytorch" if backend.pt2e else backend.runtime,
            size_bytes=0,
        )
    )
    row = measurer.measure(
        Candidate(
            "static",
            backend.label,
            reloaded,
            runtime=backend.runtime,
            artifact=moved,
            int8_layers=exported.int8_layers,
            float_layers=exported.float_layers,
            twin=("in-memory", backend.graph_label or backend.label),
            extra=exported.extra,
        )
    )
    rows = measurer.finalize()
    validate_rows(rows)
    fp32 = rows[0]
    assert row.n == fp32.n == 120 and row.runtime == backend.runtime
    assert row.agreement_pt2e >= MIN_RELOAD_AGREEMENT
    assert fp32.accuracy - row.accuracy <= MAX_DROP
    assert row.int8_layers == len(names) and row.float_layers == 0
    on_disk = sum(os.path.getsize(p) for p in moved.parent.iterdir())
    assert row.size_mb == pytest.approx(on_disk / 2**20)
    fp32_bytes = sum(p.numel() * 4 for p in vit.model.parameters())
    # int8 weights: smaller than the float weights alone, graph or program included (which is
    # a large share of a 100k-parameter model's artifact)
    assert on_disk < fp32_bytes
    assert row.latency_ms_per_image > 0 and row.latency_threads == 1


@pytest.mark.parametrize("name", BACKENDS)
def test_registry_answers_for_every_backend(name):
    backend = get_backend(name)
    assert BACKENDS[name] is backend and backend.name == name
    for label in backend.labels():
        assert backend_for_label(label) is backend
    assert (name in quantizers()) == backend.pt2e
    if backend.pt2e:
        assert StaticPTQ(backend=name).observer == backend.default_observer
        assert backend.make_quantizer([], observer=backend.default_observer) is not None
        for export in backend.exports:
            assert check_export(export, name) == export


def test_a_new_backend_is_one_class_and_one_register_line():
    class Toy(X86Backend):
        name = "toy"
        label = "pt2e-toy"
        default_observer = "percentile"

    try:
        register(Toy())
        assert "toy" in quantizers() and backend_for_label("pt2e-toy").name == "toy"
        assert StaticPTQ(backend="toy").observer == "percentile"
    finally:
        BACKENDS.pop("toy", None)
    assert "toy" not in quantizers()
