"""The one results row shared by eval, quantize, bench, qat, pipeline and every backend.

Rows are built by one function only, ``vitquant.measure.Measurer.measure``; ``finalize`` then
fills the fields that compare a row with the fp32 rows. See ``docs/results.md`` for the field
meanings and ``vitquant/results.schema.json`` for the JSON Schema every command's rows validate
against. ``score`` is the composite score: a weighted sum of accuracy (0-1), size reduction and
speedup relative to the fp32 row (see ``composite_score``).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable
from dataclasses import KW_ONLY, asdict, dataclass, field
from importlib import resources

from vitquant.errors import VitquantError

# Runtimes a row can run on: its fp32 row of the same runtime is the reference of
# ``speedup_vs_fp32_same_runtime``. ``pytorch`` covers eager, pt2e emulation and inductor.
RUNTIMES = ("pytorch", "onnxruntime", "executorch", "openvino")


@dataclass
class ResultRow:
    # The first four fields may be given by position; the rest only by keyword, so that a new
    # field can never shift a positional argument into the wrong one.
    variant: str  # e.g. fp32, dynamic, static, static-ignore, static-auto, qat
    backend: str  # e.g. pytorch, pt2e-x86, onnxruntime, executorch-xnnpack
    accuracy: float = 0.0  # 0-1 on ``split``
    n: int = 0  # images the accuracy was measured on
    _: KW_ONLY
    runtime: str = "pytorch"  # one of RUNTIMES: what executes the artifact
    split: str = "test"  # the data role ``accuracy`` is measured on
    val_accuracy: float | None = None  # 0-1 on val, when the row was measured on val too
    drop_pts: float = 0.0  # (fp32 accuracy - accuracy) * 100
    agreement_fp32: float | None = None  # top-1 agreement with the fp32 PyTorch row on split
    agreement_pt2e: float | None = None  # top-1 agreement with the PyTorch model it came from
    int8_layers: int = 0  # quantizable modules (Linear/Conv) running in int8
    float_layers: int = 0  # quantizable modules kept in float
    size_mb: float = 0.0  # MiB of the artifact file on disk
    latency_ms_per_image: float | None = None  # median at ``latency_batch``
    latency_spread_ms: float | None = None  # interquartile range of the repeats, per image
    latency_ms_per_image_by_batch: dict[str, float] = field(default_factory=dict)
    latency_batch: int | None = None
    latency_threads: int | None = None
    cpu_capability: str | None = None  # torch.backends.cpu.get_cpu_capability() when timed
    simulated: bool = False  # int8 arithmetic emulated (quantize/dequantize in fp32)
    ignored: list[str] = field(default_factory=list)
    artifact: str | None = None
    speedup_vs_fp32_eager: float | None = None  # fp32 PyTorch eager latency / this, same batch
    speedup_vs_fp32_same_runtime: float | None = None  # fp32 of this runtime / this, same batch
    score: float | None = None
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ScoreWeights:
    """Weights of the composite score ``w_acc*acc + w_size*(1 - size/size_fp32) + w_speed*...``."""

    accuracy: float = 1.0
    size: float = 0.25
    speed: float = 0.25


def composite_score(row: ResultRow, reference: ResultRow, weights: ScoreWeights) -> float:
    """``w_acc * accuracy + w_size * (1 - size/size_ref) + w_speed * (1 - lat/lat_ref)``.

    Higher is better; the fp32 reference scores ``w_acc * accuracy``. Size and latency terms are
    relative reductions, so a variant twice as fast gains ``0.5 * w_speed``; slower variants lose.
    """
    score = weights.accuracy * row.accuracy
    if reference.size_mb > 0:
        score += weights.size * (1.0 - row.size_mb / reference.size_mb)
    if row.latency_ms_per_image and reference.latency_ms_per_image:
        score += weights.speed * (1.0 - row.latency_ms_per_image / reference.latency_ms_per_image)
    return score


def _ratio(reference: ResultRow | None, row: ResultRow) -> float | None:
    if reference is None or row.latency_batch is None:
        return None
    ref = reference.latency_ms_per_image_by_batch.get(str(row.latency_batch))
    if ref is None and reference.latency_batch == row.latency_batch:
        ref = reference.latency_ms_per_image
    if not ref or not row.latency_ms_per_image:
        return None
    return ref / row.latency_ms_per_image


def fp32_reference(rows: list[ResultRow], runtime: str = "pytorch") -> ResultRow | None:
    """The first fp32 row of ``runtime`` (None when there is none)."""
    return next((r for r in rows if r.variant == "fp32" and r.runtime == runtime), None)


def finalize(rows: list[ResultRow], weights: ScoreWeights = ScoreWeights()) -> list[ResultRow]:
    """Fill ``drop_pts``, both speedups and ``score`` against the fp32 rows.

    ``drop_pts`` and ``score`` compare with the fp32 PyTorch row (else the first row);
    ``speedup_vs_fp32_eager`` with the fp32 PyTorch row at the same batch and
    ``speedup_vs_fp32_same_runtime`` with the fp32 row of the row's own runtime at the same
    batch. A speedup is None where its reference was not measured.
    """
    if not rows:
        return rows
    ref = fp32_reference(rows) or rows[0]
    eager = fp32_reference(rows)
    for r in rows:
        r.drop_pts = round((ref.accuracy - r.accuracy) * 100, 4)
        r.speedup_vs_fp32_eager = _ratio(eager, r)
        r.speedup_vs_fp32_same_runtime = _ratio(fp32_reference(rows, r.runtime), r)
        r.score = composite_score(r, ref, weights)
    return rows


@functools.cache
def schema() -> dict:
    """The JSON Schema (draft 2020-12) of one results row: ``vitquant/results.schema.json``."""
    return json.loads(resources.files("vitquant").joinpath("results.schema.json").read_text())


def validate_rows(rows: Iterable[ResultRow | dict]) -> None:
    """Check rows (``ResultRow`` s or their dicts, e.g. a file's ``results``) against the schema.

    Raises:
        VitquantError: naming each invalid row (``variant/backend``) and its first errors.
    """
    from jsonschema import Draft202012Validator

    validator = Draft202012Validator(schema())
    problems = []
    for i, row in enumerate(rows):
        data = row.to_dict() if isinstance(row, ResultRow) else row
        errors = sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path))
        if errors:
            name = f"{data.get('variant')}/{data.get('backend')}" if isinstance(data, dict) else i
            where = [
                f"{'.'.join(map(str, e.absolute_path)) or '(row)'}: {e.message}" for e in errors
            ]
            problems.append(f"row {i} ({name}): " + "; ".join(where[:3]))
    if problems:
        raise VitquantError("results rows do not match the schema: " + " | ".join(problems))
