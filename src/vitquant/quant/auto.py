"""Accuracy-aware layer selection: keep the fewest layers in float that bring the drop in budget.

Every choice here is measured on the ``val`` role (images from the train split that were never
trained or calibrated on), never on ``test``.

- ``select_ignore``: the fewest top-ranked layers (most sensitive first) to keep in float so that
  the static-int8 model's val drop is within ``max_drop`` points: walking the ranking one layer
  at a time (``search="linear"``), or bisecting on the number of layers (``search="bisect"``:
  about log2(layers) quantizations instead of up to one per layer; exact when keeping more
  layers in float never hurts, which is what a ranking assumes anyway).
- ``sqnr_ranking``: a one-pass ranking by each layer's own W8A8 output SQNR, for models where
  the full sensitivity analysis (two evaluations per layer) costs too much.
- ``sweep_top_k``: the study's experiment - keep the ``k`` layers with the most activation
  outliers in float, for each ``k``, and record accuracy against ``k``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from torch import nn

from vitquant.data import DataBundle
from vitquant.errors import VitquantError
from vitquant.evaluate import accuracy
from vitquant.layers import quantizable_names
from vitquant.quant.configs import StaticPTQ
from vitquant.quant.pt2e import QuantizedModel, quantize_static


@dataclass
class AutoResult:
    """Outcome of ``select_ignore``.

    Attributes:
        ignored: the module names kept in float (the final choice).
        steps: one dict per tried float set: ``step``, ``ignored`` (list), ``added`` (the layer
            added at this step, or None), ``val_acc`` (0-1), ``drop_pts`` (vs fp32 on val).
        fp32_val_acc: float accuracy on the val role.
        val_acc, drop_pts: of the final choice.
        max_drop: the budget in points.
        met: whether the final choice is within budget on val.
        ranking: the ranking walked (most sensitive first; empty when step 0 met the budget
            and none was given).
        model: the final quantized model.
    """

    ignored: list[str]
    steps: list[dict]
    fp32_val_acc: float
    val_acc: float
    drop_pts: float
    max_drop: float
    met: bool
    ranking: list[str]
    model: QuantizedModel | None = field(default=None, repr=False)

    def to_dict(self) -> dict:
        return {
            "ignored": self.ignored,
            "steps": self.steps,
            "fp32_val_acc": self.fp32_val_acc,
            "val_acc": self.val_acc,
            "drop_pts": self.drop_pts,
            "max_drop": self.max_drop,
            "met": self.met,
            "ranking": self.ranking,
        }


def sensitivity_ranking(model: nn.Module, bundle: DataBundle, spec, *, limit: int | None = None):
    """Quantizable layers ranked most sensitive first (``vitquant.analysis.sensitivity``, val)."""
    try:
        from vitquant.analysis.sensitivity import per_layer_sensitivity
    except ImportError as exc:  # the analysis package is developed alongside
        raise VitquantError(
            "--ignore auto needs the per-layer sensitivity analysis "
            "(vitquant.analysis.sensitivity), which is not available in this install."
        ) from exc
    ranked = per_layer_sensitivity(model, bundle, spec, role="val", limit=limit)
    names = set(quantizable_names(model))
    return [r.name for r in ranked if r.name in names]


def sqnr_ranking(
    model: nn.Module,
    bundle: DataBundle,
    spec,
    *,
    limit: int | None = None,
    calib_limit: int | None = None,
) -> list[str]:
    """Quantizable layers ranked by their W8A8 output SQNR on val, lowest first (one pass)."""
    from vitquant.analysis.layer_sqnr import layer_sqnr

    names = set(quantizable_names(model))
    rows = layer_sqnr(model, bundle, spec, role="val", limit=limit, calib_limit=calib_limit)
    return [r.name for r in rows if r.name in names]


def outlier_ranking(model: nn.Module, bundle: DataBundle, spec, *, limit: int | None = None):
    """Quantizable layers ranked by the outlier share of their activations, most first.

    Uses ``vitquant.analysis.stats.collect_activation_stats`` on the calib role; a layer's score
    is the largest ``outlier_pct`` over the observation points that belong to it.
    """
    try:
        from vitquant.analysis.stats import collect_activation_stats
    except ImportError as exc:
        raise VitquantError(
            "--ignore-top-k needs the activation statistics (vitquant.analysis.stats)."
        ) from exc
    stats = collect_activation_stats(model, bundle, spec, role="calib", limit=limit)
    names = quantizable_names(model)
    score = {n: float("-inf") for n in names}
    for s in stats:
        module = getattr(s, "module", None)
        pct = getattr(s, "outlier_pct", None)
        if module in score and pct is not None:
            score[module] = max(score[module], float(pct))
    seen = [n for n in names if score[n] != float("-inf")]
    if not seen:
        raise VitquantError("the activation statistics cover none of the Linear/Conv layers.")
    return sorted(seen, key=lambda n: -score[n])


def select_ignore(
    model: nn.Module,
    bundle: DataBundle,
    spec,
    cfg: StaticPTQ = StaticPTQ(),
    *,
    max_drop: float,
    ranking: Sequence[str] | None = None,
    max_layers: int | None = None,
    base_ignore: Iterable[str] = (),
    val_limit: int | None = None,
    search: str = "linear",
    evaluate: Callable[[QuantizedModel], float] | None = None,
    fp32_val_acc: float | None = None,
    start: tuple[QuantizedModel, float] | None = None,
    log: Callable[[str], None] | None = None,
) -> AutoResult:
    """Keep the fewest top-ranked layers in float so that the val drop is <= ``max_drop`` points.

    Args:
        model: the float model.
        bundle: data (``calib`` calibrates, ``val`` measures).
        spec: the model's ``ModelSpec``.
        cfg: the static PTQ recipe.
        max_drop: accuracy budget in percentage points (fp32 val acc - int8 val acc).
        ranking: module names, most sensitive first; default the sensitivity analysis on val
            (computed only when step 0 misses the budget).
        max_layers: at most this many float layers (default: the whole ranking).
        base_ignore: modules always kept in float (e.g. the user's ignore list).
        val_limit: measure on the first ``val_limit`` val images only.
        search: ``linear`` (add one layer per step) or ``bisect`` (binary search on the number
            of float layers; first tries the largest, so an unreachable budget costs one step).
        evaluate: ``evaluate(quantized_model) -> val accuracy`` (default: the converted graph
            run eagerly on val); the pipeline passes one that runs the inductor-lowered model.
        fp32_val_acc: the float model's val accuracy, when already measured.
        start: ``(model, val accuracy)`` of step 0 (``base_ignore`` in float, the rest int8),
            when already measured - the pipeline's ``static`` variant.
        log: called with one line per step.

    Returns:
        An ``AutoResult``; ``met`` is False when even the whole ranking misses the budget (that
        step is returned then).
    """
    if max_drop < 0:
        raise VitquantError(f"--max-drop must be >= 0 points (got {max_drop}).")
    if search not in ("linear", "bisect"):
        raise VitquantError(f"unknown search {search!r}: use linear or bisect.")
    known = set(quantizable_names(model))
    base = list(dict.fromkeys(base_ignore))

    def val_acc(m) -> float:
        return _accuracy(m, bundle, spec, "val", val_limit)

    fp32 = val_acc(model) if fp32_val_acc is None else fp32_val_acc
    steps: list[dict] = []
    models: dict[int, QuantizedModel] = {}  # step -> model, for the steps that may be chosen

    def step(ignored: list[str], added: str | None) -> float:
        if start is not None and not steps:
            qm, acc = start
        else:
            # Later steps ignore more layers than step 0: its calibration serves them all.
            cache = models[0].calibration if 0 in models else None
            qm = quantize_static(model, bundle, spec, cfg, ignore=ignored, calibration=cache)
            acc = evaluate(qm) if evaluate is not None else val_acc(qm.module)
        drop = round((fp32 - acc) * 100, 4)
        steps.append(
            {
                "step": len(steps),
                "ignored": ignored,
                "added": added,
                "val_acc": acc,
                "drop_pts": drop,
            }
        )
        models[len(steps) - 1] = qm
        if log:
            what = f"+ {added}" if added else ("all layers int8" if not ignored else "base list")
            if search == "bisect" and len(ignored) > len(base):
                what = f"top {len(ignored) - len(base)} in float"
            log(f"step {len(steps) - 1}: {what}: val acc {acc:.4f}, drop {drop:.2f} pts")
        return drop

    # Step 0 first: when everything int8 is already within budget no ranking is needed (the
    # sensitivity analysis costs 2 evaluations per layer).
    chosen = 0
    if step(list(base), None) > max_drop:
        if ranking is None:
            ranking = sensitivity_ranking(model, bundle, spec, limit=val_limit)
        ranking = list(dict.fromkeys(ranking))
        unknown = [r for r in ranking if r not in known]
        if unknown:
            raise VitquantError(f"ranking names non-quantizable layers: {', '.join(unknown[:5])}.")
        ranking = [r for r in ranking if r not in base]
        limit = len(ranking) if max_layers is None else min(max_layers, len(ranking))
        if search == "linear":
            for k in range(1, limit + 1):
                chosen = len(steps)
                if step(base + ranking[:k], ranking[k - 1]) <= max_drop:
                    break
        elif limit > 0:
            chosen = _bisect(
                lambda k: step(base + ranking[:k], ranking[k - 1]) <= max_drop,
                limit,
                lambda: len(steps) - 1,
            )
        for k in list(models):  # free the models that were not chosen
            if k not in (0, chosen):
                del models[k]
    last = steps[chosen]
    return AutoResult(
        ignored=last["ignored"],
        steps=steps,
        fp32_val_acc=fp32,
        val_acc=last["val_acc"],
        drop_pts=last["drop_pts"],
        max_drop=max_drop,
        met=last["drop_pts"] <= max_drop,
        ranking=list(ranking or []),
        model=models[chosen],
    )


def _bisect(good: Callable[[int], bool], hi: int, current_step: Callable[[], int]) -> int:
    """The step index of the smallest ``k`` in ``1..hi`` with ``good(k)``, assuming ``good`` is
    monotone; ``hi`` itself is tried first (if it fails, its step is returned)."""
    if not good(hi):
        return current_step()
    best_k, best_step = hi, current_step()
    lo = 1
    while lo < best_k:
        mid = (lo + best_k) // 2
        if good(mid):
            best_k, best_step = mid, current_step()
        else:
            lo = mid + 1
    return best_step


def sweep_top_k(
    model: nn.Module,
    bundle: DataBundle,
    spec,
    cfg: StaticPTQ = StaticPTQ(),
    *,
    ranking: Sequence[str],
    ks: Iterable[int] = range(11),
    roles: Sequence[str] = ("val",),
    limit: int | None = None,
    log: Callable[[str], None] | None = None,
) -> list[dict]:
    """Accuracy of static int8 with the top-``k`` layers of ``ranking`` in float, for each k.

    Args:
        ranking: module names, most outliers first (``outlier_ranking``).
        ks: the k values (each clipped to the ranking's length; duplicates dropped).
        roles: splits to measure (``val``; add ``test`` for a reported figure).
        limit: measure on the first ``limit`` images of each role.

    Returns:
        One dict per k: ``k``, ``ignored``, and ``<role>_acc`` for each role.
    """
    rows = []
    seen = set()
    for k in ks:
        if k < 0:
            raise VitquantError(f"--ignore-top-k values must be >= 0 (got {k}).")
        k = min(k, len(ranking))
        if k in seen:
            continue
        seen.add(k)
        qm = quantize_static(model, bundle, spec, cfg, ignore=list(ranking[:k]))
        row = {"k": k, "ignored": list(ranking[:k])}
        for role in roles:
            row[f"{role}_acc"] = _accuracy(qm.module, bundle, spec, role, limit)
        rows.append(row)
        if log:
            accs = ", ".join(f"{r} {row[f'{r}_acc']:.4f}" for r in roles)
            log(f"top-{k} in float: {accs}")
    return rows


def _accuracy(model, bundle: DataBundle, spec, role: str, limit: int | None) -> float:
    if limit is None:
        return accuracy(model, bundle, role, spec)
    import torch

    hits = total = 0
    with torch.no_grad():
        for x, y in bundle.batches(role, spec, limit=limit):
            hits += (model(x).argmax(1) == y).sum().item()
            total += len(y)
    return hits / max(total, 1)
