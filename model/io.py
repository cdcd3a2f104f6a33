"""Decode any upload (bytes) into 8-bit grayscale + non-identifying metadata.

Never imports training/, never writes to disk, never logs patient data.

``decode(data, filename)`` sniffs the format from the file's own bytes (the filename is only a hint), checks the
pixel count announced by the header *before* any pixels are decoded, and returns a :class:`Decoded`: a 2-D,
C-contiguous ``uint8`` array at the file's own resolution plus a small metadata dict and user-facing warnings.
Every failure is a :class:`DecodeError` subclass whose ``code`` is machine-readable and whose ``message`` can be
shown to the user as is.  Messages, warnings, metadata and log lines never carry patient identifiers (DICOM patient
attributes, UIDs, institution, or even the uploaded file's name).

Supported: PNG (incl. 16-bit and APNG), JPEG (EXIF orientation, CMYK), TIFF (multi-page), BMP, WebP, GIF
(animated), and DICOM (uncompressed, RLE, JPEG baseline/extended/lossless, JPEG-LS, JPEG 2000, deflated), with
the Modality LUT, VOI LUT / window and MONOCHROME1 inversion applied.

DICOM decoders: RLE (pydicom), JPEG baseline (Pillow), JPEG-LS (pyjpegls), JPEG 2000 (pylibjpeg-openjpeg, Pillow)
run in this process. JPEG Lossless and 12-bit JPEG Extended need GDCM (python-gdcm) unless the optional, GPL
pylibjpeg-libjpeg is installed; GDCM aborts the interpreter on some damaged codestreams, so it only ever runs in a
short-lived child interpreter fed through pipes (still nothing on disk), costing about half a second per such file.

Thread safety: decode() may be called from several threads; it silences library warnings with
``warnings.catch_warnings`` (process-wide, like any use of it) and mutes the ``pydicom`` logger for its own thread.
"""
from __future__ import annotations

import logging
import math
import os
import pickle
import re
import struct
import subprocess
import sys
import threading
import warnings
import zlib
from dataclasses import dataclass, field
from io import BytesIO

import cv2
import numpy as np
from PIL import Image

import pydicom
from pydicom.encaps import generate_frames
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, get_decoder, iter_pixels
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGExtended12Bit,
)

__all__ = [
    "MAX_PIXELS",
    "DecodeError",
    "EmptyFile",
    "UnreadableImage",
    "TruncatedImage",
    "ImageTooLarge",
    "NoUsableFrame",
    "Decoded",
    "decode",
]

log = logging.getLogger(__name__)

MAX_PIXELS = 50_000_000
"""Largest width × height (per decoded frame) that will be decoded at all."""

MAX_FRAMES_SCANNED = 64
"""In a multi-frame file, at most this many frames are decoded (one at a time) looking for a non-blank one."""

_COLOUR_TOLERANCE = 3
"""Channels differing by at most this much (on a 0–255 scale) count as gray: JPEG chroma noise is not colour."""

_SUPPORTED = "PNG, JPEG, TIFF, BMP, WebP, GIF or DICOM"

_IN_PROCESS_PLUGINS = ("pydicom", "pillow", "pyjpegls", "pylibjpeg")
"""pydicom decoding plugins tried in this process, in order. GDCM is deliberately absent: on some damaged
codestreams it throws an uncaught C++ exception that aborts the interpreter, so it only runs in a child process
(JPEG Lossless, and 12-bit JPEG Extended when the optional pylibjpeg-libjpeg is not installed)."""

_IN_ISOLATION = False  # True inside the child interpreter started by _decode_isolated
_ISOLATION_TIMEOUT_S = 120


class _MuteWhileDecoding(logging.Filter):
    """pydicom logs validation problems with the offending value quoted (e.g. an invalid birth date). While this
    module is decoding, in the decoding thread, such records are dropped."""

    state = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(self.state, "depth", 0)


_MUTE = _MuteWhileDecoding()
if not any(isinstance(f, _MuteWhileDecoding) for f in logging.getLogger("pydicom").filters):
    logging.getLogger("pydicom").addFilter(_MUTE)


# --------------------------------------------------------------------------------------------------------------------
# Errors and result
# --------------------------------------------------------------------------------------------------------------------
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


def _warning(code: str, message: str) -> dict:
    return {"code": code, "message": message}


# --------------------------------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------------------------------
_EXTENSIONS = {
    "png": "png", "apng": "png",
    "jpg": "jpeg", "jpeg": "jpeg", "jpe": "jpeg", "jfif": "jpeg",
    "tif": "tiff", "tiff": "tiff",
    "bmp": "bmp", "dib": "bmp",
    "webp": "webp",
    "gif": "gif",
    "dcm": "dicom", "dicom": "dicom", "dic": "dicom",
}
_PILLOW_FORMAT = {"png": "PNG", "jpeg": "JPEG", "tiff": "TIFF", "bmp": "BMP", "webp": "WEBP", "gif": "GIF"}
_FORMAT_LABEL = {"png": "PNG", "jpeg": "JPEG", "tiff": "TIFF", "bmp": "BMP", "webp": "WebP", "gif": "GIF",
                 "dicom": "DICOM"}


