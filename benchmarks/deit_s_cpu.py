"""Every int8 path vitquant makes for DeiT-S, timed side by side with fp32 on this CPU.

One process builds each path of ``timm:deit_small_patch16_224`` (random weights: the hubs are
offline; speed and agreement, not accuracy, are the point) with vitquant's own functions and
times them interleaved at batch 1 and batch 32:

=========================== ========== =====================================================
path                        runtime    what
=========================== ========== =====================================================
fp32-eager                  eager      the float model (the reference of every speedup)
fp32-inductor[-freezing]    inductor   ``torch.compile`` of the exported float graph
fp32-inductor-bf16          inductor   the same under bf16 autocast (variant ``bf16``: not an
                                       int8 path, it shows what bf16 alone buys)
fp32-ort[-opt]              onnxrt     the float ONNX export [after ORT's transformer optimizer]
fp32-pte                    executorch the float model lowered to XNNPACK
dynamic-pytorch             eager      ``quantize_dynamic`` (fbgemm/oneDNN int8 Linear)
dynamic-ort[-opt]           onnxrt     ORT dynamic int8 [of the optimized float model]
dynamic-pte                 executorch XNNPACK dynamic int8 ``.pte``
static-x86-*                inductor   x86 pt2e static int8 lowered by inductor: ``inductor``
                                       (default config), ``freezing``, ``cpp-wrapper`` and
                                       ``max-autotune`` (both with freezing); ``bf16``:
                                       freezing, the float operators under bf16 autocast
                                       (int8-mixed-bf16, vitquant's x86 default on a CPU
                                       with native bf16), alone or with ``cpp-wrapper`` /
                                       ``max-autotune``; ``int8-attn-bf16``: also the
                                       attention matmuls in int8 (torchao's fused int8
                                       SDPA, AMX CPUs; ``StaticPTQ(int8_attention=True)``)
static-ort[-opt]            onnxrt     ORT static QDQ (mirroring the x86 recipe) [of the
                                       optimized float model, every MatMul]
static-pte                  executorch XNNPACK static int8 ``.pte``
fp32-openvino               openvino   the float model converted to OpenVINO IR (f32 kernels)
static-openvino             openvino   NNCF static int8 (transformer recipe: the attention
                                       matmuls too) run by OpenVINO's CPU plugin
=========================== ========== =====================================================

Calibration: ``--calib`` CIFAR-10 train images upscaled to 224 px by DeiT-S's own timm eval
transform (the timed inputs are CIFAR test images through the same transform).

Timing: after each path is built and warmed up (compiled) at every batch, ``--repeats`` rounds
go round-robin over the paths (the start rotates each round); in a round each path gets one
untimed call and ``--iters`` timed calls. A row reports the median ms/image over all its timed
calls with the interquartile range, images/s, and each speedup as the median (and IQR) of the
per-round ratios ``reference round median / path round median`` - ratios of interleaved
measurements, so a slower minute for the machine slows both sides. ``..._of_medians`` is the
ratio of the overall medians. ``speedup_vs_fp32_same_runtime`` compares with the fp32 path of
the path's own runtime (``reference`` in the row).

Peak memory: each path is loaded again in a child process (``--memory subprocess``), warmed up
at the largest batch, its RSS high-water mark reset (``/proc/self/clear_refs``, 5) and then
``--iters`` calls run: ``peak_rss_mb`` is ``VmHWM`` after that (the model, runtime and
activations resident during inference), ``load_peak_rss_mb`` the high-water mark of the load
and compilation, ``import_rss_mb`` that of the child before it loaded anything.

Agreement: logit SQNR (dB) of each path against fp32 eager on the same batch; and, with
``--cifar-images N``, the same paths built for the trained ``cifar_vit`` (32 px) and their top-1
agreement with its fp32 eager predictions on N CIFAR-10 test images.

Kernel share: each path is profiled by its runtime (``vitquant.quant.kernel_share``): the share
of the matrix work in int8 kernels, labelled ``partial`` under 0.9; the best int8 path's top
operators are saved (inductor paths recompiled with ``cpp.enable_kernel_profile`` so the fused
LayerNorm/GELU/softmax kernels show by name).

    python benchmarks/deit_s_cpu.py                          # the full run, ~1 h on 2 cores
    python benchmarks/deit_s_cpu.py --repeats 3 --cifar-images 200
    python benchmarks/deit_s_cpu.py --quick                  # tiny ViT, 2 rounds (a test)

Writes runs/bench/deit_s_cpu.json and deit_s_cpu.md (or --out) and the artifacts beside them.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

DEIT = "timm:deit_small_patch16_224"
TARGET_EAGER = {True: 4.0, False: 3.0}  # speedup vs fp32 eager, by "the CPU has VNNI"
TARGET_SAME_RUNTIME = 2.0
CHUNK = 32  # inductor graphs are compiled for batch 1 and this batch; larger ones run in chunks


@dataclass(frozen=True)
class Path_:
    """One path: how it is made, what runs it and what it is compared with.

    Attributes:
        name: row name.
        variant: ``fp32``, ``dynamic`` or ``static``.
        runtime: ``eager``, ``inductor``, ``onnxruntime``, ``executorch`` or ``openvino``.
        artifact: file name in the artifacts folder.
        reference: the fp32 path of the same runtime (``speedup_vs_fp32_same_runtime``).
        inductor: inductor config patch (inductor paths only).
    """

    name: str
    variant: str
    runtime: str
    artifact: str
    reference: str
    inductor: dict | None = None


FREEZE, NO_FREEZE = {"freezing": True}, {"freezing": False}
CPP_WRAPPER, AUTOTUNE = {**FREEZE, "cpp_wrapper": True}, {**FREEZE, "max_autotune": True}
BF16 = {**FREEZE, "bf16": True}  # not an inductor option: ``Compiled`` runs under bf16 autocast
BF16_CPP, BF16_TUNE = {**BF16, "cpp_wrapper": True}, {**BF16, "max_autotune": True}
F_IND, F_FRZ, S86 = "fp32-inductor", "fp32-inductor-freezing", "static-x86.pt2"
S86A = "static-x86-int8-attn.pt2"  # StaticPTQ(int8_attention=True): torchao's fused int8 SDPA
PATHS = {
    p.name: p
    for p in (
        Path_("fp32-eager", "fp32", "eager", "fp32.pt", "fp32-eager"),
        Path_(F_IND, "fp32", "inductor", "fp32.pt", F_IND, NO_FREEZE),
        Path_(F_FRZ, "fp32", "inductor", "fp32.pt", F_FRZ, FREEZE),
        Path_("fp32-ort", "fp32", "onnxruntime", "fp32.onnx", "fp32-ort"),
        Path_("fp32-ort-opt", "fp32", "onnxruntime", "fp32-opt.onnx", "fp32-ort-opt"),
        Path_("fp32-pte", "fp32", "executorch", "fp32.pte", "fp32-pte"),
        Path_("dynamic-pytorch", "dynamic", "eager", "dynamic.pt", "fp32-eager"),
        Path_("dynamic-ort", "dynamic", "onnxruntime", "dynamic.onnx", "fp32-ort"),
        Path_("dynamic-ort-opt", "dynamic", "onnxruntime", "dynamic-opt.onnx", "fp32-ort-opt"),
        Path_("dynamic-pte", "dynamic", "executorch", "dynamic.pte", "fp32-pte"),
        Path_("static-x86-inductor", "static", "inductor", S86, F_IND, NO_FREEZE),
        Path_("static-x86-freezing", "static", "inductor", S86, F_FRZ, FREEZE),
        Path_("static-x86-cpp-wrapper", "static", "inductor", S86, F_FRZ, CPP_WRAPPER),
        Path_("static-x86-max-autotune", "static", "inductor", S86, F_FRZ, AUTOTUNE),
        Path_("static-x86-bf16", "static", "inductor", S86, F_FRZ, BF16),
        Path_("static-x86-bf16-cpp-wrapper", "static", "inductor", S86, F_FRZ, BF16_CPP),
        Path_("static-x86-bf16-max-autotune", "static", "inductor", S86, F_FRZ, BF16_TUNE),
        Path_("static-x86-int8-attn-bf16", "static", "inductor", S86A, F_FRZ, BF16),
        Path_("static-x86-int8-attn-bf16-cpp-wrapper", "static", "inductor", S86A, F_FRZ, BF16_CPP),
        Path_("fp32-inductor-bf16", "bf16", "inductor", "fp32.pt", F_FRZ, BF16),
        Path_("static-ort", "static", "onnxruntime", "static.onnx", "fp32-ort"),
        Path_("static-ort-opt", "static", "onnxruntime", "static-opt.onnx", "fp32-ort-opt"),
        Path_("static-pte", "static", "executorch", "static.pte", "fp32-pte"),
        Path_("fp32-openvino", "fp32", "openvino", "fp32.xml", "fp32-openvino"),
        Path_("static-openvino", "static", "openvino", "static.xml", "fp32-openvino"),
    )
}  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Models and data


def make_model(kind: str) -> tuple[torch.nn.Module, object]:
    """``(float model, ModelSpec)``: ``deit_s`` (random weights, seed 0), ``quick`` (a tiny ViT
    at 32 px with cifar_vit's spec, seed 0) or ``cifar_vit`` (the trained checkpoint)."""
    from vitquant.registry import get_spec, load_model

    if kind == "cifar_vit":
        loaded = load_model("cifar_vit")
        return loaded.model.eval(), loaded.spec
    torch.manual_seed(0)
    if kind == "deit_s":
        spec = get_spec(DEIT)
        return spec.build(spec.num_classes or 1000).eval(), spec
    from timm.models.vision_transformer import VisionTransformer

    tiny = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2, mlp_ratio=2)
    return VisionTransformer(num_classes=10, **tiny).eval(), get_spec("cifar_vit")


