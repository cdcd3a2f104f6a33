"""Array helpers shared by the readers: stretching to 8 bits, luminance, "is this really colour?", and the
warnings a decoded image can carry."""
from __future__ import annotations

import cv2
import numpy as np

from model.core.types import WarningCode

COLOUR_TOLERANCE = 3
"""Channels differing by at most this much (on a 0–255 scale) count as gray: JPEG chroma noise is not colour."""


def warning(code: WarningCode, message: str) -> dict:
    return {"code": code, "message": message}


COLOUR_WARNING = warning(WarningCode.COLOR_IMAGE, "This is a colour image; it was converted to grayscale.")
ALPHA_WARNING = warning(WarningCode.TRANSPARENCY, "This image has transparent areas; they are shown as black.")
BLANK_WARNING = warning(WarningCode.BLANK_IMAGE,
                        "This image is completely uniform (a single flat shade); it shows nothing.")


def multi_frame_warning(n: int, fmt: str, shown: int) -> dict:
    unit = "pages" if fmt == "tiff" else "frames"
    if shown == 0:
        return warning(WarningCode.MULTI_FRAME, f"This file has {n} {unit}; the first usable one is shown.")
    return warning(
        WarningCode.MULTI_FRAME,
        f"This file has {n} {unit}; the first usable one (number {shown + 1}, the earlier ones are blank) is shown.",
    )


def finish(gray: np.ndarray) -> np.ndarray:
    """The array a Decoded carries: uint8, C-contiguous, writeable (never a view into a library's buffer)."""
    out = np.ascontiguousarray(gray, dtype=np.uint8)
    if not out.flags.writeable:
        out = out.copy()
    return out


def minmax_to_u8(arr: np.ndarray, nominal_max: float | None = None) -> np.ndarray:
    """Stretch the actual [min, max] range to [0, 255] (monotonic); a flat image keeps its nominal brightness."""
    a = np.asarray(arr, dtype=np.float32)
    if a.size == 0:
        return np.zeros(a.shape, np.uint8)
    if not np.isfinite(a).all():
        finite = a[np.isfinite(a)]
        fill = float(finite.min()) if finite.size else 0.0
        a = np.where(np.isfinite(a), a, fill)
    lo, hi = float(a.min()), float(a.max())
    if hi <= lo:
        level = 0.0 if not nominal_max else min(max(lo / nominal_max, 0.0), 1.0) * 255.0
        return np.full(a.shape, round(level), np.uint8)
    a -= lo
    a *= 255.0 / (hi - lo)
    a += 0.5
    return a.astype(np.uint8)


def luminance(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601 luma (the weights of Pillow's "L" and OpenCV's RGB2GRAY), float32."""
    rgb = np.asarray(rgb)
    out = rgb[..., 0].astype(np.float32) * 0.299
    out += rgb[..., 1].astype(np.float32) * 0.587
    out += rgb[..., 2].astype(np.float32) * 0.114
    return out


def channels_differ(rgb: np.ndarray, full_scale: float) -> bool:
    tol = COLOUR_TOLERANCE * full_scale / 255.0
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    if rgb.dtype == np.uint8:
        r, g, b = (np.ascontiguousarray(c) for c in (r, g, b))
        return int(cv2.absdiff(r, g).max()) > tol or int(cv2.absdiff(g, b).max()) > tol
    r, g, b = (c.astype(np.float32) for c in (r, g, b))
    return float(np.abs(r - g).max()) > tol or float(np.abs(g - b).max()) > tol
