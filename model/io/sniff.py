"""Which format an upload is, from its own bytes (the filename's extension is only a hint)."""
from __future__ import annotations

import struct

EXTENSIONS = {
    "png": "png", "apng": "png",
    "jpg": "jpeg", "jpeg": "jpeg", "jpe": "jpeg", "jfif": "jpeg",
    "tif": "tiff", "tiff": "tiff",
    "bmp": "bmp", "dib": "bmp",
    "webp": "webp",
    "gif": "gif",
    "dcm": "dicom", "dicom": "dicom", "dic": "dicom",
}
FORMAT_LABEL = {"png": "PNG", "jpeg": "JPEG", "tiff": "TIFF", "bmp": "BMP", "webp": "WebP", "gif": "GIF",
                "dicom": "DICOM"}


def sniff(data: bytes) -> str | None:
    # DICOM first: its 128-byte preamble is free for another format's header, and dual-format files (a TIFF
    # header in the preamble, PS3.10 §7.1) exist. Such a file is read as the DICOM it also is.
    if len(data) >= 132 and data[128:132] == b"DICM":
        return "dicom"
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
    return None


def extension_hint(filename: str | None) -> str | None:
    if not filename or "." not in str(filename):
        return None
    return EXTENSIONS.get(str(filename).rsplit(".", 1)[-1].strip().lower())


def looks_like_bare_dicom(data: bytes) -> bool:
    """A DICOM data set written without preamble/meta usually starts with a group 0x0002 or 0x0008 element."""
    if len(data) < 8:
        return False
    group = struct.unpack("<H", data[:2])[0]
    if group not in (0x0002, 0x0008):
        return False
    vr = data[4:6]
    return vr.isalpha() and vr.isupper() or struct.unpack("<I", data[4:8])[0] < 0x10000