# ---------------------------------------------------------------------------------------------
# Build: every artifact through vitquant's own functions (as ``quantize --method all`` does)


def build_artifacts(model, spec, bundle, names: list[str], art: Path, calib: int, log) -> dict:
    """Write the artifacts of ``names`` into ``art``; returns ``path name -> details`` (a step
    that fails puts ``error`` in the details of every path that needs it; the others go on)."""
    from vitquant.layers import quantizable_names
    from vitquant.quant.artifacts import save_state_dict
    from vitquant.quant.backends import get_backend
    from vitquant.quant.configs import StaticPTQ
    from vitquant.quant.dynamic import quantize_dynamic
    from vitquant.quant.executorch_backend import export_pte
    from vitquant.quant.onnx_backend import OnnxFloat, quantize_onnx_dynamic, quantize_onnx_static
    from vitquant.quant.openvino_backend import quantize_openvino
    from vitquant.quant.pt2e import quantize_static

    art.mkdir(parents=True, exist_ok=True)
    example = next(bundle.batches("calib", spec, batch_size=8))[0]
    ort, xnn, x86 = (get_backend(n) for n in ("onnxruntime", "xnnpack", "x86"))
    details: dict[str, dict] = {n: {} for n in names}
    made: dict = {}

    def step(needed_by: list[str], what: str, fn: Callable[[], object]) -> None:
        needed = [n for n in needed_by if n in names and "error" not in details[n]]
        if not needed:
            return
        log(f"{what} ...")
        start = time.perf_counter()
        try:
            made[what] = fn()
        except Exception as exc:  # one failing path must not stop the benchmark
            for n in needed:
                details[n]["error"] = f"{what}: {type(exc).__name__}: {str(exc)[:300]}"
        seconds = time.perf_counter() - start
        log(f"{what}: {seconds:.1f} s")
        for n in needed:
            details[n].setdefault("build_seconds", {})[what] = seconds

    def x86_static():
        qm = quantize_static(
            model, bundle, spec, StaticPTQ(backend="x86", calib=calib, calib_batch=8)
        )
        x86.save(qm, art / "static-x86.pt2")
        return qm

    def x86_int8_attention():
        cfg = StaticPTQ(backend="x86", calib=calib, calib_batch=8, int8_attention=True)
        x86.save(quantize_static(model, bundle, spec, cfg), art / S86A)

    def pte(tag: str, build: Callable[[], object]) -> Callable[[], object]:
        def run():
            exported = xnn.export(build(), art / f"{tag}.pte")
            details[f"{tag}-pte"]["lowering"] = exported.note

        return run

    def fp32_pte():
        with xnn.tracing(model):  # attention without fused SDPA, as the int8 programs
            details["fp32-pte"]["lowering"] = export_pte(model, example, art / "fp32.pte").note()

    onnx_paths = [n for n in names if PATHS[n].runtime == "onnxruntime"]
    opt_paths = [n for n in onnx_paths if n.endswith("-opt")]
    x86_paths = [n for n in names if n.startswith("static-x86") and PATHS[n].artifact == S86]
    x86_paths.append("static-ort")
    attn_paths = [n for n in names if PATHS[n].artifact == S86A]
    save_state_dict(model, art / "fp32.pt")
    step(
        onnx_paths, "fp32 ONNX export", lambda: ort.export_float(model, example, art / "fp32.onnx")
    )
    step(
        opt_paths,
        "ORT transformer optimizer",
        lambda: optimize_onnx(art / "fp32.onnx", art / "fp32-opt.onnx", model),
    )
    for n in opt_paths:
        if "ORT transformer optimizer" in made:
            details[n]["ort_optimizer"] = made["ORT transformer optimizer"][1]
    step(
        ["dynamic-pytorch", "dynamic-ort"],
        "dynamic int8 (PyTorch)",
        lambda: quantize_dynamic(model),
    )
    if "dynamic int8 (PyTorch)" in made:
        save_state_dict(made["dynamic int8 (PyTorch)"].module, art / "dynamic.pt")
    step(
        ["dynamic-ort"],
        "dynamic int8 (ORT)",
        lambda: ort.export(
            made["dynamic int8 (PyTorch)"], art / "dynamic.onnx", source=made["fp32 ONNX export"]
        ),
    )
    step(
        ["dynamic-ort-opt"],
        "dynamic int8 (ORT, optimized)",
        lambda: quantize_onnx_dynamic(OnnxFloat(art / "fp32-opt.onnx"), art / "dynamic-opt.onnx"),
    )
    step(x86_paths, f"static x86 pt2e ({calib} calibration images)", x86_static)
    step(attn_paths, "static x86 pt2e, int8 attention", x86_int8_attention)
    step(
        ["static-ort"],
        "static QDQ (ORT)",
        lambda: ort.export(
            made[f"static x86 pt2e ({calib} calibration images)"],
            art / "static.onnx",
            source=made["fp32 ONNX export"],
            bundle=bundle,
            spec=spec,
        ),
    )
    step(
        ["static-ort-opt"],
        "static QDQ (ORT, optimized)",
        lambda: quantize_onnx_static(
            OnnxFloat(art / "fp32-opt.onnx"),
            bundle,
            spec,
            art / "static-opt.onnx",
            calib=calib,
            calib_batch=8,
        ),
    )
    step(
        ["fp32-openvino"],
        "fp32 OpenVINO IR",
        lambda: get_backend("openvino").export_float(model, example, art / "fp32.xml"),
    )
    step(
        ["static-openvino"],
        f"static int8 (NNCF + OpenVINO, {calib} calibration images)",
        lambda: quantize_openvino(
            model,
            bundle,
            spec,
            art / "static.xml",
            modules=quantizable_names(model),
            calib=calib,
            calib_batch=8,
        ),
    )
    step(["fp32-pte"], "fp32 .pte (XNNPACK)", fp32_pte)
    step(
        ["dynamic-pte"],
        "dynamic .pte (XNNPACK)",
        pte("dynamic", lambda: xnn.quantize_dynamic(model, example=example)),
    )
    static_xnn = StaticPTQ(backend="xnnpack", calib=calib, calib_batch=8)
    step(
        ["static-pte"],
        "static .pte (XNNPACK)",
        pte("static", lambda: quantize_static(model, bundle, spec, static_xnn)),
    )
    return details