def decode(data: bytes, filename: str | None = None, *, max_pixels: int = MAX_PIXELS) -> Decoded:
    """Decode an uploaded file's bytes into 8-bit grayscale pixels, metadata and warnings.

    ``filename`` is only a hint (used when the bytes carry no recognisable signature, e.g. a DICOM without its
    128-byte preamble); it never appears in the result. Raises a :class:`DecodeError` subclass on failure.
    """
    if data is None or len(data) == 0:
        raise EmptyFile("This file is empty.")
    if not isinstance(data, bytes):
        data = bytes(data)
    fmt = _sniff(data)
    hint = _extension_hint(filename)
    _MUTE.state.depth = getattr(_MUTE.state, "depth", 0) + 1
    try:
        with warnings.catch_warnings():
            # Library warnings are not for the user (and pydicom's may quote element values): silence them all.
            # Pillow's DecompressionBombWarning is replaced by this module's own header check.
            warnings.simplefilter("ignore")
            result = _dispatch(data, fmt, hint, max_pixels)
    except DecodeError as err:
        log.info("upload rejected: %s", err.code)
        raise
    except MemoryError:
        log.warning("out of memory while decoding a %s upload", fmt or "unrecognised")
        raise _too_large_unknown(max_pixels) from None
    except Exception as exc:  # a library failed in a way not anticipated above: still answer with a DecodeError
        # Only the exception's type is logged: library messages can quote element values (patient data).
        log.warning("unexpected %s while decoding a %s upload", type(exc).__name__, fmt or "unrecognised")
        raise UnreadableImage("This file could not be read as an image. It may be damaged.") from None
    finally:
        _MUTE.state.depth -= 1
    log.debug("decoded %s upload: %d x %d", result.meta.get("format"), result.meta.get("width"), result.meta.get("height"))
    return result


def _dispatch(data: bytes, fmt: str | None, hint: str | None, max_pixels: int) -> Decoded:
    if fmt == "dicom":
        return _decode_dicom(data, max_pixels, has_preamble=True)
    if fmt is not None:
        return _decode_pillow(data, fmt, max_pixels)
    if hint == "dicom" or _looks_like_bare_dicom(data):
        return _decode_dicom(data, max_pixels, has_preamble=False)
    if hint is not None:
        raise UnreadableImage(
            f"This file is named like a {_FORMAT_LABEL[hint]} image, but its contents are not a readable "
            f"{_FORMAT_LABEL[hint]}. It may be damaged, or be a different kind of file."
        )
    raise UnreadableImage(f"This file isn't an image that can be read here. Please upload a {_SUPPORTED} file.")


def _sniff(data: bytes) -> str | None:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if data.startswith(b"BM") and len(data) >= 18:
        return "bmp"
    if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        return "webp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if len(data) >= 132 and data[128:132] == b"DICM":
        return "dicom"
    return None


def _extension_hint(filename: str | None) -> str | None:
    if not filename or "." not in str(filename):
        return None
    return _EXTENSIONS.get(str(filename).rsplit(".", 1)[-1].strip().lower())


def _looks_like_bare_dicom(data: bytes) -> bool:
    """A DICOM data set written without preamble/meta usually starts with a group 0x0002 or 0x0008 element."""
    if len(data) < 8:
        return False
    group = struct.unpack("<H", data[:2])[0]
    if group not in (0x0002, 0x0008):
        return False
    vr = data[4:6]
    return vr.isalpha() and vr.isupper() or struct.unpack("<I", data[4:8])[0] < 0x10000


def _check_pixels(width: int, height: int, max_pixels: int) -> None:
    if width <= 0 or height <= 0:
        raise UnreadableImage("This image has no pixels (its header gives a width or height of zero).")
    if width * height > max_pixels:
        raise ImageTooLarge(
            f"This image is {width:,} × {height:,} pixels, which is more than the "
            f"{max_pixels / 1e6:g}-megapixel limit. Please upload a smaller image."
        )


def _too_large_unknown(max_pixels: int) -> ImageTooLarge:
    return ImageTooLarge(
        f"This image is larger than the {max_pixels / 1e6:g}-megapixel limit. Please upload a smaller image."
    )


def _truncated(label: str) -> TruncatedImage:
    return TruncatedImage(
        f"This {label} file is incomplete: it ends before the image does. It may have been cut off while "
        "downloading or copying; please upload the complete file."
    )


def _damaged(label: str) -> UnreadableImage:
    return UnreadableImage(f"This {label} file is damaged and its image can't be read.")


def _multi_frame_warning(n: int, fmt: str, shown: int) -> dict:
    unit = "pages" if fmt == "tiff" else "frames"
    if shown == 0:
        return _warning("multi_frame", f"This file has {n} {unit}; the first usable one is shown.")
    return _warning(
        "multi_frame",
        f"This file has {n} {unit}; the first usable one (number {shown + 1}, the earlier ones are blank) is shown.",
    )


_BLANK_WARNING = _warning("blank_image", "This image is completely uniform (a single flat shade); it shows nothing.")


def _finish(gray: np.ndarray) -> np.ndarray:
    out = np.ascontiguousarray(gray, dtype=np.uint8)
    if not out.flags.writeable:
        out = out.copy()
    return out


# --------------------------------------------------------------------------------------------------------------------
# Pixel helpers
# --------------------------------------------------------------------------------------------------------------------
def _minmax_to_u8(arr: np.ndarray, nominal_max: float | None = None) -> np.ndarray:
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


