"""The one results row shared by eval, quantize, bench, qat, pipeline and every backend.

See ``docs/results.md`` for the field meanings. ``score`` is the composite score: a weighted sum
of accuracy (0-1), size reduction and speedup relative to the fp32 row (see ``composite_score``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class ResultRow:
    variant: str  # e.g. fp32, dynamic, static, static-ignore, static-auto, qat
    backend: str  # e.g. pytorch, pt2e-x86, onnxruntime
    accuracy: float  # 0-1 on the reported split
    n: int  # images the accuracy was measured on
    drop_pts: float = 0.0  # (fp32 accuracy - accuracy) * 100
    int8_layers: int = 0  # quantizable modules (Linear/Conv) running in int8
    float_layers: int = 0  # quantizable modules kept in float
    size_mb: float = 0.0  # MiB of the artifact file on disk
    latency_ms_per_image: float | None = None
    latency_batch: int | None = None
    latency_threads: int | None = None
    simulated: bool = False  # int8 arithmetic emulated (quantize/dequantize in fp32)
    ignored: list[str] = field(default_factory=list)
    artifact: str | None = None
    speedup: float | None = None
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


def finalize(rows: list[ResultRow], weights: ScoreWeights = ScoreWeights()) -> list[ResultRow]:
    """Fill ``drop_pts``, ``speedup`` and ``score`` against the first fp32 row."""
    ref = next((r for r in rows if r.variant == "fp32"), rows[0])
    for r in rows:
        r.drop_pts = round((ref.accuracy - r.accuracy) * 100, 4)
        if r.latency_ms_per_image and ref.latency_ms_per_image:
            r.speedup = ref.latency_ms_per_image / r.latency_ms_per_image
        r.score = composite_score(r, ref, weights)
    return rows