def optimize_onnx(src: Path, dst: Path, model) -> tuple[Path, dict]:
    """ORT's transformer optimizer on the float export (``vit``, else ``bert`` if ``vit`` fused
    no attention); returns the file and the fused-operator counts of each try.

    The fused operators (``SkipLayerNormalization``, ``BiasGelu``...) live in the
    ``com.microsoft`` domain, which ONNX shape inference does not know and ORT's quantizer then
    fails on; ORT's own ``quant_pre_process`` (symbolic shape inference, no further
    optimization) writes their shapes into the saved file.
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process
    from onnxruntime.transformers.optimizer import optimize_model

    heads, hidden = model.blocks[0].attn.num_heads, model.embed_dim
    tried = {}
    for kind in ("vit", "bert"):
        optimized = optimize_model(str(src), model_type=kind, num_heads=heads, hidden_size=hidden)
        tried[kind] = {k: v for k, v in optimized.get_fused_operator_statistics().items() if v}
        if tried[kind].get("Attention") or tried[kind].get("MultiHeadAttention"):
            break
    raw = dst.with_name(dst.stem + "-raw.onnx")
    optimized.save_model_to_file(str(raw))
    quant_pre_process(str(raw), str(dst), skip_optimization=True)
    raw.unlink()
    return dst, {"model_type": kind, "fused": tried}


# ---------------------------------------------------------------------------------------------
# Load: the runner of a path from its artifact (the same in this process and in a child)


class Compiled:
    """A graph compiled by inductor under a config patch, at batch 1 and batch ``CHUNK``.

    Inductor compiles one static graph per shape on its first call, so every new shape is
    first called inside ``torch._inductor.config.patch(**options)`` (the patch must be in force
    when compiling; ``torch.compile(options=...)`` does not carry ``freezing`` into the x86
    int8 passes); batches other than 1 run in chunks of ``CHUNK``, the last one padded.
    """

    def __init__(self, graph: torch.fx.GraphModule, options: dict) -> None:
        self.options, self.graph = dict(options), graph
        from vitquant.quant import x86_attention

        self.options.update(x86_attention.inductor_patch())  # as vitquant's LoweredModel
        self.bf16 = self.options.pop("bf16", False)  # int8-mixed-bf16 (vitquant's x86 default
        # where the CPU has native bf16): the float operators run under bf16 autocast
        self.compiled = torch.compile(graph, backend="inductor", dynamic=False)
        self.shapes: set = set()

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            if x.shape not in self.shapes:
                import torch._inductor.config as inductor_config

                with inductor_config.patch(**self.options):
                    out = self.compiled(x)
                self.shapes.add(x.shape)
            else:
                out = self.compiled(x)
        return out.float()

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        if n == 1 or n == CHUNK:
            return self._run(x)
        outs = []
        for start in range(0, n, CHUNK):
            part = x[start : start + CHUNK]
            k = part.shape[0]
            if k < CHUNK:
                part = torch.cat([part, part[-1:].expand(CHUNK - k, *part.shape[1:])])
            outs.append(self._run(part)[:k])
        return torch.cat(outs)


def load_runner(path: Path_, model_kind: str, art: Path, threads: int) -> Callable:
    """``x -> logits`` of ``path`` from its artifact in ``art``."""
    from vitquant.quant.artifacts import load_pt2e
    from vitquant.quant.backends import get_backend
    from vitquant.registry import read_state_dict

    file = art / path.artifact
    if path.runtime == "onnxruntime":
        return get_backend("onnxruntime").load(file, threads=threads)
    if path.runtime == "executorch":
        return get_backend("xnnpack").load(file, threads=threads)
    if path.runtime == "openvino":
        return get_backend("openvino").load(file, threads=threads)
    if file.suffix == ".pt2":
        return Compiled(load_pt2e(file), path.inductor or {})
    model, spec = make_model(model_kind)
    if path.variant == "dynamic":  # deterministic: re-quantize the saved float model
        from vitquant.quant.dynamic import quantize_dynamic

        model.load_state_dict(read_state_dict(art / "fp32.pt"))
        return quantize_dynamic(model).module
    model.load_state_dict(read_state_dict(file))
    if path.runtime == "eager":
        return model
    from vitquant.quant.pt2e import export_model

    return Compiled(export_model(model, torch.zeros(2, *spec.input_size)), path.inductor or {})


# ---------------------------------------------------------------------------------------------
# Timing: interleaved rounds, speedups as medians of per-round ratios


def median_iqr(values: list[float]) -> dict:
    """``{"median", "iqr"}`` of ``values`` (IQR 0 for fewer than two)."""
    if len(values) < 2:
        return {"median": values[0], "iqr": 0.0}
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return {"median": statistics.median(values), "iqr": q3 - q1}


@torch.no_grad()
def interleaved(
    runners: dict[str, Callable], x: torch.Tensor, *, rounds: int, iters: int, label: str
) -> dict[str, dict]:
    """Time every runner on ``x`` round-robin: per path, ``samples`` (ms/image of every timed
    call) and ``rounds_ms`` (the median of each round)."""
    from vitquant.progress import track

    names = list(runners)
    out = {n: {"samples": [], "rounds_ms": []} for n in names}
    for r in track(range(rounds), total=rounds, description=label):
        for name in names[r % len(names) :] + names[: r % len(names)]:  # rotate the start
            fn = runners[name]
            fn(x)  # untimed: caches, thread pools
            times = []
            for _ in range(iters):
                t0 = time.perf_counter()
                fn(x)
                times.append((time.perf_counter() - t0) * 1000.0 / x.shape[0])
            out[name]["samples"].extend(times)
            out[name]["rounds_ms"].append(statistics.median(times))
    return out


def timing_row(timed: dict, name: str, eager: str, reference: str | None) -> dict:
    """One batch of a row: median ms/image and IQR, images/s and both speedups (median and IQR
    of per-round ratios, and the ratio of the overall medians)."""
    mine = timed[name]
    lat = median_iqr(mine["samples"])
    row = {
        "ms_per_image": lat["median"],
        "iqr_ms": lat["iqr"],
        "images_per_s": 1000.0 / lat["median"],
        "rounds_ms": mine["rounds_ms"],
        "timed_calls": len(mine["samples"]),
    }
    for key, ref in (("speedup_vs_fp32_eager", eager), ("speedup_vs_fp32_same_runtime", reference)):
        if ref is None or ref not in timed:
            row[key] = row[f"{key}_of_medians"] = None
            continue
        theirs = timed[ref]
        ratios = [a / b for a, b in zip(theirs["rounds_ms"], mine["rounds_ms"], strict=True)]
        row[key] = median_iqr(ratios)
        row[f"{key}_of_medians"] = statistics.median(theirs["samples"]) / lat["median"]
    return row


def same_runtime_reference(path: Path_, names: list[str]) -> str | None:
    """The path's fp32 reference if it was run, else another fp32 path of its runtime."""
    if path.reference in names:
        return path.reference
    others = [n for n in names if PATHS[n].variant == "fp32" and PATHS[n].runtime == path.runtime]
    return others[0] if others else None


