"""DICOM: uncompressed, RLE, JPEG baseline/extended/lossless, JPEG-LS, JPEG 2000 and deflated, with or without
the 128-byte preamble, with the Modality LUT, VOI LUT / window and MONOCHROME1 inversion applied.

Decoders: RLE (pydicom), JPEG baseline (Pillow), JPEG-LS (pyjpegls) and JPEG 2000 (pylibjpeg-openjpeg, Pillow)
run in this process. JPEG Lossless and 12-bit JPEG Extended need GDCM unless the optional, GPL pylibjpeg-libjpeg
is installed; GDCM runs only in a child process (model.io.gdcm_child). Patient attributes are never converted
into the result, an error or a log line.
"""
from __future__ import annotations

import struct
import warnings
import zlib
from dataclasses import dataclass
from io import BytesIO

import numpy as np
import pydicom
from pydicom.encaps import generate_frames
from pydicom.pixels import get_decoder, iter_pixels
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGExtended12Bit,
)

from model.io import gdcm_child
from model.io.base import (
    Decoded,
    DecodeError,
    ImageReader,
    NoUsableFrame,
    TruncatedImage,
    UnreadableImage,
    all_blank_message,
    check_pixels,
    frames_to_scan,
    not_an_image,
    too_large_unknown,
)
from model.io.dicom_values import (
    DICOM_DAMAGED,
    PYDICOM_ERRORS,
    code_string,
    defined_term,
    dicom_colour,
    dicom_gray,
    identifier_tokens,
    int_attr,
    pixel_spacing,
    words,
)
from model.io.pixels import BLANK_WARNING, finish, multi_frame_warning
from model.io.sniff import looks_like_bare_dicom

IN_PROCESS_PLUGINS = ("pydicom", "pillow", "pyjpegls", "pylibjpeg")
"""pydicom decoding plugins tried in this process, in order. GDCM is deliberately absent (see gdcm_child)."""

_TRUNCATED = ("This DICOM file is incomplete: its image data is shorter than its header says. "
              "It may have been cut off while copying; please upload the complete file.")

_ENCAPSULATED_PIXEL_DATA = tuple(tag + vr + b"\x00\x00\xff\xff\xff\xff"
                                 for tag in (b"\xe0\x7f\x10\x00", b"\x7f\xe0\x00\x10") for vr in (b"OB", b"OW"))
"""Pixel Data (7FE0,0010) with an undefined length, little and big endian: where compressed frames start."""


class DicomReader(ImageReader):
    """Files with "DICM" at offset 128, and data sets written without preamble and meta (recognised from their
    first element, or from a .dcm name)."""

    def can_read(self, data: bytes, fmt: str | None, hint: str | None) -> bool:
        return fmt == "dicom" or fmt is None and (hint == "dicom" or looks_like_bare_dicom(data))

    def read(self, data: bytes, fmt: str | None, max_pixels: int) -> Decoded:
        return decode_dicom(data, max_pixels, has_preamble=fmt == "dicom")


def no_decoder_message(ts_name: str) -> str:
    return f"This DICOM file uses {ts_name} compression, but the decoder needed for it is not installed here."


