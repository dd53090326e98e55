"""``vq.quantize``: one recipe -> a ``Quantized`` model; a ``QuantizeJob`` -> every variant.

- ``StaticPTQ``: ``vitquant.quant.pt2e.quantize_static`` (export, annotate keeping the ignore
  list in float, calibrate on the calibration images, convert).
- ``DynamicPTQ``: ``vitquant.quant.dynamic.quantize_dynamic`` (PyTorch's eager dynamic int8),
  or with ``backend="xnnpack"`` ExecuTorch's dynamic config through pt2e
  (``quantize_dynamic_pt2e``), which lowers to a ``.pte``.
- ``QuantizeJob``: ``vitquant.quant.run.run_variants``, what ``vitquant quantize`` runs.

A ``Quantized`` is callable like the model, measured into results rows when val or test
images are given (``vitquant.measure``), and exported with ``export(path)`` by suffix:
``.pt2`` (``torch.export`` archive), ``.onnx`` (the int8 graph as QuantizeLinear/
DequantizeLinear for ONNX Runtime) or ``.pte`` (ExecuTorch + XNNPACK; XNNPACK quantizer only).
``load_artifact(path)`` loads any of them back as an ``x -> logits`` runner.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from vitquant.api.results import QuantizeRun, Result
from vitquant.api.setup import Setup, scope_modules, setup
from vitquant.errors import VitquantError
from vitquant.io import _jsonable


@dataclass
class Quantized(Result):
    """An int8 model made by ``quantize`` (or kept by ``qat``) and what it contains.

    Attributes:
        module: the model: a converted pt2e ``GraphModule`` or an eager ``nn.Module``.
        variant: ``static``, ``dynamic`` or ``qat``.
        backend: the results row's backend: ``pt2e-x86``, ``pt2e-xnnpack`` or ``pytorch``.
        config: the recipe (``StaticPTQ``, ``DynamicPTQ``, ``QATConfig``).
        int8_layers, float_layers: Linear/Conv module names in int8 / kept in float, read
            back from the quantized model itself.
        ignored: the modules the ignore list kept in float.
        rows: fp32 and this model's ``ResultRow`` (when val/test images were given).
        notes: remarks (ignore-list mapping, lowering, ...).
        spec, name: the float model's ``ModelSpec`` and name.
        example: an input batch (exports trace it; the batch stays dynamic).
        float_model: the float model it was made from.
    """

    command: ClassVar[str] = "quantize"
    is_vitquant_result: ClassVar[bool] = True
    module: Any = field(default=None, repr=False)
    variant: str = "static"
    backend: str = "pt2e-x86"
    config: Any = None
    int8_layers: list[str] = field(default_factory=list)
    float_layers: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    rows: list = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    spec: Any = field(default=None, repr=False)
    name: str = "model"
    example: torch.Tensor | None = field(default=None, repr=False)
    float_model: Any = field(default=None, repr=False)
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.module(x)

    @property
    def simulated(self) -> bool:
        """pt2e graphs run eagerly emulate int8 (quantize/dequantize around float kernels)."""
        from vitquant.quant.backends import backend_for_label
        from vitquant.quant.lowbit.study import BACKEND as LOWBIT

        if self.backend == LOWBIT:
            return True
        target = backend_for_label(self.backend)
        return target is not None and self.backend == target.graph_label

    def to_dict(self) -> dict:
        """``quantize.json``'s fields for this one variant: head, config, rows, ignore list."""
        config = self.config.to_dict() if hasattr(self.config, "to_dict") else self.config
        return _jsonable(
            {
                **self.payload,
                "method": self.variant,
                "config": config,
                "results": [r.to_dict() for r in self.rows],
                "ignore": {"modules": self.ignored, **self.payload.get("ignore", {})},
                "int8_layers": self.int8_layers,
                "float_layers": self.float_layers,
                "notes": self.notes,
            }
        )

    def export(self, path: str | Path, *, max_batch: int = 256) -> Path:
        """Save the int8 model for deployment; the format follows the suffix.

        Args:
            path: ``.pt2`` (``torch.export.save``), ``.onnx`` (ONNX Runtime: the pt2e graph's
                quantize/dequantize pairs as QuantizeLinear/DequantizeLinear; an eager dynamic
                model is exported in float and quantized by ONNX Runtime's dynamic int8 on the
                same layers), ``.pte`` (ExecuTorch program lowered to XNNPACK) or ``.pt``
                (eager models: the state_dict).
            max_batch: ``.pte`` only: the largest batch one call takes (bigger ones are split).

        Returns:
            The written file.
        """
        path = Path(path)
        graph = self.simulated
        if self.example is None and path.suffix != ".pt":
            raise VitquantError(
                "exporting needs an example input: quantize with calibration= or test= batches."
            )
        if path.suffix == ".pt2" and graph:
            from vitquant.quant.artifacts import save_pt2e

            return save_pt2e(self.module, self.example, path)
        if path.suffix == ".pt":
            from vitquant.quant.artifacts import save_state_dict

            return save_state_dict(self.module, path)
        if path.suffix == ".onnx":
            return self._export_onnx(path, graph)
        if path.suffix == ".pte":
            from vitquant.quant.backends import BACKENDS, backend_for_label
            from vitquant.quant.pt2e import QuantizedModel

            pte = next(b for b in BACKENDS.values() if b.suffix == ".pte")
            if backend_for_label(self.backend) is not pte:
                raise VitquantError(
                    f".pte programs run int8 on ExecuTorch's XNNPACK backend, which takes the "
                    f"{pte.name} quantizer's graph; this model is {self.backend}. Quantize with "
                    f"StaticPTQ(backend='{pte.name}') (or DynamicPTQ() with backend='{pte.name}')."
                )
            qm = QuantizedModel(
                self.module, self.int8_layers, self.float_layers, self.ignored, example=self.example
            )
            exported = pte.export(qm, path, max_batch=max_batch)
            self.notes.append(f"{path.name}: {exported.note}")
            return exported.path
        kinds = ".pt2, .onnx, .pte" if graph else ".pt, .onnx"
        raise VitquantError(f"cannot export {self.backend} to {path.name}; use {kinds}.")

    def _export_onnx(self, path: Path, graph: bool) -> Path:
        if graph:
            from vitquant.quant.qat import export_qdq_onnx

            return export_qdq_onnx(self.module, self.example, path)
        from vitquant.quant.onnx_backend import export_onnx, quantize_onnx_dynamic

        with tempfile.TemporaryDirectory() as tmp:
            fp32 = export_onnx(self.float_model, self.example, Path(tmp) / "fp32.onnx")
            out = quantize_onnx_dynamic(fp32, path, ignore=self.ignored, modules=self.int8_layers)
        return out.path

    def _size_bytes(self) -> int:
        """Bytes of the saved model (``.pt2`` for graphs, ``.pt`` state_dict), saved once."""
        if "size_bytes" not in self._cache:
            with tempfile.TemporaryDirectory() as tmp:
                saved = self.export(Path(tmp) / ("m.pt2" if self.simulated else "m.pt"))
                self._cache["size_bytes"] = saved.stat().st_size
        return self._cache["size_bytes"]

    def candidate(self, artifact: Path | None = None):
        """This model as a ``vitquant.measure.Candidate`` (size from ``artifact`` or a temporary
        save)."""
        from vitquant.measure import Candidate
        from vitquant.quant.lowbit.study import BACKEND as LOWBIT

        size = None
        if artifact is None:
            size = self._size_bytes()
        config = self.config.to_dict() if hasattr(self.config, "to_dict") else self.config
        extra = {"config": config, "int8": self.int8_layers, "float": self.float_layers}
        if self.simulated:
            extra["timed"] = "eager quantize/dequantize emulation"
        return Candidate(
            variant=self.variant,
            backend=self.backend,
            runner=self.module,
            artifact=artifact,
            size_bytes=size,
            int8_layers=self.int8_layers,
            float_layers=self.float_layers,
            ignored=self.ignored,
            simulated=self.simulated,
            timed=self.backend != LOWBIT,  # a low-bit emulation's latency says nothing
            extra=extra,
        )


