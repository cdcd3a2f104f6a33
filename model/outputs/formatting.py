"""How numbers, durations and dates are shown: one place, so a page and its test format a number the same way.
Missing values (None, NaN, text) show as "—". Pure Python; no Streamlit.
"""
from __future__ import annotations

import math

import numpy as np


def is_number(x) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool) and math.isfinite(x)


def fmt_num(x, digits: int = 3) -> str:
    """0.91234 -> "0.912"; missing or NaN -> "—"."""
    return f"{x:.{digits}f}" if is_number(x) else "—"


def fmt_nums(x, digits: int = 2) -> str:
    """A number, or one per class ("0.00 / 1.20 / 0.63", e.g. a multiclass bias), at `digits` decimals."""
    if isinstance(x, (list, tuple, np.ndarray)):
        return " / ".join(fmt_num(v, digits) for v in x)
    return fmt_num(x, digits)


def fmt_delta(x, digits: int = 3) -> str:
    """A difference with its sign: 0.0123 -> "+0.012", -0.8 -> "−0.800"; missing or NaN -> "—"."""
    return (f"{x:+.{digits}f}".replace("-", "−") if is_number(x) else "—")


def fmt_pct(x, digits: int = 1) -> str:
    """0.9123 -> "91.2%"; missing or NaN -> "—"."""
    return f"{100 * x:.{digits}f}%" if is_number(x) else "—"


def fmt_ci(ci, digits: int = 3) -> str:
    """[0.53, 0.61] -> "0.530–0.610"."""
    if not ci or len(ci) != 2 or not all(is_number(v) for v in ci):
        return "—"
    return f"{ci[0]:.{digits}f}–{ci[1]:.{digits}f}"


def fmt_int(x, lang: str = "en") -> str:
    """3665 -> "3,665" in English, "3 665" (narrow no-break space) in Spanish, where "3,665" would read as a
    decimal."""
    if not is_number(x):
        return "—"
    return f"{int(x):,}".replace(",", "\u202f" if lang == "es" else ",")


def fmt_duration(seconds) -> str:
    """192.6 -> "3 min 13 s"; 7384 -> "2 h 3 min"."""
    if not is_number(seconds):
        return "—"
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60} min"


def fmt_datetime(stamp) -> str:
    """"2026-11-23T11:07:49Z" -> "2026-11-23 11:07 UTC"; anything else as it is."""
    if not stamp:
        return "—"
    text = str(stamp)
    if len(text) >= 16 and text[10] == "T":
        return f"{text[:10]} {text[11:16]}" + (" UTC" if text.endswith("Z") else "")
    return text