# --------------------------------------------------------------------------------------------------------------------
# Reading the file: the header first (size checks), then the whole data set
# --------------------------------------------------------------------------------------------------------------------
def decode_dicom(data: bytes, max_pixels: int, *, has_preamble: bool) -> Decoded:
    force = not has_preamble
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warnings can quote element values (patient data)
        _check_deflate_size(data, has_preamble, limit=4 * max_pixels)
        try:
            header = pydicom.dcmread(BytesIO(data), stop_before_pixels=True, force=force)
        except PYDICOM_ERRORS:
            raise (UnreadableImage(DICOM_DAMAGED) if has_preamble else not_an_image()) from None
        if force and not any(k in header for k in  # presence only: values are never converted (or logged)
                             ("SOPClassUID", "Modality", "Rows", "Columns", "StudyInstanceUID", "PixelData")):
            raise UnreadableImage("This file is named like a DICOM file, but its contents are not readable DICOM.")
        rows, cols = int_attr(header, "Rows"), int_attr(header, "Columns")
        if rows is not None and cols is not None:
            check_pixels(cols, rows, max_pixels)
        try:
            ds = pydicom.dcmread(BytesIO(data), force=force)
        except PYDICOM_ERRORS:
            raise UnreadableImage(DICOM_DAMAGED) from None
        if rows and cols and "PixelData" not in ds and any(m in data for m in _ENCAPSULATED_PIXEL_DATA):
            # Compressed pixel data that ends before its closing delimiter is dropped by pydicom (sometimes with
            # the whole data set), though the header announced an image: the file was cut off.
            raise TruncatedImage(_TRUNCATED)
        return decode_dataset(ds, max_pixels, source=data, has_preamble=has_preamble)


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
    except PYDICOM_ERRORS:
        return  # not deflated as far as we can tell: pydicom reads it normally
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        inflater.decompress(data[start:], limit)
    except zlib.error:
        raise UnreadableImage(DICOM_DAMAGED) from None
    if inflater.unconsumed_tail:
        raise too_large_unknown(limit // 4)


# --------------------------------------------------------------------------------------------------------------------
# The data set → Decoded
# --------------------------------------------------------------------------------------------------------------------
@dataclass
class _Layout:
    """How the pixel data is laid out, from the header (defaults where an attribute is missing)."""

    rows: int
    cols: int
    n_frames: int
    samples: int
    bits_allocated: int
    bits_stored: int
    photometric: str

    @classmethod
    def of(cls, ds, rows: int, cols: int) -> _Layout:
        samples = int_attr(ds, "SamplesPerPixel") or 1
        bits_allocated = int_attr(ds, "BitsAllocated") or 16
        photometric = code_string(ds, "PhotometricInterpretation") or ("MONOCHROME2" if samples == 1 else "RGB")
        return cls(rows=rows, cols=cols, n_frames=max(int_attr(ds, "NumberOfFrames") or 1, 1), samples=samples,
                   bits_allocated=bits_allocated, bits_stored=int_attr(ds, "BitsStored") or bits_allocated,
                   photometric="PALETTE COLOR" if photometric.startswith("PALETTE") else photometric)

    @property
    def scan(self) -> int:
        return frames_to_scan(self.n_frames, self.cols, self.rows)


def decode_dataset(ds, max_pixels: int, source: bytes | None = None, has_preamble: bool = True) -> Decoded:
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise NoUsableFrame("This DICOM file contains no image (it has no pixel data): it may be a report or "
                            "another non-image object.")
    rows, cols = int_attr(ds, "Rows"), int_attr(ds, "Columns")
    if rows is None or cols is None:
        raise UnreadableImage("This DICOM file's image has no size information, so it can't be read.")
    check_pixels(cols, rows, max_pixels)

    tsuid = _transfer_syntax(ds)
    ts_name = tsuid.name if tsuid.is_transfer_syntax else "unknown"
    decoder = _decoder_for(tsuid, ts_name)
    layout = _Layout.of(ds, rows, cols)
    if tsuid.is_compressed and "PixelData" in ds:
        _check_frame_sizes(ds, layout, max_pixels)
    elif "PixelData" in ds:
        _check_pixel_data_length(ds, layout)

    try:
        chosen, fallback, shown = _decode_frames(ds, decoder, tsuid, layout)
    except DecodeError:
        raise
    except MemoryError:
        raise too_large_unknown(max_pixels) from None
    except _NeedsGdcm:
        if source is None:
            raise UnreadableImage(no_decoder_message(ts_name)) from None
        return gdcm_child.decode_in_child(source, max_pixels, has_preamble, ts_name)
    except PYDICOM_ERRORS:
        if tsuid.is_compressed:
            raise UnreadableImage(gdcm_child.undecodable_message(ts_name)) from None
        raise UnreadableImage(DICOM_DAMAGED) from None

    if chosen is None:
        if fallback is None or layout.n_frames > 1:
            raise NoUsableFrame(
                all_blank_message(layout.n_frames, layout.scan, "this DICOM file")
                if layout.n_frames > 1 else "This DICOM file's image could not be found in its pixel data."
            )
        chosen = fallback

    warns: list[dict] = []
    info: dict = {}
    if chosen.ndim == 2 and layout.photometric != "PALETTE COLOR":
        gray, info = dicom_gray(chosen, ds, layout.photometric)
    else:
        gray, colour_warnings = dicom_colour(chosen, ds, layout.photometric, layout.bits_stored)
        warns.extend(colour_warnings)
    if layout.n_frames > 1:
        warns.append(multi_frame_warning(layout.n_frames, "dicom", shown))
    if chosen is fallback and layout.n_frames == 1 and (chosen.size == 0 or np.min(chosen) == np.max(chosen)):
        warns.append(BLANK_WARNING)
    pixels = finish(gray)
    return Decoded(pixels=pixels, meta=_meta(ds, pixels, layout, ts_name, info), warnings=warns)


def _transfer_syntax(ds) -> UID:
    """From the file meta, or inferred from how a bare data set was encoded (and then recorded in its meta)."""
    file_meta = getattr(ds, "file_meta", None)
    tsuid = None
    if file_meta is not None:
        try:
            tsuid = file_meta.get("TransferSyntaxUID")
        except PYDICOM_ERRORS:
            tsuid = None
    if not tsuid:
        try:
            implicit, little = ds.original_encoding
        except (AttributeError, TypeError, ValueError):
            implicit, little = True, True
        tsuid = ImplicitVRLittleEndian if implicit else (ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
        ds.file_meta = ds.file_meta if file_meta is not None else pydicom.dataset.FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = tsuid
    return UID(str(tsuid))


def _decoder_for(tsuid: UID, ts_name: str):
    try:
        decoder = get_decoder(tsuid)
    except (NotImplementedError, ValueError, KeyError):
        raise UnreadableImage(
            f"This DICOM file uses {ts_name} compression, which this app can't decode."
            if tsuid.is_transfer_syntax else
            "This DICOM file uses an unknown transfer syntax, so its image can't be decoded."
        ) from None
    if not decoder.is_available:
        raise UnreadableImage(no_decoder_message(ts_name))
    return decoder


def _check_frame_sizes(ds, layout: _Layout, max_pixels: int) -> None:
    """Each compressed frame announces its own size: never trust Rows/Columns alone."""
    try:
        for index, frame_bytes in enumerate(generate_frames(ds.PixelData, number_of_frames=layout.n_frames)):
            if index >= layout.scan:
                break
            size = codestream_size(frame_bytes)
            if size is not None:
                check_pixels(size[0], size[1], max_pixels)
    except PYDICOM_ERRORS:
        raise UnreadableImage(DICOM_DAMAGED) from None


def _check_pixel_data_length(ds, layout: _Layout) -> None:
    # YBR_FULL_422 stores two chroma samples per pair of pixels: 2 samples per pixel on average, not 3.
    samples = 2 if layout.photometric == "YBR_FULL_422" and layout.samples == 3 else layout.samples
    expected = layout.rows * layout.cols * samples * layout.n_frames * layout.bits_allocated
    try:
        have = len(ds.PixelData)
    except PYDICOM_ERRORS:
        raise UnreadableImage(DICOM_DAMAGED) from None
    if have < (expected + 7) // 8:
        raise TruncatedImage(_TRUNCATED)


def _meta(ds, pixels: np.ndarray, layout: _Layout, ts_name: str, info: dict) -> dict:
    meta: dict = {
        "format": "dicom",
        "width": int(pixels.shape[1]),
        "height": int(pixels.shape[0]),
        "bit_depth": int(layout.bits_stored),
        "frames": int(layout.n_frames),
    }
    identifiers = identifier_tokens(ds)
    for key, keyword in (("modality", "Modality"), ("view_position", "ViewPosition"),
                         ("body_part", "BodyPartExamined")):
        value = defined_term(ds, keyword)  # an allowlist of defined terms; the token check stays as a second net
        if value and not identifiers.intersection(words(value)):
            meta[key] = value
    spacing = pixel_spacing(ds)
    if spacing:
        meta["pixel_spacing"] = spacing
    meta["photometric"] = layout.photometric
    meta["transfer_syntax"] = str(ts_name)
    meta.update(info)
    return meta


# --------------------------------------------------------------------------------------------------------------------
# Frames
# --------------------------------------------------------------------------------------------------------------------
class _NeedsGdcm(Exception):
    """No in-process decoder could decode the frames, but GDCM (run in a child process) might."""


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


def _decode_frames(ds, decoder, tsuid: UID, layout: _Layout):
    """Decode up to `layout.scan` frames (one at a time) → (first non-blank frame or None, first frame, its index)."""
    scan, samples = layout.scan, layout.samples
    if not tsuid.is_compressed:
        return _scan_frames(iter_pixels(ds, indices=range(scan)), samples)
    available = tuple(decoder.available_plugins)
    plugins = [p for p in IN_PROCESS_PLUGINS if p in available]
    if gdcm_child.IN_CHILD and "gdcm" in available:
        plugins.append("gdcm")
    for plugin in plugins:
        try:
            return _scan_frames(iter_pixels(ds, indices=range(scan), decoding_plugin=plugin), samples)
        except (DecodeError, MemoryError):
            raise
        except PYDICOM_ERRORS:
            continue  # e.g. Pillow and 12-bit JPEG: try the next plugin
    gdcm_could = "gdcm" in available or (tsuid == JPEGExtended12Bit and gdcm_child.installed())
    if not gdcm_child.IN_CHILD and gdcm_could:
        raise _NeedsGdcm()
    if (gdcm_child.IN_CHILD and tsuid == JPEGExtended12Bit and layout.bits_stored > 8 and samples == 1
            and gdcm_child.installed()):
        return _scan_frames(gdcm_child.jpeg12_frames(ds, layout.n_frames, scan, layout.rows, layout.cols), 1)
    if not plugins and not gdcm_could:
        raise UnreadableImage(no_decoder_message(tsuid.name))
    raise ValueError("no decoder succeeded")


def codestream_size(frame: bytes) -> tuple[int, int] | None:
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
