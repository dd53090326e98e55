"""``vq.pipeline`` (the whole study), ``vq.compare`` (models side by side), ``vq.report`` (HTML).

They call ``vitquant.pipeline.run_pipeline`` with the command's analysis and QAT steps
(``vitquant.pipeline.bound``), ``vitquant.compare.profile_loaded`` per model, and
``vitquant.report.html.build_report`` on a folder of result files.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from vitquant.api.results import Comparison, PipelineResult, Report, Result
from vitquant.api.setup import setup
from vitquant.errors import VitquantError


def _silent(line: str) -> None:
    pass


def pipeline(
    model,
    config=None,
    *,
    out: str | Path | None = None,
    data=None,
    train=None,
    calibration=None,
    val=None,
    test=None,
    family: str | None = None,
    log: Callable[[str], None] | None = None,
) -> PipelineResult:
    """The whole study on one model, each decision recorded with its reason.

    float -> outlier analysis -> static PTQ -> static PTQ with the outlier layers in float ->
    accuracy-aware ignore list -> dynamic int8 -> QAT with an Optuna search if still over the
    budget (only with ``train`` images) -> the final choice, all choices made on ``val``.

    Args:
        model: any ``nn.Module`` (or a registry name / ``load_model`` module).
        config: a ``PipelineConfig`` (budget ``max_drop`` in points, quantizer, QAT trials...).
        out: the run folder (artifacts, the analysis, the QAT study; default: a new temporary
            folder, kept).
        data: a named data set or ``vq.load_data(...)``.
        train, calibration, val, test: your own ``(images, labels)`` batches, fed as they are.
        family: ``vit`` or ``cnn`` (None: guessed).
        log: step lines (None: silent).

    Returns:
        A ``PipelineResult``: ``run`` (the library's ``PipelineRun``), ``final`` (the chosen
        row); ``to_dict()`` as ``pipeline.json``.
    """
    from vitquant.pipeline import PipelineConfig, run_pipeline
    from vitquant.pipeline.bound import analysis_step, qat_step
    from vitquant.registry import LoadedModel

    cfg = config or PipelineConfig()
    say = log or _silent
    s = setup(
        model,
        data=data,
        train=train,
        calibration=calibration,
        val=val,
        test=test,
        family=family,
    )
    s.require("calib", "val", "test", why="the pipeline")
    out = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix="vitquant-pipeline-"))
    qat_search = None
    if cfg.qat and s.has("fit"):
        loaded = LoadedModel(s.model, s.spec, s.checkpoint or "")
        qat_search = qat_step(s.name, loaded, s.data, cfg, out, log=say)
    run = run_pipeline(
        s.model,
        s.spec,
        s.data,
        cfg,
        out=out,
        analyze=analysis_step(s.model, s.spec, s.data, cfg, log=say),
        qat_search=qat_search,
        log=say,
    )
    payload = {**s.describe(), "subsets": s.data.sizes(), **run.to_dict(), "plots": []}
    return PipelineResult(payload=payload, run=run, out=out)


def compare(
    models,
    *,
    data=None,
    calibration=None,
    test=None,
    calib: int | None = None,
    stats_images: int = 256,
    threshold: float = 5.0,
    log: Callable[[str], None] | None = None,
) -> Comparison:
    """Outliers, ranges and int8 drops of several models on the same images.

    Each model: activation statistics on the calibration images, then accuracy on test in float
    and under static per-tensor, static per-channel (pt2e x86) and dynamic int8.

    Args:
        models: registry names and/or modules: a list, or a ``{name: model}`` mapping to name
            them (a listed module is named by its class).
        data: a named data set or ``vq.load_data(...)``.
        calibration, test: your own ``(images, labels)`` batches, fed as they are.
        calib: calibration images used by the static recipes (None: all).
        stats_images: calibration images for the statistics.
        threshold: outlier percentage above which a point is significant.
        log: one line per step (None: silent).

    Returns:
        A ``Comparison``: ``profiles`` (``ModelProfile``), ``lines`` (what the numbers show);
        ``to_dict()`` as ``compare.json``.
    """
    from vitquant.compare import profile_loaded, summarize

    named = list(models.items()) if isinstance(models, Mapping) else list(_named(models))
    if len(named) < 1:
        raise VitquantError("compare needs at least one model.")
    profiles, describe = [], {}
    for name, model in named:
        s = setup(model, data=data, calibration=calibration, test=test)
        s.require("calib", "test", why="compare")
        describe = s.data.describe()
        profiles.append(
            profile_loaded(
                name,
                s.model,
                s.spec,
                s.data,
                calib=calib,
                stats_limit=stats_images,
                threshold=threshold,
                log=log or _silent,
            )
        )
    lines = summarize(profiles)
    payload = {
        **describe,
        "models": [p.to_dict() for p in profiles],
        "summary": " ".join(lines),
        "summary_lines": lines,
        "plots": [],
    }
    return Comparison(payload=payload, profiles=profiles, lines=lines)


def _named(models: Iterable) -> Iterable[tuple[str, object]]:
    seen: dict[str, int] = {}
    for model in models:
        name = model if isinstance(model, str) else type(model).__name__
        seen[name] = seen.get(name, 0) + 1
        yield (name if seen[name] == 1 else f"{name}-{seen[name]}"), model


def report(run_dir: str | Path, *, results: Iterable[Result] = ()) -> Report:
    """One self-contained HTML report (``report.html``) of a folder of result files.

    Args:
        run_dir: a run folder (command-line ``--out`` folders, or where results were saved).
        results: API results to save first, each as ``RUN_DIR/<command>[-N]/<command>.json``.

    Returns:
        A ``Report``: ``path`` of the HTML; ``to_dict()`` as ``report.json``.
    """
    from vitquant.report.html import build_report

    root = Path(run_dir)
    counts: dict[str, int] = {}
    for result in results:
        counts[result.command] = counts.get(result.command, 0) + 1
        n = counts[result.command]
        result.save(root / (result.command if n == 1 else f"{result.command}-{n}"))
    if not root.is_dir():
        raise VitquantError(f"{root} is not a folder; pass a run folder or results= to save.")
    path, summary = build_report(root)
    return Report(payload=summary, path=path)
