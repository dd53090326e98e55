"""Plots: each function renders data computed elsewhere into a PNG (matplotlib, Agg)."""
