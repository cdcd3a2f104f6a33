"""What every reader shares: the result type, the typed errors with their user-facing messages, the pixel-count
check, and the :class:`ImageReader` interface a reader implements to join ``SUPPORTED_READERS``.

Messages never carry patient identifiers or the uploaded file's name.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np

MAX_PIXELS = 50_000_000
"""Largest width × height (per decoded frame) that will be decoded at all."""

MAX_FRAMES_SCANNED = 64
"""In a multi-frame file, at most this many frames are decoded (one at a time) looking for a non-blank one."""

MAX_TOTAL_PIXELS = 64_000_000
"""Pixel budget across all the frames decoded from one file: a multi-frame file of large blank frames (a cheap
upload that would cost seconds of decoding) is scanned only as far as this allows, then refused."""


def frames_to_scan(n_frames: int, width: int, height: int, budget: int = MAX_TOTAL_PIXELS) -> int:
    """How many frames of `width` × `height` a multi-frame file may have decoded, looking for a non-blank one:
    at most MAX_FRAMES_SCANNED and within the pixel budget, and always the first."""
    return max(1, min(int(n_frames), MAX_FRAMES_SCANNED, budget // max(1, int(width) * int(height))))


def all_blank_message(n_frames: int, scanned: int, what: str = "this file") -> str:
    if scanned >= n_frames:
        return f"None of the {n_frames} frames in {what} contains an image: they are all blank."
    return (f"None of the {n_frames} frames in {what} that were checked contains an image: the first "
            f"{scanned} are all blank, and no more are decoded (a limit on the work done per upload).")

SUPPORTED = "PNG, JPEG, TIFF, BMP, WebP, GIF or DICOM"


class DecodeError(Exception):
    """Base class: the upload could not be turned into an image. ``str(err) == err.message``."""

    code: str = "decode_error"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class EmptyFile(DecodeError):
    code = "empty_file"


class UnreadableImage(DecodeError):
    """Not an image, an unsupported format or compression, or bytes too damaged to parse."""

    code = "unreadable_image"


class TruncatedImage(DecodeError):
    code = "truncated_image"


class ImageTooLarge(DecodeError):
    """The header announces more pixels than allowed (decompression-bomb guard); nothing was decoded."""

    code = "image_too_large"


class NoUsableFrame(DecodeError):
    """A DICOM without pixel data, or a multi-frame file whose frames are all blank."""

    code = "no_usable_frame"


@dataclass
class Decoded:
    pixels: np.ndarray  # uint8, (H, W), C-contiguous, the file's own resolution, orientation applied
    meta: dict = field(default_factory=dict)  # non-identifying only
    warnings: list = field(default_factory=list)  # [{"code": ..., "message": ...}]


class ImageReader(ABC):
    """One family of formats. ``decode()`` asks each reader in ``SUPPORTED_READERS`` whether it can read an
    upload, from the format sniffed from its bytes and the filename's extension, and lets the first that can read
    it. A reader raises only :class:`DecodeError` subclasses for anything it anticipates."""

    @abstractmethod
    def can_read(self, data: bytes, fmt: str | None, hint: str | None) -> bool:
        """``fmt``: the format the bytes' own signature names (None when none does); ``hint``: the format the
        extension names (None when it names none)."""

    @abstractmethod
    def read(self, data: bytes, fmt: str | None, max_pixels: int) -> Decoded:
        """Decode the upload, checking the pixel count announced by its header before decoding any pixels."""


# --------------------------------------------------------------------------------------------------------------------
# Checks and messages shared by the readers
# --------------------------------------------------------------------------------------------------------------------
def check_pixels(width: int, height: int, max_pixels: int) -> None:
    if width <= 0 or height <= 0:
        raise UnreadableImage("This image has no pixels (its header gives a width or height of zero).")
    if width * height > max_pixels:
        raise ImageTooLarge(
            f"This image is {width:,} × {height:,} pixels, which is more than the "
            f"{max_pixels / 1e6:g}-megapixel limit. Please upload a smaller image."
        )


def too_large_unknown(max_pixels: int) -> ImageTooLarge:
    return ImageTooLarge(
        f"This image is larger than the {max_pixels / 1e6:g}-megapixel limit. Please upload a smaller image."
    )


def truncated(label: str) -> TruncatedImage:
    return TruncatedImage(
        f"This {label} file is incomplete: it ends before the image does. It may have been cut off while "
        "downloading or copying; please upload the complete file."
    )


def damaged(label: str) -> UnreadableImage:
    return UnreadableImage(f"This {label} file is damaged and its image can't be read.")


def not_an_image() -> UnreadableImage:
    return UnreadableImage(f"This file isn't an image that can be read here. Please upload a {SUPPORTED} file.")
