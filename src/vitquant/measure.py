"""One measurement path: a candidate model in, a results row out.

Every command that reports a model (``eval``, ``quantize``, ``qat``, ``bench``, ``pipeline``)
describes it as a ``Candidate`` - what it is, a callable that runs it, the file it was saved to -
and hands it to one ``Measurer``. The measurer runs the candidate over each data role once,
times it on the same example batches as every other candidate, and builds its ``ResultRow``:

- ``accuracy`` on the report split (``test`` when measured) and ``val_accuracy`` on ``val``;
- ``agreement_fp32``: top-1 agreement with the fp32 PyTorch row on the report split (1.0 for
  that row itself);
- ``agreement_pt2e``: with the model the candidate was made from (``Candidate.twin``), e.g. an
  ONNX Runtime or ExecuTorch artifact against its PyTorch pt2e graph, or an inductor-lowered
  graph against its eager emulation;
- ``size_mb`` of the artifact on disk; latency median and interquartile range at each batch.

``Measurer.finalize()`` then adds ``drop_pts``, ``speedup_vs_fp32_eager``,
``speedup_vs_fp32_same_runtime`` and ``score`` (``vitquant.results.finalize``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from vitquant.errors import VitquantError
from vitquant.evaluate import (
    example_batch,
    file_size_mb,
    latency_samples,
    median_and_spread,
    predict,
    set_threads,
)
from vitquant.results import RUNTIMES, ResultRow, ScoreWeights, finalize

FP32 = ("fp32", "pytorch")  # the reference row: agreement_fp32 (1.0 for itself), drop, speedup


@dataclass
class Candidate:
    """A model ready to be measured.

    Attributes:
        variant: ``fp32``, ``dynamic``, ``static``, ``static-ignore``, ``static-auto``, ``qat``...
        backend: the row's backend label (``pytorch``, ``pt2e-x86``, ``onnxruntime``, ...).
        runner: ``x -> logits`` (an ``nn.Module``, a lowered graph, an ONNX/ExecuTorch session).
        runtime: what executes it, one of ``vitquant.results.RUNTIMES``.
        artifact: the saved file (its size is ``size_mb``); None: ``size_bytes`` is used.
        size_bytes: size when there is no file (e.g. an in-memory state dict).
        int8_layers, float_layers: quantizable module names in int8 / kept in float (or their
            counts, when only those are known, e.g. re-measuring a saved row).
        ignored: module names the user or a search kept in float.
        simulated: int8 arithmetic emulated (quantize/dequantize in fp32), not executed.
        twin: ``(variant, backend)`` of an already measured row this candidate was made from;
            ``agreement_pt2e`` compares the two on the report split (``extra.twin`` names it).
        timed: time it (False for an emulated graph whose latency says nothing of a kernel).
        extra: backend-specific details (keys listed in ``results.schema.json``).
    """

    variant: str
    backend: str
    runner: Callable[[torch.Tensor], torch.Tensor]
    runtime: str = "pytorch"
    artifact: str | Path | None = None
    size_bytes: int | None = None
    int8_layers: Sequence[str] | int = ()
    float_layers: Sequence[str] | int = ()
    ignored: Sequence[str] = ()
    simulated: bool = False
    twin: tuple[str, str] | None = None
    extra: dict = field(default_factory=dict)
    timed: bool = True

    def __post_init__(self) -> None:
        if self.runtime not in RUNTIMES:
            raise VitquantError(f"unknown runtime {self.runtime!r}; one of {', '.join(RUNTIMES)}.")


@dataclass
class Measured:
    """A measured candidate: its row and its top-1 predictions by role."""

    row: ResultRow
    preds: dict[str, torch.Tensor]


class Measurer:
    """Measures candidates on the same data, example batches and threads.

    Args:
        data: a ``DataBundle`` (or anything with its ``batches(role, spec, ...)``).
        spec: the model's ``ModelSpec`` (input size, transforms).
        roles: the roles each candidate runs on, once each (``test`` and/or ``val``); the row's
            ``accuracy`` is on ``test`` when measured, else on the last role.
        latency_batches: batch sizes timed (empty: no timing).
        latency_batch: the batch whose latency is the row's ``latency_ms_per_image``.
        threads: intra-op threads (None: all cores, or under torchrun the count torchrun set);
            the count in effect is in every timed row.
        progress: show a progress bar per candidate and role.
        ctx: a ``DistContext`` under torchrun: ranks share the images; rank 0 times.
        log: one line per measured row (None: silent).
    """

    def __init__(
        self,
        data,
        spec,
        *,
        roles: Sequence[str] = ("test",),
        latency_batches: Sequence[int] = (1, 32),
        latency_batch: int = 1,
        threads: int | None = None,
        progress: bool = False,
        ctx=None,
        log: Callable[[str], None] | None = print,
    ) -> None:
        if not roles:
            raise VitquantError("a measurement needs at least one data role (val or test).")
        if latency_batches and latency_batch not in latency_batches:
            raise VitquantError(
                f"--latency-batch {latency_batch} is not among the timed batches "
                f"{list(latency_batches)}."
            )
        if any(b <= 0 for b in latency_batches):
            raise VitquantError("latency batch sizes must be > 0.")
        self.data, self.spec, self.roles = data, spec, tuple(roles)
        self.split = "test" if "test" in self.roles else self.roles[-1]
        self.latency_batch = latency_batch
        distributed = ctx is not None and ctx.world > 1
        self.threads = (
            torch.get_num_threads() if distributed and not threads else set_threads(threads)
        )
        self.examples = {b: example_batch(data, spec, b) for b in sorted(set(latency_batches))}
        self.progress, self.ctx, self.log = progress, ctx, log
        self.measured: list[Measured] = []
        self._labels: dict[str, torch.Tensor] = {}

    @property
    def rows(self) -> list[ResultRow]:
        return [m.row for m in self.measured]

    def find(self, variant: str, backend: str) -> Measured | None:
        return next(
            (m for m in self.measured if (m.row.variant, m.row.backend) == (variant, backend)),
            None,
        )

    def predictions(self, runner, label: str) -> dict[str, torch.Tensor]:
        """Top-1 predictions of ``runner`` on every role (each role read once)."""
        preds = {}
        for role in self.roles:
            desc = f"{label} ({role})" if self.progress else None
            logits, labels = predict(
                runner, self.data, role, self.spec, progress=desc, ctx=self.ctx
            )
            preds[role] = logits.argmax(1)
            self._labels.setdefault(role, labels)
        return preds

    def accuracy(self, preds: torch.Tensor, role: str) -> float:
        return (preds == self._labels[role]).float().mean().item() if len(preds) else 0.0

    def latency(self, runner) -> dict[int, tuple[float, float]]:
        """``batch -> (median ms/image, interquartile range)``; empty on non-main ranks."""
        if self.ctx is not None and not self.ctx.is_main:
            return {}
        with torch.no_grad():
            return {
                b: median_and_spread(latency_samples(runner, x)) for b, x in self.examples.items()
            }

    def measure(self, cand: Candidate) -> ResultRow:
        """Run ``cand`` over every role once, time it, and append its row."""
        if self.find(cand.variant, cand.backend) is not None:
            raise VitquantError(f"{cand.variant}/{cand.backend} was already measured.")
        preds = self.predictions(cand.runner, f"{cand.variant} {cand.backend}")
        lat = self.latency(cand.runner) if cand.timed else {}
        fp32 = self.find(*FP32)
        ref = fp32.preds if fp32 else preds if (cand.variant, cand.backend) == FP32 else None
        twin = self.find(*cand.twin) if cand.twin else None
        if cand.twin and twin is None:
            raise VitquantError(f"twin {cand.twin} of {cand.variant}/{cand.backend} not measured.")
        split = self.split
        if cand.artifact is not None:
            size_mb = file_size_mb(cand.artifact)
        else:
            size_mb = (cand.size_bytes or 0) / 2**20
        row = ResultRow(
            variant=cand.variant,
            backend=cand.backend,
            runtime=cand.runtime,
            accuracy=self.accuracy(preds[split], split),
            n=len(preds[split]),
            split=split,
            val_accuracy=self.accuracy(preds["val"], "val") if "val" in preds else None,
            agreement_fp32=_agree(preds[split], ref[split]) if ref else None,
            agreement_pt2e=_agree(preds[split], twin.preds[split]) if twin else None,
            int8_layers=_count(cand.int8_layers),
            float_layers=_count(cand.float_layers),
            size_mb=size_mb,
            latency_ms_per_image=lat[self.latency_batch][0] if lat else None,
            latency_spread_ms=lat[self.latency_batch][1] if lat else None,
            latency_ms_per_image_by_batch={str(b): v[0] for b, v in lat.items()},
            latency_batch=self.latency_batch if lat else None,
            latency_threads=self.threads if lat else None,
            cpu_capability=torch.backends.cpu.get_cpu_capability() if lat else None,
            simulated=cand.simulated,
            ignored=list(cand.ignored),
            artifact=str(cand.artifact) if cand.artifact is not None else None,
            extra=_extra(cand, twin),
        )
        self.measured.append(Measured(row=row, preds=preds))
        if self.log is not None:
            self.log(describe(row))
        return row

    def finalize(self, weights: ScoreWeights = ScoreWeights()) -> list[ResultRow]:
        """Every row with ``drop_pts``, both speedups and ``score`` filled in."""
        return finalize(self.rows, weights)


def _agree(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a == b).float().mean().item() if len(a) else 0.0


def _count(layers: Sequence[str] | int) -> int:
    return layers if isinstance(layers, int) else len(layers)


def _extra(cand: Candidate, twin: Measured | None) -> dict:
    """The candidate's details, plus the twin compared with and the runtime's own thread
    count (ONNX Runtime intra-op, ExecuTorch's XNNPACK pool) when the runner reports one."""
    extra = dict(cand.extra)
    if twin is not None:
        extra["twin"] = [twin.row.variant, twin.row.backend]
    threads = getattr(cand.runner, "threads", None) if cand.runtime != "pytorch" else None
    if isinstance(threads, int):
        extra["runtime_threads"] = threads
    return extra


def describe(row: ResultRow) -> str:
    """One log line: variant, backend, accuracy, size, latency."""
    lat = f"{row.latency_ms_per_image:.3f} ms/img" if row.latency_ms_per_image else "not timed"
    sim = " (simulated)" if row.simulated else ""
    return (
        f"{row.variant:<14} {row.backend:<18} acc {row.accuracy:.4f}  size "
        f"{row.size_mb:.3f} MiB  {lat}{sim}"
    )