# ---------------------------------------------------------------------------------------------
# Kernel share and operator profiles (vitquant.quant.kernel_share)


def profile_ops(path: Path_, runner, art: Path, x: torch.Tensor, threads: int) -> list:
    """The runtime's profile of one call of ``path`` on ``x`` (``OpTime`` list)."""
    from vitquant.quant import kernel_share as ks

    if path.runtime == "onnxruntime":
        return ks.profile_ort(art / path.artifact, x, threads=threads)
    if path.runtime == "executorch":
        return ks.profile_pte(art / path.artifact, x, threads=threads)
    if path.runtime == "openvino":
        return ks.profile_openvino(art / path.artifact, x, threads=threads)
    return ks.profile_torch(runner, x)


def operator_profile(path: Path_, runner, art: Path, x: torch.Tensor, threads: int) -> dict:
    """Top operators by self time of ``path`` at ``x``'s batch. Inductor paths are compiled
    again with ``cpp.enable_kernel_profile`` so fused kernels appear by name (their ops in the
    name: ``cpp_fused_native_layer_norm_quantize_per_tensor_3``) instead of inside ``## Call
    CompiledFxGraph ##``; a ``cpp_wrapper`` path is profiled without its C++ wrapper."""
    from vitquant.quant import kernel_share as ks

    note = None
    if path.runtime == "inductor":
        options = {k: v for k, v in (path.inductor or {}).items() if k != "cpp_wrapper"}
        options["cpp.enable_kernel_profile"] = True
        runner = Compiled(copy.deepcopy(runner.graph), options)
        runner(x)
        note = f"recompiled with {options} to name the fused kernels"
    ops = profile_ops(path, runner, art, x, threads)
    return {
        "path": path.name,
        "batch": int(x.shape[0]),
        "note": note,
        "kernel_share": ks.kernel_share(ops).to_dict(),
        "ops": ks.top_ops(ops, 25),
    }


