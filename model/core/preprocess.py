"""The one function that turns a decoded radiograph into model input, and the one way to make an image smaller for
showing or sending (`shrink`).

Training builds its cache with `to_model_input` and serving calls it on every upload, so the two can never drift.
Scaling to [-1, 1] (a Rescaling layer, x / 127.5 - 1) and any normalisation live inside the saved models: the input
stays raw uint8 pixel values.
"""
from __future__ import annotations

import cv2
import numpy as np

DEFAULT_INPUT = {"height": 224, "width": 224, "channels": 1, "resize": "squash", "dtype": "uint8"}


def to_model_input(gray: np.ndarray, spec: dict = DEFAULT_INPUT) -> np.ndarray:
    """uint8 grayscale H×W → uint8 array of shape (spec.height, spec.width, spec.channels).

    "squash" resizes straight to the target size, ignoring aspect ratio. The Kermany 224×224 copies were squashed
    this way, so every image — original or copy — ends up with the same geometry.
    """
    if gray.ndim != 2 or gray.dtype != np.uint8:
        raise ValueError(f"expected a 2-D uint8 image, got shape {gray.shape} and dtype {gray.dtype}")
    if spec.get("resize", "squash") != "squash":
        raise ValueError(f"unsupported resize mode {spec['resize']!r}")
    h, w = int(spec["height"]), int(spec["width"])
    shrinking = gray.shape[0] >= h and gray.shape[1] >= w
    out = cv2.resize(gray, (w, h), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    out = out[..., None]
    channels = int(spec.get("channels", 1))
    return np.repeat(out, channels, axis=-1) if channels > 1 else out


def shrink(image: np.ndarray, side: int) -> np.ndarray:
    """`image` (H×W or H×W×C) with its longest side at most `side` pixels, aspect ratio kept (area-averaged); the
    image itself when it is already small enough. What the browser, the PDF, the API's overlay and the DICOM
    Secondary Capture get: pictures to look at, never model input (that is `to_model_input`)."""
    h, w = image.shape[:2]
    scale = side / max(h, w)
    if scale >= 1:
        return image
    return cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