def _luminance(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601 luma (the weights of Pillow's "L" and OpenCV's RGB2GRAY), float32."""
    rgb = np.asarray(rgb)
    out = rgb[..., 0].astype(np.float32) * 0.299
    out += rgb[..., 1].astype(np.float32) * 0.587
    out += rgb[..., 2].astype(np.float32) * 0.114
    return out


def _channels_differ(rgb: np.ndarray, full_scale: float) -> bool:
    tol = _COLOUR_TOLERANCE * full_scale / 255.0
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    if rgb.dtype == np.uint8:
        r, g, b = (np.ascontiguousarray(c) for c in (r, g, b))
        return int(cv2.absdiff(r, g).max()) > tol or int(cv2.absdiff(g, b).max()) > tol
    r, g, b = (c.astype(np.float32) for c in (r, g, b))
    return float(np.abs(r - g).max()) > tol or float(np.abs(g - b).max()) > tol


_COLOUR_WARNING = _warning("color_image", "This is a colour image; it was converted to grayscale.")
_ALPHA_WARNING = _warning("transparency", "This image has transparent areas; they are shown as black.")

_ORIENT_OPS = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1, :],
    5: lambda a: a.T,
    6: lambda a: np.rot90(a, -1),
    7: lambda a: a[::-1, ::-1].T,
    8: lambda a: np.rot90(a, 1),
}


# --------------------------------------------------------------------------------------------------------------------
# Raster formats via Pillow
# --------------------------------------------------------------------------------------------------------------------
def _ends_cleanly(fmt: str, data: bytes) -> bool | None:
    """Whether the file carries its end marker; None when the format has none worth checking."""
    tail = data[-64:]
    if fmt == "png":
        return b"IEND" in tail
    if fmt == "jpeg":
        return b"\xff\xd9" in tail
    if fmt == "gif":
        return data.rstrip(b"\x00")[-1:] == b";"
    return None


def _pillow_failure(fmt: str, data: bytes, exc: BaseException, max_pixels: int) -> DecodeError:
    label = _FORMAT_LABEL[fmt]
    if isinstance(exc, Image.DecompressionBombError):
        return _too_large_unknown(max_pixels)
    if isinstance(exc, MemoryError):
        return _too_large_unknown(max_pixels)
    ends = _ends_cleanly(fmt, data)
    text = str(exc).lower()
    if ends is False or "truncated" in text or isinstance(exc, EOFError) and ends is None:
        return _truncated(label)
    return _damaged(label)


def _png_bit_depth(data: bytes) -> tuple[int, int] | None:
    """(bit depth, colour type) from the IHDR chunk."""
    if len(data) >= 26 and data[12:16] == b"IHDR":
        return data[24], data[25]
    return None


def _gif_frame_count(data: bytes) -> int:
    """Count image descriptors by walking the block structure (no pixel decoding)."""
    n, end = 0, len(data)
    if end < 13:
        return 1
    pos = 13
    flags = data[10]
    if flags & 0x80:
        pos += 3 * (2 << (flags & 7))

    def skip_sub_blocks(p: int) -> int:
        while p < end:
            size = data[p]
            p += 1
            if size == 0:
                break
            p += size
        return p

    while pos < end:
        block = data[pos]
        if block == 0x3B:
            break
        if block == 0x21:
            pos = skip_sub_blocks(pos + 2)
        elif block == 0x2C:
            n += 1
            if pos + 10 > end:
                break
            local = data[pos + 9]
            pos += 10
            if local & 0x80:
                pos += 3 * (2 << (local & 7))
            pos = skip_sub_blocks(pos + 1)
        else:
            break
    return max(n, 1)


def _pil_bit_depth(im: Image.Image, fmt: str, data: bytes) -> int:
    if fmt == "png":
        ihdr = _png_bit_depth(data)
        if ihdr:
            return int(ihdr[0])
    if fmt == "tiff":
        try:
            bps = im.tag_v2.get(258)
            if bps:
                return int(max(bps) if isinstance(bps, (tuple, list)) else bps)
        except Exception:
            pass
    if fmt == "jpeg":
        bits = getattr(im, "bits", None)
        if isinstance(bits, int) and bits > 0:
            return bits
    mode = im.mode
    if mode == "1":
        return 1
    if mode.startswith("I;16"):
        return 16
    if mode in ("I", "F"):
        return 32
    return 8


def _orientation(im: Image.Image) -> int:
    try:
        value = int(im.getexif().get(0x0112, 1))
    except Exception:
        return 1
    return value if value in _ORIENT_OPS else 1


def _pil_frame_to_gray(im: Image.Image, bit_depth: int) -> tuple[np.ndarray, list[dict], bool]:
    """The current (loaded) frame → (uint8 gray, warnings, blank?)."""
    mode = im.mode
    warns: list[dict] = []
    if mode == "1":
        im, mode = im.convert("L"), "L"
    if mode == "L":
        gray = np.asarray(im)
        return gray, warns, bool(gray.min() == gray.max())
    if mode.startswith("I") or mode == "F":
        arr = np.asarray(im)
        if arr.dtype.byteorder not in ("=", "|"):
            arr = arr.astype(arr.dtype.newbyteorder("="))
        blank = bool(arr.size == 0 or np.nanmin(arr) == np.nanmax(arr))
        nominal = float(2 ** min(bit_depth, 16) - 1) if mode.startswith("I;16") or mode == "I" else None
        return _minmax_to_u8(arr, nominal), warns, blank
    if mode in ("P", "PA"):
        has_alpha = mode == "PA" or "transparency" in im.info
        im = im.convert("RGBA" if has_alpha else "RGB")
        mode = im.mode
    if mode in ("LA", "La"):
        im = im.convert("LA")
        gray = np.asarray(im.getchannel("L"))
        alpha = np.asarray(im.getchannel("A"))
    else:
        if mode in ("RGBa",):
            im, mode = im.convert("RGBA"), "RGBA"
        alpha = np.asarray(im.getchannel("A")) if mode == "RGBA" else None
        rgb = im if mode == "RGB" else im.convert("RGB")  # CMYK (incl. Adobe inverted), YCbCr, LAB, HSV, RGBX
        if _channels_differ(np.asarray(rgb), 255.0):
            warns.append(_COLOUR_WARNING)
        gray = np.asarray(rgb.convert("L"))
    if alpha is not None and alpha.min() < 255:
        warns.append(_ALPHA_WARNING)
        gray = ((gray.astype(np.uint16) * alpha + 127) // 255).astype(np.uint8)  # composite onto black
    return gray, warns, bool(gray.min() == gray.max())


def _high_depth_colour_frame(data: bytes, size: tuple[int, int]) -> tuple[np.ndarray, list[dict], bool] | None:
    """16-bit colour PNG/TIFF: Pillow would drop to 8 bits per channel, so read the full depth with OpenCV."""
    try:
        arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    except Exception:
        return None
    if arr is None or arr.dtype != np.uint16 or arr.ndim != 3 or arr.shape[2] not in (3, 4):
        return None
    if (arr.shape[1], arr.shape[0]) != tuple(size):
        return None
    warns: list[dict] = []
    rgb = arr[..., 2::-1]  # BGR(A) → RGB
    if _channels_differ(rgb, 65535.0):
        warns.append(_COLOUR_WARNING)
    gray = _luminance(rgb)
    if arr.shape[2] == 4:
        alpha = arr[..., 3]
        if alpha.min() < 65535:
            warns.append(_ALPHA_WARNING)
            gray *= alpha.astype(np.float32) / 65535.0
    blank = bool(gray.min() == gray.max())
    return _minmax_to_u8(gray, 65535.0), warns, blank


def _decode_pillow(data: bytes, fmt: str, max_pixels: int) -> Decoded:
    label = _FORMAT_LABEL[fmt]
    try:
        with warnings.catch_warnings():
            # Pillow's DecompressionBombWarning is replaced by our own header check just below.
            warnings.simplefilter("ignore")
            im = Image.open(BytesIO(data), formats=[_PILLOW_FORMAT[fmt]])
    except Exception as exc:  # UnidentifiedImageError, DecompressionBombError, SyntaxError, struct.error, ...
        raise _pillow_failure(fmt, data, exc, max_pixels) from None

    with im:
        try:
            width, height = im.size
        except Exception:
            raise _damaged(label) from None
        _check_pixels(width, height, max_pixels)
        try:
            n_frames = _gif_frame_count(data) if fmt == "gif" else int(getattr(im, "n_frames", 1) or 1)
        except Exception:
            n_frames = 1
        try:
            im.seek(0)
        except Exception:
            pass
        bit_depth = _pil_bit_depth(im, fmt, data)
        orientation = _orientation(im)

        chosen: tuple[np.ndarray, list[dict]] | None = None
        fallback: tuple[np.ndarray, list[dict]] | None = None
        shown = 0
        for index in range(min(n_frames, MAX_FRAMES_SCANNED)):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    if index:
                        im.seek(index)
                    _check_pixels(im.size[0], im.size[1], max_pixels)
                    im.load()
                    frame = None
                    if index == 0 and fmt in ("png", "tiff") and bit_depth > 8 and im.mode in ("RGB", "RGBA"):
                        frame = _high_depth_colour_frame(data, im.size)
                    if frame is None:
                        frame = _pil_frame_to_gray(im, bit_depth)
            except DecodeError:
                raise
            except EOFError:
                if index == 0:
                    raise _truncated(label) from None
                break  # fewer frames than announced
            except Exception as exc:
                if index == 0:
                    raise _pillow_failure(fmt, data, exc, max_pixels) from None
                break  # a damaged later frame: keep what was found so far
            gray, frame_warnings, blank = frame
            if fallback is None:
                fallback = (gray, frame_warnings)
            if not blank:
                chosen, shown = (gray, frame_warnings), index
                break

    warns: list[dict] = []
    if chosen is None:
        if n_frames > 1:
            raise NoUsableFrame(
                f"None of the {n_frames} frames in this file contains an image: "
                + ("they are all blank." if n_frames <= MAX_FRAMES_SCANNED
                   else f"the first {MAX_FRAMES_SCANNED} are all blank.")
            )
        chosen = fallback
        assert chosen is not None
    gray, frame_warnings = chosen
    warns.extend(frame_warnings)
    if n_frames > 1:
        warns.append(_multi_frame_warning(n_frames, fmt, shown))
    if chosen is fallback and gray.size and gray.min() == gray.max():
        warns.append(_BLANK_WARNING)
    if orientation != 1:
        gray = _ORIENT_OPS[orientation](gray)
    pixels = _finish(gray)
    meta = {
        "format": fmt,
        "width": int(pixels.shape[1]),
        "height": int(pixels.shape[0]),
        "bit_depth": int(bit_depth),
        "frames": int(n_frames),
    }
    return Decoded(pixels=pixels, meta=meta, warnings=warns)


# --------------------------------------------------------------------------------------------------------------------
# DICOM
# --------------------------------------------------------------------------------------------------------------------
_DICOM_DAMAGED = "This DICOM file is damaged and can't be read."
_CS_ALLOWED = set("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 _")


def _attr(ds, keyword: str):
    """Element value, or None when absent, empty or unparsable (values are converted lazily and may raise)."""
    try:
        value = ds.get(keyword, None)
    except Exception:
        return None
    if value is None or value == "":
        return None
    return value


def _first(value):
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return value[0] if len(value) else None
    return value


def _int_attr(ds, keyword: str) -> int | None:
    value = _first(_attr(ds, keyword))
    try:
        return None if value is None else int(value)
    except (TypeError, ValueError):
        return None


def _float_attr(ds, keyword: str) -> float | None:
    value = _first(_attr(ds, keyword))
    try:
        out = None if value is None else float(value)
    except (TypeError, ValueError):
        return None
    return out if out is not None and math.isfinite(out) else None


def _code_string(ds, keyword: str) -> str | None:
    """A Code String (CS) value, only if it really is one: ≤16 of A–Z 0–9 space _. Anything else is dropped."""
    value = _first(_attr(ds, keyword))
    if value is None:
        return None
    text = str(value).strip().upper()
    if not text or len(text) > 16 or not set(text) <= _CS_ALLOWED:
        return None
    return text


_IDENTIFYING_KEYWORDS = ("PatientName", "PatientID", "OtherPatientIDs", "PatientBirthDate", "AccessionNumber",
                         "InstitutionName", "ReferringPhysicianName", "StudyID", "OperatorsName")


def _tokens(text: str) -> set[str]:
    return {t for t in re.split(r"[^A-Z0-9]+", text.upper()) if len(t) >= 3}


def _identifier_tokens(ds) -> set[str]:
    """Words of the identifying attributes, so that a code string that repeats one (a name typed into Body Part
    Examined, say) is left out of the metadata."""
    tokens: set[str] = set()
    for keyword in _IDENTIFYING_KEYWORDS:
        try:
            value = ds.get(keyword, None)
        except Exception:
            continue
        if value is not None:
            tokens |= _tokens(str(value))
    return tokens


def _pixel_spacing(ds) -> list[float] | None:
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = _attr(ds, keyword)
        try:
            pair = [float(v) for v in value] if value is not None and len(value) == 2 else None
        except (TypeError, ValueError):
            pair = None
        if pair and all(math.isfinite(v) and v > 0 for v in pair):
            return pair
    return None


def _check_deflate_size(data: bytes, has_preamble: bool, limit: int) -> None:
    """pydicom inflates a Deflated data set in one go; refuse (without inflating it all) if it would be huge."""
    try:
        from pydicom.filereader import _read_file_meta_info, read_preamble

        fp = BytesIO(data)
        read_preamble(fp, not has_preamble)
        meta = _read_file_meta_info(fp)
        if meta.get("TransferSyntaxUID") != DeflatedExplicitVRLittleEndian:
            return
        start = fp.tell()
    except Exception:
        return  # not deflated as far as we can tell: pydicom reads it normally
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        inflater.decompress(data[start:], limit)
    except zlib.error:
        raise UnreadableImage(_DICOM_DAMAGED) from None
    if inflater.unconsumed_tail:
        raise _too_large_unknown(limit // 4)


def _codestream_size(frame: bytes) -> tuple[int, int] | None:
    """(width, height) announced by a JPEG / JPEG-LS SOF or JPEG 2000 SIZ header, without decoding."""
    head = frame[:65536]
    siz = head.find(b"\xff\x4f\xff\x51")  # J2K SOC + SIZ (also inside a JP2 wrapper)
    if siz >= 0 and len(head) >= siz + 24:
        xsiz, ysiz, xo, yo = struct.unpack(">IIII", head[siz + 8 : siz + 24])
        return max(xsiz - xo, 0), max(ysiz - yo, 0)
    if not head.startswith(b"\xff\xd8"):
        return None
    pos = 2
    while pos + 4 <= len(head):
        if head[pos] != 0xFF:
            return None
        marker = head[pos + 1]
        if marker == 0xFF:
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        length = struct.unpack(">H", head[pos + 2 : pos + 4])[0]
        if (0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC)) or marker == 0xF7:
            if pos + 9 > len(head):
                return None
            height, width = struct.unpack(">HH", head[pos + 5 : pos + 9])
            return width, height
        if marker in (0xDA, 0xD9):
            return None
        pos += 2 + length
    return None


def _window(arr: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2 VOI windowing to a float32 image in [0, 1]."""
    x = np.asarray(arr, dtype=np.float32)
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(np.clip(-4.0 * (x - center) / width, -80, 80)))
    if function == "LINEAR_EXACT":
        return np.clip((x - center) / width + 0.5, 0.0, 1.0)
    return np.clip((x - (center - 0.5)) / (width - 1.0) + 0.5, 0.0, 1.0)


