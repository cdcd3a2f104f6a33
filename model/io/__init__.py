"""Decode any upload (bytes) into 8-bit grayscale + non-identifying metadata.

Never imports training/, never writes to disk, never logs patient data.

``decode(data, filename)`` sniffs the format from the file's own bytes (the filename is only a hint), checks the
pixel count announced by the header *before* any pixels are decoded, and returns a :class:`Decoded`: a 2-D,
C-contiguous ``uint8`` array at the file's own resolution plus a small metadata dict and user-facing warnings.
Every failure is a :class:`DecodeError` subclass whose ``code`` is machine-readable and whose ``message`` can be
shown to the user as is.  Messages, warnings, metadata and log lines never carry patient identifiers (DICOM patient
attributes, UIDs, institution, or even the uploaded file's name).

Supported: PNG (incl. 16-bit and APNG), JPEG (EXIF orientation, CMYK), TIFF (multi-page), BMP, WebP, GIF
(animated) — ``model.io.pillow`` — and DICOM (uncompressed, RLE, JPEG baseline/extended/lossless, JPEG-LS,
JPEG 2000, deflated) — ``model.io.dicom``, with GDCM confined to a child process by ``model.io.gdcm_child``.
Each reader is an :class:`ImageReader` in ``SUPPORTED_READERS``; ``model.io.sniff`` names the format.

Thread safety: decode() may be called from several threads; it silences library warnings with
``warnings.catch_warnings`` (process-wide, like any use of it) and mutes the ``pydicom`` logger for its own thread.
"""
from __future__ import annotations

import logging
import threading
import warnings

from model.io.base import (
    MAX_PIXELS,
    Decoded,
    DecodeError,
    EmptyFile,
    ImageReader,
    ImageTooLarge,
    NoUsableFrame,
    TruncatedImage,
    UnreadableImage,
    not_an_image,
    too_large_unknown,
)
from model.io.dicom import DicomReader
from model.io.pillow import PillowReader
from model.io.sniff import FORMAT_LABEL, extension_hint, sniff

__all__ = [
    "MAX_PIXELS",
    "DecodeError",
    "EmptyFile",
    "UnreadableImage",
    "TruncatedImage",
    "ImageTooLarge",
    "NoUsableFrame",
    "Decoded",
    "ImageReader",
    "SUPPORTED_READERS",
    "decode",
]

log = logging.getLogger(__name__)

SUPPORTED_READERS: dict[str, ImageReader] = {
    "dicom": DicomReader(),
    "pillow": PillowReader(),
}
"""The readers decode() asks, in order; the first whose ``can_read`` says yes reads the upload."""


class _MuteWhileDecoding(logging.Filter):
    """pydicom logs validation problems with the offending value quoted (e.g. an invalid birth date). While this
    package is decoding, in the decoding thread, such records are dropped."""

    state = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(self.state, "depth", 0)


_MUTE = _MuteWhileDecoding()
if not any(isinstance(f, _MuteWhileDecoding) for f in logging.getLogger("pydicom").filters):
    logging.getLogger("pydicom").addFilter(_MUTE)


def decode(data: bytes, filename: str | None = None, *, max_pixels: int = MAX_PIXELS) -> Decoded:
    """Decode an uploaded file's bytes into 8-bit grayscale pixels, metadata and warnings.

    ``filename`` is only a hint (used when the bytes carry no recognisable signature, e.g. a DICOM without its
    128-byte preamble); it never appears in the result. Raises a :class:`DecodeError` subclass on failure.
    """
    if data is None or len(data) == 0:
        raise EmptyFile("This file is empty.")
    if not isinstance(data, bytes):
        data = bytes(data)
    fmt = sniff(data)
    hint = extension_hint(filename)
    _MUTE.state.depth = getattr(_MUTE.state, "depth", 0) + 1
    try:
        with warnings.catch_warnings():
            # Library warnings are not for the user (and pydicom's may quote element values): silence them all.
            # Pillow's DecompressionBombWarning is replaced by the readers' own header check.
            warnings.simplefilter("ignore")
            result = _read(data, fmt, hint, max_pixels)
    except DecodeError as err:
        log.info("upload rejected: %s", err.code)
        raise
    except MemoryError:
        log.warning("out of memory while decoding a %s upload", fmt or "unrecognised")
        raise too_large_unknown(max_pixels) from None
    except Exception as exc:  # a library failed in a way not anticipated by a reader: still answer with a DecodeError
        # Only the exception's type is logged: library messages can quote element values (patient data).
        log.warning("unexpected %s while decoding a %s upload", type(exc).__name__, fmt or "unrecognised")
        raise UnreadableImage("This file could not be read as an image. It may be damaged.") from None
    finally:
        _MUTE.state.depth -= 1
    log.debug("decoded %s upload: %d x %d", result.meta.get("format"), result.meta.get("width"),
              result.meta.get("height"))
    return result


def _read(data: bytes, fmt: str | None, hint: str | None, max_pixels: int) -> Decoded:
    for reader in SUPPORTED_READERS.values():
        if reader.can_read(data, fmt, hint):
            return reader.read(data, fmt, max_pixels)
    if hint is not None:
        raise UnreadableImage(
            f"This file is named like a {FORMAT_LABEL[hint]} image, but its contents are not a readable "
            f"{FORMAT_LABEL[hint]}. It may be damaged, or be a different kind of file."
        )
    raise not_an_image()