# ---------------------------------------------------------------------------------------------
# Peak memory: each path alone in a child process


def _status_mb(field_name: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) / 1024.0  # kB -> MiB
    except OSError:
        return None
    return None


def memory_child(request: dict) -> dict:
    """Run in the child: load one path, warm it up, reset the RSS high-water mark, run it."""
    threads = request["threads"]
    torch.set_num_threads(threads)
    path, art = PATHS[request["path"]], Path(request["art"])
    imported = _status_mb("VmHWM")
    runner = load_runner(path, request["model"], art, threads)
    shape = request["input_shape"]
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        runner(x)
        load_peak = _status_mb("VmHWM")
        try:
            Path("/proc/self/clear_refs").write_text("5")
            method = "VmHWM after clear_refs 5 (inference only)"
        except OSError:
            method = "ru_maxrss (load and compilation included: clear_refs not writable)"
        for _ in range(request["iters"]):
            runner(x)
    peak = _status_mb("VmHWM")
    if peak is None:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return {
        "peak_rss_mb": peak,
        "load_peak_rss_mb": load_peak,
        "import_rss_mb": imported,
        "batch": shape[0],
        "method": method,
    }


def measure_memory(name: str, model_kind: str, art: Path, shape, threads: int, iters: int):
    """``memory_child`` of ``name`` in a fresh interpreter; its JSON answer (or the error)."""
    request = {
        "path": name,
        "model": model_kind,
        "art": str(art),
        "input_shape": list(shape),
        "threads": threads,
        "iters": iters,
    }
    cmd = [sys.executable, str(Path(__file__).resolve()), "--memory-child", json.dumps(request)]
    env = {**os.environ, "VITQUANT_QUIET": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if done.returncode != 0 or not lines:
        return {"error": (done.stderr.strip().splitlines() or ["no output"])[-1][:300]}
    return json.loads(lines[-1])


# ---------------------------------------------------------------------------------------------
# One model through every path


@dataclass
class Run:
    """What one model's paths gave: loaded runners, per-path details, errors."""

    kind: str
    art: Path
    runners: dict[str, Callable] = field(default_factory=dict)
    details: dict[str, dict] = field(default_factory=dict)


def load_all(kind: str, names, args, bundle_spec, batches: list[int], log, *, built=None) -> Run:
    """Build every path of ``kind`` and load, warm up (compile) each at every batch;
    ``built(run)`` is called between the two, before any runner is loaded."""
    from vitquant.data import load_data

    model, spec = make_model(kind)
    bundle = bundle_spec or load_data("cifar10", val=0, calib=args.calib, limit=max(batches))
    art = args.out.with_suffix("") / kind
    run = Run(kind, art, details=build_artifacts(model, spec, bundle, names, art, args.calib, log))
    if built is not None:
        built(run)
    for name in names:
        if "error" in run.details[name]:
            log(f"  {name}: {run.details[name]['error']}")
            continue
        log(f"load {name}")
        start = time.perf_counter()
        try:
            runner = load_runner(PATHS[name], kind, art, args.threads)
            with torch.no_grad():
                for b in batches:
                    runner(torch.zeros(b, *spec.input_size))  # compiles inductor graphs
        except Exception as exc:
            run.details[name]["error"] = f"load/warm-up: {type(exc).__name__}: {str(exc)[:300]}"
            log(f"  {name}: {run.details[name]['error']}")
            continue
        run.details[name]["load_seconds"] = time.perf_counter() - start
        run.runners[name] = runner
    return run


def logits_sqnr(run: Run, x: torch.Tensor) -> dict[str, float | None]:
    """Logit SQNR (dB) of each path against fp32 eager on ``x``."""
    from vitquant.analysis.weights import sqnr_db

    with torch.no_grad():
        ref = run.runners["fp32-eager"](x).float().numpy()
        out = {}
        for name, fn in run.runners.items():
            db = sqnr_db(ref, fn(x).float().numpy())
            out[name] = db if math.isfinite(db) else None  # identical logits: no noise
    return out


def cifar_agreement_child(names: list[str], args, log) -> dict[str, dict]:
    """``cifar_agreement`` in a fresh interpreter (this script with ``--cifar-child``).

    Why: a process that has run OpenVINO and inductor graphs side by side has ended in a
    segfault when it later compiled another inductor graph or forked; a child started before
    this process loads anything keeps the step, and the run, safe.
    """
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--cifar-child",
        "--paths",
        *names,
        "--cifar-images",
        str(args.cifar_images),
        "--calib",
        str(args.calib),
        "--threads",
        str(args.threads),
        "--out",
        str(args.out),
    ]
    env = {**os.environ, "VITQUANT_QUIET": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=7200)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if done.returncode != 0 or not lines:
        error = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1][:300]
        log(f"cifar_vit agreement failed: {error}")
        return {name: {"error": error} for name in names}
    return json.loads(lines[-1])