def _robust_range(arr: np.ndarray) -> tuple[float, float]:
    step = max(1, int(math.sqrt(arr.size / 1_000_000)))
    sample = np.asarray(arr[::step, ::step], dtype=np.float64)
    lo, hi = np.percentile(sample, [0.5, 99.5])
    if not hi > lo:
        lo, hi = float(np.min(arr)), float(np.max(arr))
    return float(lo), float(hi)


def _dicom_gray(frame: np.ndarray, ds, photometric: str) -> tuple[np.ndarray, dict]:
    """One monochrome frame → uint8 via Modality LUT, then VOI LUT / window / robust range, then MONOCHROME1 flip."""
    info: dict = {}
    try:
        values = apply_modality_lut(frame, ds)
    except Exception:
        values = frame
    values = np.asarray(values)
    out = None
    voi_seq = _attr(ds, "VOILUTSequence")
    if voi_seq:
        try:
            lut_out = np.asarray(apply_voi_lut(values, ds, index=0, prefer_lut=True), dtype=np.float32)
            bits = int(voi_seq[0].LUTDescriptor[2])
            full = float(2 ** bits - 1) if 0 < bits <= 16 else float(lut_out.max() or 1.0)
            out = np.clip(lut_out / full, 0.0, 1.0)
            info["windowing"] = "voi_lut"
        except Exception:
            out = None
    if out is None:
        center, width = _float_attr(ds, "WindowCenter"), _float_attr(ds, "WindowWidth")
        function = _code_string(ds, "VOILUTFunction") or "LINEAR"
        minimum_width = 0.0 if function in ("LINEAR_EXACT", "SIGMOID") else 1.0
        if center is not None and width is not None and width > minimum_width:
            out = _window(values, center, width, function)
            info["window"] = [round(center, 3), round(width, 3)]
            info["windowing"] = "file"
    if out is None:
        lo, hi = _robust_range(values)
        if hi > lo:
            out = np.clip((np.asarray(values, dtype=np.float32) - lo) / (hi - lo), 0.0, 1.0)
        else:
            out = np.zeros(values.shape, np.float32)
        info["window"] = [round((lo + hi) / 2, 3), round(hi - lo, 3)]
        info["windowing"] = "auto"
    gray = (out * 255.0 + 0.5).astype(np.uint8)
    if photometric == "MONOCHROME1":
        gray = 255 - gray  # MONOCHROME1: low values are white; flip so bone is bright as in MONOCHROME2
    return gray, info