def quantize(
    model,
    config=None,
    *,
    ignore=None,
    data=None,
    calibration=None,
    val=None,
    test=None,
    backend: str | None = None,
    out: str | Path | None = None,
    measure: bool = True,
    latency_batches: Sequence[int] = (1, 32),
    threads: int | None = None,
    family: str | None = None,
    methods: Sequence[str] = (),
    log: Callable[[str], None] | None = None,
) -> Quantized | QuantizeRun:
    """Quantize ``model`` with one recipe, or run a whole ``QuantizeJob``.

    Args:
        model: any ``nn.Module`` (or a registry name / ``load_model`` module).
        config: ``StaticPTQ()`` (default), ``DynamicPTQ()``, ``LowBitPTQ(wbits=4, abits=4,
            quantize_attention=True, ...)`` (simulated low-bit) or a ``QuantizeJob``.
        ignore: layers kept in float: an ``IgnoreScope`` or entries (names, globs such as
            ``"blocks.0.*"``, ``"type:Linear"``); an entry matching nothing is an error that
            names the closest layers. A ``QuantizeJob`` carries its own (``job.ignore``).
        data: a named data set (``digits``, ``cifar10``, a folder) or ``vq.load_data(...)``.
        calibration, val, test: your own ``(images, labels)`` batches (a DataLoader or a
            list), fed to the model as they are. Static PTQ calibrates on ``calibration``; rows
            are measured on ``test`` (and ``val``) when given.
        backend: ``DynamicPTQ`` only: None (PyTorch's eager dynamic int8) or ``xnnpack``.
        out: a folder for the saved model (``<variant>.pt2``/``.pt``) or the job's artifacts
            (default for a job: a new temporary folder, kept).
        measure: measure rows (accuracy, agreement, size, latency) when val/test are given.
        latency_batches: batch sizes timed on test images (empty: no timing).
        threads: intra-op threads while measuring (None: all cores).
        family: ``vit`` or ``cnn`` for a module vitquant did not build (None: guessed).
        methods: ``LowBitPTQ`` only: ViT-aware methods by name (``rotate``, ``ln-reparam``,
            ``smoothquant``, ``twin-gelu``, ``log2-softmax``, ``gptq``; see
            ``vitquant.quant.lowbit.methods``).
        log: where progress lines go (None: silent).

    Returns:
        A ``Quantized`` (one recipe) or a ``QuantizeRun`` (a job).
    """
    from vitquant.quant.configs import DynamicPTQ, StaticPTQ
    from vitquant.quant.lowbit import LowBitPTQ
    from vitquant.quant.run import QuantizeJob

    config = StaticPTQ() if config is None else config
    if methods and not isinstance(config, LowBitPTQ):
        raise VitquantError("methods= are ViT-aware methods of a low-bit recipe: pass LowBitPTQ().")
    if isinstance(config, QuantizeJob):
        if ignore is not None:
            raise VitquantError("a QuantizeJob carries its ignore list: QuantizeJob(ignore=...).")
        s = setup(model, data=data, calibration=calibration, val=val, test=test, family=family)
        return _run_job(s, config, out=out, log=log)
    if not isinstance(config, StaticPTQ | DynamicPTQ | LowBitPTQ):
        raise VitquantError(
            f"config must be StaticPTQ(), DynamicPTQ(), LowBitPTQ() or a QuantizeJob, not "
            f"{type(config).__name__}."
        )
    if backend is not None and not isinstance(config, DynamicPTQ):
        raise VitquantError("backend= is for DynamicPTQ; StaticPTQ(backend=...) picks its own.")
    from vitquant.quant.backends import get_backend

    # the backend's dynamic rows labelled "pytorch" run PyTorch's eager dynamic int8: no export,
    # so no example input is needed
    dyn = get_backend(backend or "x86")
    eager = isinstance(config, DynamicPTQ) and dyn.dynamic_label == "pytorch"
    s = setup(
        model,
        data=data,
        calibration=calibration,
        val=val,
        test=test,
        family=family,
        optional=eager,
    )
    q = _quantize_one(s, config, ignore=ignore, backend=backend, methods=tuple(methods))
    artifact = None
    if out is not None:
        artifact = q.export(Path(out) / (f"{q.variant}.pt2" if q.simulated else f"{q.variant}.pt"))
    if measure and s.data is not None and (s.has("val") or s.has("test")):
        from vitquant.api.evaluate import float_candidate, measure_rows

        q.rows = measure_rows(
            s,
            [float_candidate(s.model), q.candidate(artifact)],
            latency_batches=latency_batches,
            threads=threads,
        )
    return q