def cifar_agreement(names: list[str], args, log) -> dict[str, dict]:
    """Top-1 agreement with fp32 eager (and accuracy) of each path built for ``cifar_vit``."""
    from vitquant.data import load_data
    from vitquant.evaluate import predict

    bundle = load_data("cifar10", val=0, calib=args.calib, limit=args.cifar_images)
    _, spec = make_model("cifar_vit")
    run = load_all("cifar_vit", names, args, bundle, [CHUNK], log)
    preds, labels = {}, None
    for name, fn in run.runners.items():
        logits, labels = predict(fn, bundle, "test", spec, batch_size=CHUNK)
        preds[name] = logits.argmax(1)
    out = {}
    for name in names:
        if name not in preds:
            out[name] = {"error": run.details[name].get("error", "not run")}
            continue
        out[name] = {
            "agreement_fp32_eager": (preds[name] == preds["fp32-eager"]).float().mean().item(),
            "accuracy": (preds[name] == labels).float().mean().item(),
            "images": len(labels),
        }
    return out


# ---------------------------------------------------------------------------------------------
# Verdicts, machine, report


def machine() -> dict:
    """CPU model, PyTorch's CPU capability, VNNI flags, cores, platform."""
    flags, model = set(), None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model is None:
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags |= set(line.split(":", 1)[1].split())
    except OSError:
        pass
    vnni = sorted(f for f in ("avx512_vnni", "avx_vnni", "amx_int8") if f in flags)
    return {
        "cpu_model": model or platform.processor(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "has_vnni": any(f in flags for f in ("avx512_vnni", "avx_vnni")),
        "int8_flags": vnni,
        "cores": os.cpu_count(),
        "platform": platform.platform(),
    }


def versions() -> dict:
    import importlib.metadata as md

    out = {}
    for pkg in ("torch", "torchao", "onnxruntime", "executorch", "timm", "onnx"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def verdicts(rows: list[dict], batches: list[int], has_vnni: bool) -> dict:
    """The best int8 path (geometric mean over batches of its speedup vs fp32 eager) and how
    far it is from the targets at each batch (``factor_short``: target / achieved, > 1 when
    missed)."""
    target = TARGET_EAGER[has_vnni]

    def speed(row, b, key):
        s = (row.get("batches") or {}).get(str(b), {}).get(key)
        return s["median"] if s else None

    timed = [
        r
        for r in rows
        if r["variant"] in ("static", "dynamic")
        and all(speed(r, b, "speedup_vs_fp32_eager") for b in batches)
    ]
    if not timed:
        return {"best_path": None, "met": False, "note": "no int8 path was timed"}

    def score(r):
        logs = [math.log(speed(r, b, "speedup_vs_fp32_eager")) for b in batches]
        return math.exp(sum(logs) / len(logs))

    best = max(timed, key=score)
    by_batch, met = {}, True
    for b in batches:
        eager, same = (
            speed(best, b, k) for k in ("speedup_vs_fp32_eager", "speedup_vs_fp32_same_runtime")
        )
        ok_eager, ok_same = eager >= target, same is not None and same >= TARGET_SAME_RUNTIME
        met = met and ok_eager and ok_same
        by_batch[str(b)] = {
            "speedup_vs_fp32_eager": eager,
            "met_vs_fp32_eager": ok_eager,
            "factor_short_vs_fp32_eager": target / eager,
            "speedup_vs_fp32_same_runtime": same,
            "met_vs_fp32_same_runtime": ok_same,
            "factor_short_vs_fp32_same_runtime": TARGET_SAME_RUNTIME / same if same else None,
            "fastest_int8_path": max(timed, key=lambda r: speed(r, b, "speedup_vs_fp32_eager"))[
                "path"
            ],
        }
    return {
        "targets": {
            "vs_fp32_eager": target,
            "vs_fp32_same_runtime": TARGET_SAME_RUNTIME,
            "basis": "CPU with VNNI" if has_vnni else "CPU without VNNI",
        },
        "best_path": best["path"],
        "best_score_geomean_vs_eager": score(best),
        "by_batch": by_batch,
        "met": met,
    }


def _fmt(v, spec=".2f", none="-") -> str:
    return none if v is None else format(v, spec)


def markdown(doc: dict) -> str:
    """The rows as one markdown table, then the verdict."""
    batches = doc["batches"]
    head = ["path", "variant", "runtime"]
    for b in batches:
        head += [
            f"b{b} ms/img (IQR)",
            f"b{b} img/s",
            f"b{b} x eager",
            f"b{b} x same rt",
            f"b{b} int8 share",
        ]
    head += ["SQNR dB", "cifar agree", "peak RSS MiB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in doc["rows"]:
        cells = [r["path"], r["variant"], r["runtime"]]
        for b in batches:
            t = (r.get("batches") or {}).get(str(b))
            if not t:
                cells += ["-"] * 5
                continue
            share = t.get("kernel_share") or {}
            eager, same = t["speedup_vs_fp32_eager"], t["speedup_vs_fp32_same_runtime"]
            cells += [
                f"{t['ms_per_image']:.2f} ({t['iqr_ms']:.2f})",
                f"{t['images_per_s']:.1f}",
                f"{eager['median']:.2f} ±{eager['iqr']:.2f}" if eager else "-",
                f"{same['median']:.2f} ±{same['iqr']:.2f}" if same else "-",
                f"{_fmt(share.get('share'))} {share.get('label', '')}".strip(),
            ]
        cifar = r.get("cifar") or {}
        cells += [
            _fmt(r.get("sqnr_db"), ".1f"),
            _fmt(cifar.get("agreement_fp32_eager"), ".4f"),
            _fmt((r.get("memory") or {}).get("peak_rss_mb"), ".0f"),
        ]
        if r.get("error"):
            cells[3] = f"error: {r['error'][:60]}"
        lines.append("| " + " | ".join(cells) + " |")
    v = doc["verdict"]
    lines.append("")
    if v.get("best_path"):
        t = v["targets"]
        lines.append(
            f"Best int8 path: **{v['best_path']}**; targets ({t['basis']}): >= "
            f"{t['vs_fp32_eager']}x vs fp32 eager, >= {t['vs_fp32_same_runtime']}x vs fp32 of "
            "its runtime: "
            f"{'met' if v['met'] else 'missed'}."
        )
        for b, s in v["by_batch"].items():
            lines.append(
                f"- batch {b}: {s['speedup_vs_fp32_eager']:.2f}x vs eager (target / achieved "
                f"{s['factor_short_vs_fp32_eager']:.2f}), "
                f"{_fmt(s['speedup_vs_fp32_same_runtime'])}x vs its runtime's fp32; fastest "
                f"int8 path at this batch: {s['fastest_int8_path']}"
            )
    return "\n".join(lines) + "\n"


def method(args) -> dict:
    """How each figure was measured, in words (the module docstring has the details)."""
    memory = (
        "a child process per path; VmHWM reset with /proc/self/clear_refs (5) after load and "
        "warm-up, then --iters calls at the largest batch"
    )
    return {
        "timing": (
            "round-robin over paths, start rotated per round; 1 untimed + --iters timed calls "
            "per path per round; speedups: median (IQR) of per-round ratios of round medians"
        ),
        "memory": memory if args.memory == "subprocess" else "not measured",
        "calibration": (
            f"{args.calib} CIFAR-10 train images through the model's eval transform "
            "(upscaled to 224 px for DeiT-S)"
        ),
        "kernel_share": (
            "int8 / (int8 + float) self time of matrix kernels in the runtime's profiler "
            "(vitquant.quant.kernel_share); partial under 0.9, float at 0"
        ),
    }


def benchmark(args, log, save: Callable[[dict], None]) -> dict:
    """The whole run; returns the JSON document. The child-process steps (cifar_vit agreement,
    peak memory) run after the artifacts are built and before this process loads any runner."""
    start = time.perf_counter()
    kind = "quick" if args.quick else "deit_s"
    names = ["fp32-eager", *[n for n in args.paths if n != "fp32-eager"]]
    batches = sorted(set(args.batches))
    _, spec = make_model(kind)
    memory: dict[str, dict] = {}
    agree: dict[str, dict] = {}

    def children(run: Run) -> None:
        """The child-process steps, before this process loads any runner (a run that started
        them after loading OpenVINO and inductor graphs side by side ended in a segfault of
        this process): cifar_vit agreement, then each path's peak RSS."""
        built = [n for n in names if "error" not in run.details[n]]
        if args.cifar_images:
            log(f"cifar_vit agreement of {len(built)} paths (child process)")
            agree.update(cifar_agreement_child(built, args, log))
        if args.memory != "subprocess":
            return
        for name in names:
            if "error" in run.details[name]:
                continue
            if args.memory_paths is None or name in args.memory_paths:
                log(f"peak memory of {name} (child process)")
                shape = (max(batches), *spec.input_size)
                memory[name] = measure_memory(name, kind, run.art, shape, args.threads, args.iters)

    run = load_all(kind, names, args, None, batches, log, built=children)
    from vitquant.data import load_data
    from vitquant.evaluate import example_batch, file_size_mb
    from vitquant.quant import kernel_share as ks

    bundle = load_data("cifar10", val=0, calib=args.calib, limit=max(batches))
    examples = {b: example_batch(bundle, spec, b) for b in batches}
    sqnr = logits_sqnr(run, examples[max(batches)])
    timed = {
        b: interleaved(
            run.runners, examples[b], rounds=args.repeats, iters=args.iters, label=f"batch {b}"
        )
        for b in batches
    }
    rows = []
    for name in names:
        path = PATHS[name]
        row = {**asdict(path), "path": name, "error": run.details[name].get("error")}
        row.pop("name")
        row["details"] = {k: v for k, v in run.details[name].items() if k != "error"}
        artifact = run.art / path.artifact
        row["size_mb"] = file_size_mb(artifact) if artifact.is_file() else None  # + IR's .bin
        if name in memory:
            row["memory"] = memory[name]
        if args.cifar_images:
            row["cifar"] = agree.get(name)
        if name in run.runners:
            row["sqnr_db"] = sqnr[name]
            ref = same_runtime_reference(path, list(run.runners))
            row["same_runtime_reference"] = ref
            row["batches"] = {}
            for b in batches:
                row["batches"][str(b)] = timing_row(timed[b], name, "fp32-eager", ref)
                try:
                    ops = profile_ops(path, run.runners[name], run.art, examples[b], args.threads)
                    row["batches"][str(b)]["kernel_share"] = ks.kernel_share(ops).to_dict()
                except Exception as exc:
                    row["batches"][str(b)]["kernel_share"] = {
                        "share": None,
                        "label": "unknown",
                        "error": f"{type(exc).__name__}: {str(exc)[:200]}",
                    }
        rows.append(row)
    info = machine()
    verdict = verdicts(rows, batches, info["has_vnni"])
    top = None
    if verdict.get("best_path"):
        best = PATHS[verdict["best_path"]]
        log(f"operator profile of {best.name}")
        x = examples[max(batches)]
        top = operator_profile(best, run.runners[best.name], run.art, x, args.threads)
    doc = {
        "benchmark": "deit_s_cpu",
        "model": "tiny ViT (quick mode)" if args.quick else DEIT,
        "weights": "random (torch.manual_seed(0))",
        "quick": args.quick,
        "machine": info,
        "threads": {
            "torch": torch.get_num_threads(),
            "onnxruntime_intra_op": args.threads,
            "executorch": args.threads,
        },
        "versions": versions(),
        "batches": batches,
        "repeats": args.repeats,
        "iters": args.iters,
        "calib_images": args.calib,
        "cifar_images": args.cifar_images,
        "method": method(args),
        "rows": rows,
        "verdict": verdict,
        "top_ops": top,
        "status": "timed",
        "seconds": time.perf_counter() - start,
    }
    save(doc)  # on disk before the runners are freed
    run.runners.clear()
    torch._dynamo.reset()
    doc["status"] = "complete"
    doc["seconds"] = time.perf_counter() - start
    return doc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10, help="interleaved rounds")
    parser.add_argument("--iters", type=int, default=3, help="timed calls per path per round")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument(
        "--paths", nargs="+", default=list(PATHS), choices=list(PATHS), metavar="PATH"
    )
    parser.add_argument("--cifar-images", type=int, default=1000, help="0: no cifar_vit agreement")
    parser.add_argument("--calib", type=int, default=32, help="calibration images")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--memory", choices=("subprocess", "none"), default="subprocess")
    parser.add_argument(
        "--memory-paths", nargs="+", choices=list(PATHS), metavar="PATH", help="default: all"
    )
    parser.add_argument("--quick", action="store_true", help="tiny ViT, 2 rounds, 2 iterations")
    parser.add_argument("--out", type=Path, default=Path("runs/bench/deit_s_cpu.json"))
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    parser.add_argument("--cifar-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_child:
        from vitquant.quiet import apply

        apply(verbose=False)
        print(json.dumps(memory_child(json.loads(args.memory_child))))
        return 0
    if args.cifar_child:
        from vitquant.quiet import apply

        apply(verbose=False)
        torch.set_num_threads(args.threads)
        names = ["fp32-eager", *[n for n in args.paths if n != "fp32-eager"]]
        print(json.dumps(cifar_agreement(names, args, lambda line: None)))
        return 0
    if args.quick:
        args.repeats, args.iters = min(args.repeats, 2), min(args.iters, 2)
    if args.repeats < 1 or args.iters < 1 or args.calib < 1 or min(args.batches) < 1:
        parser.error("--repeats, --iters, --calib and --batches must be >= 1")
    torch.set_num_threads(args.threads)
    import torch._dynamo.config as dynamo_config

    from vitquant.quiet import apply

    apply(verbose=bool(os.environ.get("VITQUANT_VERBOSE")))
    dynamo_config.cache_size_limit = max(dynamo_config.cache_size_limit, 64)
    from vitquant.io import write_json, write_text

    def save(doc: dict) -> None:
        write_json(args.out, doc)
        write_text(args.out.with_suffix(".md"), markdown(doc))

    doc = benchmark(args, lambda line: print(line, flush=True), save)
    save(doc)
    print(markdown(doc))
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