def _dicom_colour(frame: np.ndarray, ds, photometric: str, bits: int) -> tuple[np.ndarray, list[dict]]:
    warns: list[dict] = []
    rgb = frame
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(frame, ds)
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[-1] < 3:
        raise UnreadableImage(_DICOM_DAMAGED)
    full = 255.0 if rgb.dtype == np.uint8 else float(2 ** min(max(bits, 8), 16) - 1)
    if _channels_differ(rgb, full):
        warns.append(_COLOUR_WARNING)
    lum = _luminance(rgb)
    if rgb.dtype == np.uint8:
        gray = np.clip(lum + 0.5, 0, 255).astype(np.uint8)
    else:
        gray = _minmax_to_u8(lum, full)
    return gray, warns


def _decode_dicom(data: bytes, max_pixels: int, *, has_preamble: bool) -> Decoded:
    force = not has_preamble
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warnings can quote element values (patient data)
        _check_deflate_size(data, has_preamble, limit=4 * max_pixels)
        try:
            header = pydicom.dcmread(BytesIO(data), stop_before_pixels=True, force=force)
        except Exception:
            if has_preamble:
                raise UnreadableImage(_DICOM_DAMAGED) from None
            raise UnreadableImage(
                f"This file isn't an image that can be read here. Please upload a {_SUPPORTED} file."
            ) from None
        if force and not any(k in header for k in  # presence only: values are never converted (or logged)
                             ("SOPClassUID", "Modality", "Rows", "Columns", "StudyInstanceUID", "PixelData")):
            raise UnreadableImage(
                "This file is named like a DICOM file, but its contents are not readable DICOM."
            )
        rows, cols = _int_attr(header, "Rows"), _int_attr(header, "Columns")
        if rows is not None and cols is not None:
            _check_pixels(cols, rows, max_pixels)
        try:
            ds = pydicom.dcmread(BytesIO(data), force=force)
        except Exception:
            raise UnreadableImage(_DICOM_DAMAGED) from None
        return _decode_dicom_dataset(ds, max_pixels, source=data, has_preamble=has_preamble)


