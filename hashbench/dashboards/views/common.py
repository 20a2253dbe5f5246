"""Small helpers shared by the views: method colours, option lists, number formatting."""

from __future__ import annotations

import math

import plotly.express as px
import polars as pl


#: distinct colours: plotly's Alphabet (26 colours chosen to be told apart), then Dark24 and Light24
#: (no colour repeats before the 75th method)
PALETTE = list(dict.fromkeys(px.colors.qualitative.Alphabet + px.colors.qualitative.Dark24
                             + px.colors.qualitative.Light24))
DIGITS = 4  # every metric value is shown with 4 decimals (tables, hover, cell text)
NUMBER = "%.4f"


def colours(methods: list[str]) -> dict[str, str]:
    """A stable, distinct colour per method (sorted names → :data:`PALETTE`, cycling past 48)."""
    return {m: PALETTE[i % len(PALETTE)] for i, m in enumerate(sorted(methods))}


def legend_height(n_items: int, base: int = 420) -> int:
    """A figure height that shows a vertical legend of ``n_items`` entries without scrolling it."""
    return max(base, 30 * n_items + 130)  # Streamlit's plotly theme spaces legend entries ~29 px apart


def log_ticks(values: list[float]) -> tuple[list[float], list[str]]:
    """Tick positions and labels for a log axis over ``values``: 1-2-5 steps, as plain numbers.

    Plotly's default log ticks label only some minor ticks ("2", "5") next to powers of ten; these
    label every tick with its full value (``2,000``, ``5,000``, ``10k`` style avoided on purpose).
    """
    import math

    vals = [v for v in values if v is not None and v > 0 and math.isfinite(v)]
    if not vals:
        return [], []
    lo, hi = min(vals) / 1.3, max(vals) * 1.3
    steps = [(m, m * 10.0 ** e) for e in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
             for m in (1, 2, 5)]
    ticks = [t for m, t in steps if lo <= t <= hi]
    if len(ticks) > 9:  # many decades: powers of ten only
        ticks = [t for m, t in steps if m == 1 and lo <= t <= hi]
    if len(ticks) < 2:  # a narrow range: the values themselves
        ticks = sorted(set(vals))
    return ticks, [f"{t:,.0f}" if t >= 10 else f"{t:g}" for t in ticks]


def bits_axis(values: list[int]) -> dict:
    """A log2 x axis with one tick per code length present (also sensible with a single length)."""
    import math

    vals = sorted({int(v) for v in values if v})
    if not vals:
        return {}
    lo, hi = math.log10(vals[0]) - 0.15, math.log10(vals[-1]) + 0.15
    return {"type": "log", "tickvals": vals, "ticktext": [str(v) for v in vals], "range": [lo, hi]}


def options(rows: pl.DataFrame, column: str) -> list:
    """The distinct non-null values of ``column``, sorted."""
    return sorted(v for v in rows[column].unique().to_list() if v is not None)


def fmt(mean: float | None, half: float | None, digits: int = DIGITS) -> str:
    """``0.8120 ± 0.0100`` (or just the mean when there is no interval)."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    if half is None or (isinstance(half, float) and math.isnan(half)):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {half:.{digits}f}"


def nan_to_none(values: list) -> list:
    """Plotly-friendly list: NaN → None (a gap / no error bar)."""
    return [None if v is None or (isinstance(v, float) and math.isnan(v)) else v for v in values]
