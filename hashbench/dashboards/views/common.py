"""Small helpers shared by the views: method colours, option lists, number formatting."""

from __future__ import annotations

import math

import plotly.express as px
import polars as pl


def colours(methods: list[str]) -> dict[str, str]:
    """A stable colour per method (sorted names → the qualitative palette, cycling)."""
    palette = px.colors.qualitative.Plotly + px.colors.qualitative.D3
    return {m: palette[i % len(palette)] for i, m in enumerate(sorted(methods))}


def options(rows: pl.DataFrame, column: str) -> list:
    """The distinct non-null values of ``column``, sorted."""
    return sorted(v for v in rows[column].unique().to_list() if v is not None)


def fmt(mean: float | None, half: float | None, digits: int = 3) -> str:
    """``0.812 ± 0.010`` (or just the mean when there is no interval)."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    if half is None or (isinstance(half, float) and math.isnan(half)):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {half:.{digits}f}"


def nan_to_none(values: list) -> list:
    """Plotly-friendly list: NaN → None (a gap / no error bar)."""
    return [None if v is None or (isinstance(v, float) and math.isnan(v)) else v for v in values]