def _scan_frames(frames, samples: int):
    """(first non-blank frame or None, first frame, index shown) over an iterator of decoded frames."""
    chosen, fallback, shown = None, None, 0
    for index, frame in enumerate(frames):
        frame = np.asarray(frame)
        if frame.ndim == 3 and frame.shape[-1] == 1 and samples == 1:
            frame = frame.reshape(frame.shape[0], frame.shape[1])
        blank = bool(frame.size == 0 or np.min(frame) == np.max(frame))
        if fallback is None:
            fallback = frame
        if not blank:
            chosen, shown = frame, index
            break
    return chosen, fallback, shown


def _gdcm_jpeg12_frames(ds, n_frames: int, scan: int, rows: int, cols: int):
    """Decode 12-bit monochrome JPEG Extended frames with GDCM directly, in memory (as pydicom's plugin does)."""
    import gdcm  # python-gdcm (BSD); optional

    signed = (_int_attr(ds, "PixelRepresentation") or 0) == 1
    bits_stored = _int_attr(ds, "BitsStored") or 12
    for index, src in enumerate(generate_frames(ds.PixelData, number_of_frames=n_frames)):
        if index >= scan:
            break
        fragment = gdcm.Fragment()
        fragment.SetByteStringValue(src)
        fragments = gdcm.SequenceOfFragments.New()
        fragments.AddFragment(fragment)
        element = gdcm.DataElement(gdcm.Tag(0x7FE0, 0x0010))
        element.SetValue(fragments.__ref__())
        image = gdcm.Image()
        image.SetNumberOfDimensions(2)
        image.SetDimensions((cols, rows, 1))
        image.SetDataElement(element)
        image.SetPhotometricInterpretation(gdcm.PhotometricInterpretation(gdcm.PhotometricInterpretation.MONOCHROME2))
        image.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.JPEGExtendedProcess2_4))
        image.SetPixelFormat(gdcm.PixelFormat(1, 16, bits_stored, bits_stored - 1, int(signed)))
        buffer = image.GetBuffer()
        raw = buffer.encode("utf-8", "surrogateescape") if isinstance(buffer, str) else bytes(buffer)
        if len(raw) < rows * cols * 2:
            raise ValueError("short frame")
        frame = np.frombuffer(raw, "<i2" if signed else "<u2", count=rows * cols).reshape(rows, cols)
        yield frame


