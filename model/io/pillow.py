"""PNG (incl. 16-bit and APNG), JPEG (EXIF orientation, CMYK), TIFF (multi-page), BMP, WebP and GIF (animated),
read with Pillow (OpenCV for 16-bit colour, which Pillow would cut to 8 bits per channel)."""
from __future__ import annotations

import struct
import warnings
import zlib
from io import BytesIO

import cv2
import numpy as np
from PIL import Image

from model.io.base import (
    Decoded,
    DecodeError,
    ImageReader,
    NoUsableFrame,
    all_blank_message,
    check_pixels,
    damaged,
    frames_to_scan,
    too_large_unknown,
    truncated,
)
from model.io.pixels import (
    ALPHA_WARNING,
    BLANK_WARNING,
    COLOUR_WARNING,
    channels_differ,
    finish,
    luminance,
    minmax_to_u8,
    multi_frame_warning,
)
from model.io.sniff import FORMAT_LABEL

PILLOW_FORMAT = {"png": "PNG", "jpeg": "JPEG", "tiff": "TIFF", "bmp": "BMP", "webp": "WEBP", "gif": "GIF"}

PILLOW_ERRORS = (OSError, EOFError, SyntaxError, ValueError, TypeError, IndexError, KeyError, AttributeError,
                 ArithmeticError, struct.error, zlib.error, MemoryError, Image.DecompressionBombError)
"""What Pillow raises on damaged, truncated or hostile bytes (UnidentifiedImageError is an OSError)."""

ORIENT_OPS = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1, :],
    5: lambda a: a.T,
    6: lambda a: np.rot90(a, -1),
    7: lambda a: a[::-1, ::-1].T,
    8: lambda a: np.rot90(a, 1),
}


class PillowReader(ImageReader):
    formats = tuple(PILLOW_FORMAT)

    def can_read(self, data: bytes, fmt: str | None, hint: str | None) -> bool:
        return fmt in PILLOW_FORMAT

    def read(self, data: bytes, fmt: str | None, max_pixels: int) -> Decoded:
        return decode_pillow(data, fmt, max_pixels)


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


def pillow_failure(fmt: str, data: bytes, exc: BaseException, max_pixels: int) -> DecodeError:
    label = FORMAT_LABEL[fmt]
    if isinstance(exc, Image.DecompressionBombError):
        return too_large_unknown(max_pixels)
    if isinstance(exc, MemoryError):
        return too_large_unknown(max_pixels)
    ends = _ends_cleanly(fmt, data)
    text = str(exc).lower()
    if ends is False or "truncated" in text or isinstance(exc, EOFError) and ends is None:
        return truncated(label)
    return damaged(label)


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
        except (AttributeError, KeyError, TypeError, ValueError):
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
    except PILLOW_ERRORS:
        return 1
    return value if value in ORIENT_OPS else 1


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
        return minmax_to_u8(arr, nominal), warns, blank
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
        if channels_differ(np.asarray(rgb), 255.0):
            warns.append(COLOUR_WARNING)
        gray = np.asarray(rgb.convert("L"))
    if alpha is not None and alpha.min() < 255:
        warns.append(ALPHA_WARNING)
        gray = ((gray.astype(np.uint16) * alpha + 127) // 255).astype(np.uint8)  # composite onto black
    return gray, warns, bool(gray.min() == gray.max())


def _blank_palette_frame(im: Image.Image) -> bool:
    """Whether a loaded P or L frame is one flat colour, judged from its indices (no RGB copy is made)."""
    if im.mode not in ("P", "L") or "transparency" in im.info:
        return False
    index = np.asarray(im)
    return bool(index.size and index.min() == index.max())


def _high_depth_colour_frame(data: bytes, size: tuple[int, int]) -> tuple[np.ndarray, list[dict], bool] | None:
    """16-bit colour PNG/TIFF: Pillow would drop to 8 bits per channel, so read the full depth with OpenCV."""
    try:
        arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error:
        return None
    if arr is None or arr.dtype != np.uint16 or arr.ndim != 3 or arr.shape[2] not in (3, 4):
        return None
    if (arr.shape[1], arr.shape[0]) != tuple(size):
        return None
    warns: list[dict] = []
    rgb = arr[..., 2::-1]  # BGR(A) → RGB
    if channels_differ(rgb, 65535.0):
        warns.append(COLOUR_WARNING)
    gray = luminance(rgb)
    if arr.shape[2] == 4:
        alpha = arr[..., 3]
        if alpha.min() < 65535:
            warns.append(ALPHA_WARNING)
            gray *= alpha.astype(np.float32) / 65535.0
    blank = bool(gray.min() == gray.max())
    return minmax_to_u8(gray, 65535.0), warns, blank


def decode_pillow(data: bytes, fmt: str, max_pixels: int) -> Decoded:
    label = FORMAT_LABEL[fmt]
    try:
        with warnings.catch_warnings():
            # Pillow's DecompressionBombWarning is replaced by our own header check just below.
            warnings.simplefilter("ignore")
            im = Image.open(BytesIO(data), formats=[PILLOW_FORMAT[fmt]])
    except PILLOW_ERRORS as exc:
        raise pillow_failure(fmt, data, exc, max_pixels) from None

    with im:
        width, height = im.size
        check_pixels(width, height, max_pixels)
        try:
            n_frames = _gif_frame_count(data) if fmt == "gif" else int(getattr(im, "n_frames", 1) or 1)
        except PILLOW_ERRORS:
            n_frames = 1
        try:
            im.seek(0)
        except PILLOW_ERRORS:
            pass
        bit_depth = _pil_bit_depth(im, fmt, data)
        orientation = _orientation(im)

        chosen: tuple[np.ndarray, list[dict]] | None = None
        fallback: tuple[np.ndarray, list[dict]] | None = None
        shown = 0
        scan = frames_to_scan(n_frames, width, height)  # early stop: the pixel budget across frames
        for index in range(scan):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    if index:
                        im.seek(index)
                    check_pixels(im.size[0], im.size[1], max_pixels)
                    im.load()
                    if n_frames > 1 and _blank_palette_frame(im):
                        continue  # blank, seen without converting it (a multi-frame file never falls back to one)
                    frame = None
                    if index == 0 and fmt in ("png", "tiff") and bit_depth > 8 and im.mode in ("RGB", "RGBA"):
                        frame = _high_depth_colour_frame(data, im.size)
                    if frame is None:
                        frame = _pil_frame_to_gray(im, bit_depth)
            except DecodeError:
                raise
            except EOFError:
                if index == 0:
                    raise truncated(label) from None
                break  # fewer frames than announced
            except PILLOW_ERRORS as exc:
                if index == 0:
                    raise pillow_failure(fmt, data, exc, max_pixels) from None
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
            raise NoUsableFrame(all_blank_message(n_frames, scan))
        chosen = fallback
        assert chosen is not None
    gray, frame_warnings = chosen
    warns.extend(frame_warnings)
    if n_frames > 1:
        warns.append(multi_frame_warning(n_frames, fmt, shown))
    if chosen is fallback and gray.size and gray.min() == gray.max():
        warns.append(BLANK_WARNING)
    if orientation != 1:
        gray = ORIENT_OPS[orientation](gray)
    pixels = finish(gray)
    meta = {
        "format": fmt,
        "width": int(pixels.shape[1]),
        "height": int(pixels.shape[0]),
        "bit_depth": int(bit_depth),
        "frames": int(n_frames),
    }
    return Decoded(pixels=pixels, meta=meta, warnings=warns)
