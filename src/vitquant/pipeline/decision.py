"""What a pipeline step hands back: the rows it measured and the one decision it took.

``pipeline.json``'s ``decisions``, ``steps`` and ``flow`` are all read off these objects, so a
figure shown on the flow diagram is the figure the decision was taken on.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from vitquant.results import ResultRow

# ok: a variant within the val budget; miss: over it; skip: the step did not run; info: a
# measurement or analysis that decides nothing by itself; final: the chosen variant.
STATUSES = ("ok", "miss", "skip", "info", "final")


@dataclass(frozen=True)
class Decision:
    """One step's decision and why.

    Attributes:
        step: ``fp32``, ``analysis``, ``static``, ``static-ignore``, ``static-auto``,
            ``dynamic``, ``qat``, ``<variant> .pte`` or ``final``.
        decision: what was decided, e.g. ``kept 3 outlier layer(s) in float``.
        reason: why, with the figures it rests on.
        status: one of ``STATUSES``.
        detail: the figures behind it (``val_drop_pts``, ``test_acc``, ``size_mb``, ...);
            the flow diagram prints these.
    """

    step: str
    decision: str
    reason: str
    status: str = "info"
    detail: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status {self.status!r}: one of {', '.join(STATUSES)}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class StepResult:
    """A step's rows (already measured, in order) and its decision.

    Attributes:
        decision: the step's decision.
        rows: the results rows the step measured (none for analysis, skips and the final).
        record: further figures for ``pipeline.json``'s ``steps`` entry (e.g. the ignore-list
            search's steps), beside ``decision.detail``.
        seconds: wall time of the step (set by ``run_pipeline``).
    """

    decision: Decision
    rows: list[ResultRow] = field(default_factory=list)
    record: dict = field(default_factory=dict)
    seconds: float = 0.0

    def step_entry(self) -> dict:
        """The ``steps`` entry: step name, figures, seconds."""
        return {
            "step": self.decision.step,
            **self.decision.detail,
            **self.record,
            "seconds": round(self.seconds, 2),
        }