class _NeedsGdcm(Exception):
    """No in-process decoder could decode the frames, but GDCM (run in a child process) might."""


def _decode_frames(ds, decoder, tsuid: UID, scan: int, samples: int, n_frames: int, rows: int, cols: int,
                   bits_stored: int):
    """Decode up to `scan` frames (one at a time) → (first non-blank frame or None, first frame, its index)."""
    if not tsuid.is_compressed:
        return _scan_frames(iter_pixels(ds, indices=range(scan)), samples)
    available = tuple(decoder.available_plugins)
    plugins = [p for p in _IN_PROCESS_PLUGINS if p in available]
    if _IN_ISOLATION and "gdcm" in available:
        plugins.append("gdcm")
    for plugin in plugins:
        try:
            return _scan_frames(iter_pixels(ds, indices=range(scan), decoding_plugin=plugin), samples)
        except (DecodeError, MemoryError):
            raise
        except Exception:
            continue  # e.g. Pillow and 12-bit JPEG: try the next plugin
    gdcm_could = "gdcm" in available or (tsuid == JPEGExtended12Bit and _gdcm_installed())
    if not _IN_ISOLATION and gdcm_could:
        raise _NeedsGdcm()
    if _IN_ISOLATION and tsuid == JPEGExtended12Bit and bits_stored > 8 and samples == 1 and _gdcm_installed():
        # pydicom refuses GDCM for 12-bit JPEG Extended, but GDCM >= 3.0.10 decodes it correctly.
        return _scan_frames(_gdcm_jpeg12_frames(ds, n_frames, scan, rows, cols), 1)
    if not plugins and not gdcm_could:
        raise UnreadableImage(_no_decoder_message(tsuid.name))
    raise ValueError("no decoder succeeded")


def _gdcm_installed() -> bool:
    try:
        import importlib.util

        return importlib.util.find_spec("gdcm") is not None
    except Exception:
        return False


def _no_decoder_message(ts_name: str) -> str:
    return f"This DICOM file uses {ts_name} compression, but the decoder needed for it is not installed here."


def _undecodable_message(ts_name: str) -> str:
    return (
        f"This DICOM file uses {ts_name} compression, and its image could not be decoded here "
        "(the data may be damaged, or no installed decoder supports this variant of the compression)."
    )


def _isolated_main() -> None:
    """Child-process entry point: read (bytes, max_pixels) from stdin, decode with GDCM allowed, and write back
    a pickled Decoded or DecodeError. Native libraries may print to stdout, so the reply goes to a private copy
    of the original stdout while fd 1 is pointed at stderr."""
    global _IN_ISOLATION
    _IN_ISOLATION = True
    reply = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    data, max_pixels, has_preamble = pickle.loads(sys.stdin.buffer.read())
    try:
        result = _decode_dicom(data, max_pixels, has_preamble=has_preamble)
    except DecodeError as err:
        result = err
    except Exception:
        result = None
    reply.write(pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL))
    reply.close()


_CHILD_CODE = "import sys; sys.path.insert(0, {root!r}); from model.io import _isolated_main; _isolated_main()"


