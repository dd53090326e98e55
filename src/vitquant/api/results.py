"""What the API functions return: the computed objects plus ``to_dict()``, the command's JSON.

Every result keeps the library's own objects (``PointStats``, ``ResultRow``, ``QATResult``,
``PipelineRun``, ...) as attributes, and ``to_dict()`` gives the document the command line writes
for the same command (``vitquant analyze`` -> ``analyze.json`` and so on; see
``docs/results.md``), minus what only a command line has (the invocation, plot files unless the
function was asked to draw them). ``save(directory)`` writes it as ``<command>.json``, so
``vitquant report`` and ``vq.report`` read API runs like command-line runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from vitquant.io import _jsonable, write_json


@dataclass
class Result:
    """Base of every API result: ``payload`` is the command's JSON document."""

    command: ClassVar[str] = ""
    payload: dict = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict:
        """The JSON document ``vitquant <command>`` writes (plain Python values only)."""
        return _jsonable(self.payload)

    def save(self, directory: str | Path) -> Path:
        """Write ``DIRECTORY/<command>.json`` atomically; returns its path."""
        doc = {"command": f"vitquant.{self.command}(...) (Python API)", **self.to_dict()}
        return write_json(Path(directory) / f"{self.command}.json", doc)


@dataclass
class Analysis(Result):
    """``vq.analyze``: activation statistics per observed point and weight statistics.

    Attributes:
        points: one ``vitquant.analysis.stats.PointStats`` per point, in forward order.
        weights: one ``vitquant.analysis.weights.WeightStats`` per Linear/Conv weight.
    """

    command: ClassVar[str] = "analyze"
    points: list = field(default_factory=list)
    weights: list = field(default_factory=list)

    def point(self, name: str):
        """The statistics of point ``name`` (a module name, or ``<attention>.softmax``)."""
        for p in self.points:
            if p.point == name:
                return p
        raise KeyError(f"no point {name!r}; points: {', '.join(p.point for p in self.points)}")

    def top(self, k: int = 10) -> list:
        """The ``k`` points with the largest outlier percentage."""
        return sorted(self.points, key=lambda p: -p.outlier_pct)[:k]

    @property
    def significant_modules(self) -> list[str]:
        """Modules (ignore-list names) owning a point above the threshold."""
        return sorted({p.module for p in self.points if p.significant})


@dataclass
class Sensitivity(Result):
    """``vq.sensitivity``: ``LayerSensitivity`` rows, most sensitive first."""

    command: ClassVar[str] = "sensitivity"
    layers: list = field(default_factory=list)

    @property
    def ranking(self) -> list[str]:
        """Layer names, most sensitive first."""
        return [r.name for r in self.layers]


@dataclass
class Evaluation(Result):
    """``vq.evaluate``: the results rows (the reference's first when one was given)."""

    command: ClassVar[str] = "eval"
    rows: list = field(default_factory=list)
    predictions: dict = field(default_factory=dict, repr=False)

    @property
    def row(self):
        """The evaluated model's ``ResultRow`` (the last row)."""
        return self.rows[-1]

    @property
    def accuracy(self) -> float:
        return self.row.accuracy


@dataclass
class QuantizeRun(Result):
    """``vq.quantize`` with a ``QuantizeJob``: every variant, saved and measured.

    Attributes:
        rows: the results rows (``ResultRow``), finalized.
        variants: the library's ``VariantsResult`` (auto selection, sweep, notes).
        out: the folder holding the artifacts.
    """

    command: ClassVar[str] = "quantize"
    rows: list = field(default_factory=list)
    variants: Any = field(default=None, repr=False)
    out: Path | None = None


@dataclass
class QATRun(Result):
    """``vq.qat``: the QAT history, the kept int8 model and its rows.

    Attributes:
        result: the library's ``QATResult`` (history, best epoch, prepared graph).
        quantized: the kept int8 model as a ``Quantized`` (evaluate it, export it).
        rows: fp32 and QAT rows when val/test images were given.
    """

    command: ClassVar[str] = "qat"
    result: Any = field(default=None, repr=False)
    quantized: Any = field(default=None, repr=False)
    rows: list = field(default_factory=list)


@dataclass
class SearchRun(Result):
    """``vq.search``: the Optuna study's trials and, with ``final``, the retrained best."""

    command: ClassVar[str] = "search"
    study: Any = field(default=None, repr=False)
    final: QATRun | None = None


@dataclass
class PipelineResult(Result):
    """``vq.pipeline``: the library's ``PipelineRun`` (steps, decisions, variants, final)."""

    command: ClassVar[str] = "pipeline"
    run: Any = field(default=None, repr=False)
    out: Path | None = None

    @property
    def final(self):
        """The chosen variant's ``ResultRow``."""
        return self.run.final


@dataclass
class Comparison(Result):
    """``vq.compare``: one ``ModelProfile`` per model and the sentences they support."""

    command: ClassVar[str] = "compare"
    profiles: list = field(default_factory=list)
    lines: list[str] = field(default_factory=list)


@dataclass
class Report(Result):
    """``vq.report``: the HTML file written and what it embeds."""

    command: ClassVar[str] = "report"
    path: Path | None = None
