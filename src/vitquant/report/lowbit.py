"""The low-bit story of a run, read off its results (compute only; the template draws it).

For a ``quantize`` low-bit run (``quantize.json`` with ``lowbit`` and ``point_errors``) or a
pipeline with a low-bit target (its ``static`` step records ``point_errors``, its
``vit-methods`` step the recipe): the loss (fp32 vs min-max), where it comes from (the points
with the worst quantization error and the largest accuracy impact, and whether they are the
outlier-heavy ones: Spearman's rho) and what recovered it (the recipe row).
"""

from __future__ import annotations


def _rows(doc: dict) -> dict[str, dict]:
    return {r["variant"]: r for r in doc.get("results", []) if r.get("backend") != "onnxruntime"}


def lowbit_story(doc: dict, *, top: int = 8) -> dict | None:
    """``{loss, recovery, worst, correlation, choice}`` of one result document, or None."""
    tables, recipe = doc.get("point_errors"), doc.get("lowbit") or {}
    for step in doc.get("steps", []):  # a pipeline: the steps' records
        tables = tables or step.get("point_errors")
        if step.get("recipe_variant"):
            recipe = step
    if not tables or "minmax" not in tables:
        return None
    rows = _rows(doc)
    fp32 = rows.get("fp32")
    minmax = next((r for v, r in rows.items() if v.endswith("-minmax")), None)
    if fp32 is None or minmax is None:
        return None
    best = rows.get(recipe.get("recipe_variant", "")) or minmax
    table = tables["minmax"]
    points = table["points"]
    worst = sorted(points, key=lambda p: p["sqnr_db"])[:top]
    impact = [p for p in points if p.get("impact_pts") is not None]
    costly = sorted(impact, key=lambda p: -p["impact_pts"])[:top]
    return {
        "fp32": fp32["accuracy"],
        "minmax_variant": minmax["variant"],
        "minmax": minmax["accuracy"],
        "loss_pts": round((fp32["accuracy"] - minmax["accuracy"]) * 100, 2),
        "recipe": recipe.get("recipe") or [],
        "recipe_variant": best["variant"],
        "recovered": best["accuracy"],
        "recovered_pts": round((best["accuracy"] - minmax["accuracy"]) * 100, 2),
        "choice": recipe.get("choice", ""),
        "worst": worst,
        "costly": costly,
        "correlation": table["correlation"],
        "n_test": fp32.get("n"),
    }