def _decode_isolated(data: bytes, max_pixels: int, has_preamble: bool, ts_name: str) -> Decoded:
    """Decode in a fresh child interpreter: GDCM can abort() the whole process on damaged data, and a crash there
    must not take the app down. Nothing is written to disk; the bytes travel over pipes. The child's stderr is
    discarded so that nothing it might print reaches the logs."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    payload = pickle.dumps((data, max_pixels, has_preamble), protocol=pickle.HIGHEST_PROTOCOL)
    try:
        done = subprocess.run(
            [sys.executable, "-c", _CHILD_CODE.format(root=root)],
            input=payload, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, timeout=_ISOLATION_TIMEOUT_S,
            check=False,
        )
        result = pickle.loads(done.stdout) if done.returncode == 0 and done.stdout else None
    except subprocess.TimeoutExpired:
        raise UnreadableImage(
            f"This DICOM file uses {ts_name} compression, and decoding it took too long; it may be damaged."
        ) from None
    except Exception:
        result = None
    if isinstance(result, DecodeError):
        raise type(result)(result.message) from None
    if isinstance(result, Decoded):
        return result
    raise UnreadableImage(_undecodable_message(ts_name))


def _decode_dicom_dataset(ds, max_pixels: int, source: bytes | None = None, has_preamble: bool = True) -> Decoded:
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise NoUsableFrame("This DICOM file contains no image (it has no pixel data): it may be a report or "
                            "another non-image object.")
    rows, cols = _int_attr(ds, "Rows"), _int_attr(ds, "Columns")
    if rows is None or cols is None:
        raise UnreadableImage("This DICOM file's image has no size information, so it can't be read.")
    _check_pixels(cols, rows, max_pixels)

    # Transfer syntax: from the file meta, or inferred from how a bare data set was encoded.
    file_meta = getattr(ds, "file_meta", None)
    tsuid = None
    if file_meta is not None:
        try:
            tsuid = file_meta.get("TransferSyntaxUID")
        except Exception:
            tsuid = None
    if not tsuid:
        try:
            implicit, little = ds.original_encoding
        except Exception:
            implicit, little = True, True
        tsuid = ImplicitVRLittleEndian if implicit else (ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
        ds.file_meta = ds.file_meta if file_meta is not None else pydicom.dataset.FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = tsuid
    tsuid = UID(str(tsuid))
    ts_name = tsuid.name if tsuid.is_transfer_syntax else "unknown"
    try:
        decoder = get_decoder(tsuid)
    except Exception:
        raise UnreadableImage(
            f"This DICOM file uses {ts_name} compression, which this app can't decode."
            if tsuid.is_transfer_syntax else
            "This DICOM file uses an unknown transfer syntax, so its image can't be decoded."
        ) from None
    if not decoder.is_available:
        raise UnreadableImage(
            f"This DICOM file uses {ts_name} compression, but the decoder needed for it is not installed here."
        )

    n_frames = _int_attr(ds, "NumberOfFrames") or 1
    n_frames = max(n_frames, 1)
    samples = _int_attr(ds, "SamplesPerPixel") or 1
    bits_allocated = _int_attr(ds, "BitsAllocated") or 16
    bits_stored = _int_attr(ds, "BitsStored") or bits_allocated
    photometric = _code_string(ds, "PhotometricInterpretation") or ("MONOCHROME2" if samples == 1 else "RGB")
    if photometric.startswith("PALETTE"):
        photometric = "PALETTE COLOR"
    scan = min(n_frames, MAX_FRAMES_SCANNED)

    if tsuid.is_compressed and "PixelData" in ds:
        # Each compressed frame announces its own size: never trust Rows/Columns alone.
        try:
            frames = generate_frames(ds.PixelData, number_of_frames=n_frames)
            for index, frame_bytes in enumerate(frames):
                if index >= scan:
                    break
                size = _codestream_size(frame_bytes)
                if size is not None:
                    _check_pixels(size[0], size[1], max_pixels)
        except DecodeError:
            raise
        except Exception:
            raise UnreadableImage(_DICOM_DAMAGED) from None
    elif "PixelData" in ds:
        expected = rows * cols * samples * n_frames * bits_allocated
        expected = (expected + 7) // 8
        try:
            have = len(ds.PixelData)
        except Exception:
            raise UnreadableImage(_DICOM_DAMAGED) from None
        if have < expected:
            raise TruncatedImage(
                "This DICOM file is incomplete: its image data is shorter than its header says. "
                "It may have been cut off while copying; please upload the complete file."
            )

    warns: list[dict] = []
    try:
        chosen, fallback, shown = _decode_frames(ds, decoder, tsuid, scan, samples, n_frames, rows, cols, bits_stored)
    except DecodeError:
        raise
    except MemoryError:
        raise _too_large_unknown(max_pixels) from None
    except _NeedsGdcm:
        if source is None:
            raise UnreadableImage(_no_decoder_message(ts_name)) from None
        return _decode_isolated(source, max_pixels, has_preamble, ts_name)
    except Exception:
        if tsuid.is_compressed:
            raise UnreadableImage(_undecodable_message(ts_name)) from None
        raise UnreadableImage(_DICOM_DAMAGED) from None

    if chosen is None:
        if fallback is None or n_frames > 1:
            raise NoUsableFrame(
                f"None of the {n_frames} frames in this DICOM file contains an image: they are all blank."
                if n_frames > 1 else "This DICOM file's image could not be found in its pixel data."
            )
        chosen = fallback

    info: dict = {}
    if chosen.ndim == 2 and photometric != "PALETTE COLOR":
        gray, info = _dicom_gray(chosen, ds, photometric)
    else:
        gray, colour_warnings = _dicom_colour(chosen, ds, photometric, bits_stored)
        warns.extend(colour_warnings)
    if n_frames > 1:
        warns.append(_multi_frame_warning(n_frames, "dicom", shown))
    if chosen is fallback and n_frames == 1 and (chosen.size == 0 or np.min(chosen) == np.max(chosen)):
        warns.append(_BLANK_WARNING)
    pixels = _finish(gray)

    meta: dict = {
        "format": "dicom",
        "width": int(pixels.shape[1]),
        "height": int(pixels.shape[0]),
        "bit_depth": int(bits_stored),
        "frames": int(n_frames),
    }
    identifiers = _identifier_tokens(ds)
    for key, keyword in (("modality", "Modality"), ("view_position", "ViewPosition"),
                         ("body_part", "BodyPartExamined")):
        value = _code_string(ds, keyword)
        if value and not identifiers.intersection(_tokens(value)):
            meta[key] = value
    spacing = _pixel_spacing(ds)
    if spacing:
        meta["pixel_spacing"] = spacing
    meta["photometric"] = photometric
    meta["transfer_syntax"] = str(ts_name)
    meta.update(info)
    return Decoded(pixels=pixels, meta=meta, warnings=warns)