def _example(s: Setup) -> torch.Tensor | None:
    for role in ("calib", "test", "val", "fit"):
        if s.has(role):
            return next(s.data.batches(role, s.spec, batch_size=8))[0]
    return None


def _quantize_one(s: Setup, config, *, ignore, backend: str | None, methods=()) -> Quantized:
    from vitquant.quant.backends import get_backend
    from vitquant.quant.configs import StaticPTQ
    from vitquant.quant.lowbit import LowBitPTQ
    from vitquant.quant.pt2e import quantize_static
    from vitquant.quant.scope import ResolvedScope

    modules, notes, matches = scope_modules(s.model, ignore)
    scope = ResolvedScope(modules=modules, notes=notes, matches=matches)
    if isinstance(config, StaticPTQ):
        s.require("calib", why="static PTQ")
        qm = quantize_static(s.model, s.data, s.spec, config, ignore=scope)
        variant, label = "static", get_backend(config.backend).graph_label
    elif isinstance(config, LowBitPTQ):
        from vitquant.quant.lowbit import bits_label
        from vitquant.quant.lowbit.methods import apply_methods
        from vitquant.quant.lowbit.study import BACKEND, LowBitJob, check_job

        s.require("calib", why="low-bit PTQ")
        check_job(LowBitJob(setting=config, methods=tuple(methods)), s.model)
        qm = apply_methods(s.model, s.data, s.spec, config, methods, ignore=modules).qm
        suffix = "+".join(methods) if methods else "minmax"
        variant, label = f"{bits_label(config)}-{suffix}", BACKEND
    else:
        dyn = get_backend(backend or "x86")
        example = _example(s) if s.data is not None else None
        if example is None and dyn.dynamic_label != "pytorch":
            raise VitquantError(
                "dynamic pt2e quantization exports the model: pass calibration= (or test=) "
                "batches so it has an example input."
            )
        qm = dyn.quantize_dynamic(s.model, example=example, cfg=config, ignore=scope)
        qm.example = example
        variant, label = "dynamic", dyn.dynamic_label
    head = s.describe() if s.data is not None else {"model": s.name, "checkpoint": s.checkpoint}
    return Quantized(
        payload={
            **head,
            "num_classes": s.spec.num_classes if s.spec else None,
            "ignore": {"notes": notes, "matches": matches},
        },
        module=qm.module,
        variant=variant,
        backend=label,
        config=qm.config,
        int8_layers=list(qm.int8_layers),
        float_layers=list(qm.float_layers),
        ignored=list(qm.ignored),
        notes=list(qm.notes),
        spec=s.spec,
        name=s.name,
        example=qm.example,
        float_model=s.model,
    )


# ``vitquant quantize --method M`` -> the variants it runs (to name a job's method the same way)
METHODS = {
    ("fp32", "dynamic", "static", "static-ignore", "static-auto"): "all",
    ("fp32", "static", "static-ignore", "static-auto"): "static",
    ("fp32", "dynamic"): "dynamic",
}


def _run_job(s: Setup, job, *, out, log) -> QuantizeRun:
    from vitquant.quant.run import run_variants

    s.require("test", why="a QuantizeJob (its rows are measured on test)")
    if any(v.startswith("static") for v in job.variants):
        s.require("calib", why="static PTQ")
    if job.auto_max_drop is not None:
        s.require("val", why="the accuracy-aware ignore list (static-auto)")
    if job.ignore:
        job.ignore.resolve(s.model)  # an entry matching nothing fails before anything is written
    out = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix="vitquant-quantize-"))
    result = run_variants(
        s.model, s.data, s.spec, job, artifacts=out / "artifacts", log=log or (lambda line: None)
    )
    w = job.weights
    payload = {
        **s.describe(),
        "num_classes": s.spec.num_classes,
        "method": METHODS.get(tuple(job.variants), "custom"),
        "job": job.to_dict(),
        "score": {
            "formula": "w_acc*accuracy + w_size*(1 - size/size_fp32) + "
            "w_speed*(1 - latency/latency_fp32), vs the pytorch fp32 row",
            "weights": {"accuracy": w.accuracy, "size": w.size, "speed": w.speed},
        },
        **result.payload(),
        "plots": [],
    }
    return QuantizeRun(payload=payload, rows=result.rows, variants=result, out=out)


def load_artifact(path: str | Path, *, threads: int | None = None):
    """A saved model as an ``x -> logits`` runner, by suffix.

    ``.onnx``: an ONNX Runtime CPU session (``OrtModel``); ``.pte``: ExecuTorch's runtime
    (``PteModel``); ``.pt2``: the ``torch.export`` graph module. Evaluate it with
    ``vq.evaluate(runner, test=..., reference=quantized)`` to compare it with the model it
    came from.
    """
    path = Path(path)
    if not path.is_file():
        raise VitquantError(f"{path} does not exist.")
    from vitquant.quant.backends import BACKENDS

    loader = next((b for b in BACKENDS.values() if b.suffix == path.suffix), None)
    if loader is None:
        kinds = ", ".join(dict.fromkeys(b.suffix for b in BACKENDS.values()))
        raise VitquantError(f"cannot load {path.name}: use a {kinds} file.")
    return loader.load(path, threads=threads)
