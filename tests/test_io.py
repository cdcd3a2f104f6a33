"""model.io.decode: every upload becomes 8-bit grayscale + non-identifying metadata, or a DecodeError.

All fixtures are generated here (Pillow, OpenCV, pydicom, GDCM into tmp_path); nothing is read from disk.
"""
from __future__ import annotations

import copy
import functools
import io
import json
import logging
import struct
import time
import tracemalloc
import warnings
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pydicom.data
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageOps
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import get_decoder
from pydicom.uid import (
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

import model.io as model_io
from model.core.guard import check
from model.io import (
    MAX_PIXELS,
    Decoded,
    DecodeError,
    EmptyFile,
    ImageTooLarge,
    NoUsableFrame,
    TruncatedImage,
    UnreadableImage,
    decode,
)
from model.io.sniff import sniff

from helpers.cli import run_cli

try:
    import gdcm  # python-gdcm: the only JPEG Lossless / 12-bit JPEG encoder available here
except ImportError:  # pragma: no cover - depends on the environment
    gdcm = None


# ---------------------------------------------------------------------------------------------------------------------
# Fixture builders
# ---------------------------------------------------------------------------------------------------------------------
def gradient(h: int = 48, w: int = 64) -> np.ndarray:
    """uint8, dark on the left, bright on the right."""
    return np.tile(np.linspace(0, 255, w).round().astype(np.uint8), (h, 1))


def phantom8(h: int = 48, w: int = 64) -> np.ndarray:
    """A gradient with a bright square planted near the top-left corner."""
    a = (gradient(h, w) // 2).astype(np.uint8)
    a[4:16, 4:16] = 250
    return a


def phantom12(h: int = 64, w: int = 80) -> np.ndarray:
    """12-bit: a smooth 200..3000 ramp with a bright 4000 square."""
    y, x = np.mgrid[0:h, 0:w]
    a = (200 + x * 2000 // (w - 1) + y * 800 // (h - 1)).astype(np.uint16)
    a[8:24, 8:24] = 4000
    return a


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def png_chunk(tag: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body) & 0xFFFFFFFF)


def crafted_png(width: int, height: int) -> bytes:
    """A syntactically valid PNG (correct CRCs) whose IHDR claims width × height 8-bit gray pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr)
            + png_chunk(b"IDAT", zlib.compress(b"\x00" * 4096)) + png_chunk(b"IEND", b""))


def jpeg_claiming(width: int, height: int) -> bytes:
    """A real small JPEG whose SOF0 header is patched to claim width × height."""
    data = bytearray(encode(Image.fromarray(gradient()), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5: sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def make_dicom(arr: np.ndarray, *, bits_stored: int | None = None, photometric: str = "MONOCHROME2",
               **elements) -> Dataset:
    """An uncompressed Explicit VR Little Endian CR dataset holding `arr` (2-D, 3-D frames, or H×W×3 RGB)."""
    arr = np.asarray(arr)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    rgb = photometric == "RGB"
    if rgb:
        ds.Rows, ds.Columns = arr.shape[:2]
        ds.SamplesPerPixel = 3
        ds.PlanarConfiguration = 0
    else:
        ds.Rows, ds.Columns = arr.shape[-2:]
        ds.SamplesPerPixel = 1
        if arr.ndim == 3:
            ds.NumberOfFrames = arr.shape[0]
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = arr.dtype.itemsize * 8
    ds.BitsStored = bits_stored or ds.BitsAllocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = int(arr.dtype.kind == "i")
    ds.PixelData = arr.tobytes()
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    return ds


def dicom_bytes(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def bare_dicom_bytes(ds: Dataset) -> bytes:
    """The same data set without the 128-byte preamble, 'DICM' and file meta (as some PACS exports do)."""
    ds = copy.deepcopy(ds)
    del ds.file_meta
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, implicit_vr=True, little_endian=True, enforce_file_format=False)
    return buf.getvalue()


def encapsulated(ds: Dataset, frames: list[bytes], tsuid: str) -> Dataset:
    ds.PixelData = encapsulate(frames)
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    ds.file_meta.TransferSyntaxUID = tsuid
    ds.LossyImageCompression = "01"
    return ds


def gdcm_transcode(ds: Dataset, ts_name: str, tmp_path, *, pixel_format=None) -> bytes:
    """Re-encode with GDCM (writes only inside tmp_path)."""
    src, dst = tmp_path / f"{ts_name}.src.dcm", tmp_path / f"{ts_name}.dcm"
    ds.save_as(src, enforce_file_format=True)
    reader = gdcm.ImageReader()
    reader.SetFileName(str(src))
    assert reader.Read()
    image = reader.GetImage()
    if pixel_format is not None:
        image.SetPixelFormat(gdcm.PixelFormat(*pixel_format))
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(getattr(gdcm.TransferSyntax, ts_name)))
    change.SetInput(image)
    assert change.Change()
    writer = gdcm.ImageWriter()
    writer.SetFileName(str(dst))
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    assert writer.Write()
    return dst.read_bytes()


def linear_window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2.1 'LINEAR' VOI function, to 0..255."""
    x = values.astype(np.float64)
    y = np.clip((x - (center - 0.5)) / (width - 1) + 0.5, 0, 1)
    return np.floor(y * 255 + 0.5)


PYDICOM_FILES = Path(pydicom.data.__file__).parent / "test_files"
ROOT = Path(__file__).resolve().parent.parent


def shipped_dicoms() -> list[Path]:
    """Every .dcm inside pydicom's own wheel: what ``pydicom.data.get_testdata_files("*.dcm")`` returns offline.
    That function also tries to download the pydicom-data files (15 s of timeouts without a network, and other
    files with one), so the folder it searches first is listed directly."""
    return sorted(PYDICOM_FILES.glob("*.dcm"))


def shipped(name: str) -> bytes:
    return (PYDICOM_FILES / name).read_bytes()


def assert_valid(result: Decoded) -> None:
    assert isinstance(result, Decoded)
    assert result.pixels.dtype == np.uint8
    assert result.pixels.ndim == 2
    assert result.pixels.flags.c_contiguous
    assert result.meta["width"] == result.pixels.shape[1]
    assert result.meta["height"] == result.pixels.shape[0]
    for warning in result.warnings:
        assert set(warning) == {"code", "message"}


def codes(result: Decoded) -> list[str]:
    return [w["code"] for w in result.warnings]


# ---------------------------------------------------------------------------------------------------------------------
# Raster formats
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt, kwargs, name", [
    ("PNG", {}, "png"),
    ("TIFF", {}, "tiff"),
    ("BMP", {}, "bmp"),
    ("WEBP", {"lossless": True}, "webp"),
    ("GIF", {}, "gif"),
])
def test_lossless_formats_decode_to_the_exact_pixels(fmt, kwargs, name):
    src = phantom8()
    result = decode(encode(Image.fromarray(src), fmt, **kwargs), f"scan.{name}")
    assert_valid(result)
    np.testing.assert_array_equal(result.pixels, src)
    assert result.meta == {"format": name, "width": 64, "height": 48, "bit_depth": 8, "frames": 1}
    assert result.warnings == []


def test_jpeg_gradient_decodes_within_tolerance():
    src = phantom8()
    result = decode(encode(Image.fromarray(src), "JPEG", quality=95))
    assert_valid(result)
    diff = np.abs(result.pixels.astype(int) - src)
    assert diff.mean() < 1.5 and diff.max() <= 16
    assert result.meta["format"] == "jpeg" and result.meta["bit_depth"] == 8
    assert result.warnings == []


def test_format_is_sniffed_from_bytes_not_the_filename():
    result = decode(encode(Image.fromarray(phantom8()), "PNG"), "actually-a-png.jpg")
    assert result.meta["format"] == "png"


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_like_pillow_exif_transpose(orientation):
    src = np.full((40, 64), 30, np.uint8)
    src[:10, :10] = 250  # bright block in the stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(Image.fromarray(src), "JPEG", quality=95, exif=exif.tobytes())
    expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("L"))
    result = decode(data, "photo.jpg")
    assert result.pixels.shape == expected.shape
    assert np.abs(result.pixels.astype(int) - expected).max() <= 2


def test_exif_orientation_6_rotates_clockwise():
    src = np.full((40, 64), 30, np.uint8)
    src[:10, :10] = 250
    exif = Image.Exif()
    exif[0x0112] = 6
    result = decode(encode(Image.fromarray(src), "JPEG", quality=95, exif=exif.tobytes()))
    assert result.pixels.shape == (64, 40)  # portrait now
    assert result.meta["width"] == 40 and result.meta["height"] == 64
    assert result.pixels[:10, -10:].mean() > 200  # the planted corner moved to the top-right
    assert result.pixels[:10, :10].mean() < 60


def test_16_bit_png_is_stretched_over_its_actual_range_not_truncated():
    row = np.linspace(0, 4095, 256).round().astype(np.uint16)
    src = np.tile(row, (8, 1))
    image = Image.fromarray(src)
    assert image.mode == "I;16"
    result = decode(encode(image, "PNG"))
    assert_valid(result)
    out = result.pixels[0].astype(int)
    assert out.min() == 0 and out.max() == 255  # truncating to the high byte would give at most 15
    assert np.all(np.diff(out) >= 0)  # monotonic
    assert result.meta["bit_depth"] == 16


def test_16_bit_tiff_is_stretched_over_its_actual_range():
    src = np.tile(np.linspace(1000, 3000, 128).round().astype(np.uint16), (4, 1))
    result = decode(encode(Image.fromarray(src), "TIFF"), "scan.tif")
    out = result.pixels[0].astype(int)
    assert out.min() == 0 and out.max() == 255 and np.all(np.diff(out) >= 0)
    assert result.meta["format"] == "tiff" and result.meta["bit_depth"] == 16


def test_16_bit_colour_png_keeps_its_precision():
    import cv2

    gray = np.tile(np.linspace(0, 4095, 200).round().astype(np.uint16), (6, 1))
    bgr = np.dstack([gray, gray, gray])
    ok, buf = cv2.imencode(".png", bgr)
    assert ok
    result = decode(buf.tobytes())
    out = result.pixels[0].astype(int)
    assert out.min() == 0 and out.max() == 255 and np.all(np.diff(out) >= 0)
    assert result.meta["bit_depth"] == 16 and result.warnings == []


def test_rgba_is_composited_onto_black():
    rgba = np.zeros((20, 30, 4), np.uint8)
    rgba[..., :3] = 200
    rgba[..., 3] = 255
    rgba[:, :10, 3] = 0  # fully transparent left third
    rgba[:, 10:20, 3] = 128  # half transparent middle
    result = decode(encode(Image.fromarray(rgba, "RGBA"), "PNG"))
    assert np.all(result.pixels[:, :10] == 0)  # black, not white
    assert np.all(np.abs(result.pixels[:, 10:20].astype(int) - 100) <= 1)
    assert np.all(result.pixels[:, 20:] == 200)
    assert codes(result) == ["transparency"]


def test_opaque_gray_rgba_has_no_warnings():
    rgba = np.dstack([phantom8()] * 3 + [np.full((48, 64), 255, np.uint8)])
    result = decode(encode(Image.fromarray(rgba, "RGBA"), "PNG"))
    np.testing.assert_array_equal(result.pixels, phantom8())
    assert result.warnings == []


def test_gray_palette_image_maps_to_its_gray_levels():
    src = phantom8()
    paletted = Image.fromarray(src).convert("P")  # may use an adaptive palette; luminance must survive
    result = decode(encode(paletted, "PNG"))
    expected = np.asarray(paletted.convert("L"))
    np.testing.assert_array_equal(result.pixels, expected)
    assert "color_image" not in codes(result)


def test_coloured_palette_image_is_converted_with_a_warning():
    image = Image.new("P", (16, 16))
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    pixels = np.zeros((16, 16), np.uint8)
    pixels[:, 8:] = 1
    image.putdata(pixels.ravel().tolist())
    result = decode(encode(image, "PNG"))
    assert codes(result) == ["color_image"]
    assert abs(int(result.pixels[0, 0]) - 76) <= 1  # red → 0.299 * 255
    assert abs(int(result.pixels[0, 15]) - 29) <= 1  # blue → 0.114 * 255


def test_cmyk_jpeg_becomes_the_right_gray():
    image = Image.new("CMYK", (32, 32), (0, 0, 0, 100))  # 100/255 black ink → gray 155
    data = encode(image, "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    result = decode(data)
    assert abs(float(result.pixels.mean()) - 155) <= 3
    assert "color_image" not in codes(result)


def test_rgb_with_real_colour_gets_luminance_and_a_warning():
    rgb = np.zeros((20, 30, 3), np.uint8)
    rgb[:, :15] = (255, 0, 0)
    rgb[:, 15:] = (0, 255, 0)
    image = Image.fromarray(rgb)
    result = decode(encode(image, "PNG"))
    np.testing.assert_array_equal(result.pixels, np.asarray(image.convert("L")))
    assert codes(result) == ["color_image"]
    assert result.warnings[0]["message"] == "This is a colour image; it was converted to grayscale."


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_gray_stored_as_rgb_has_no_colour_warning(fmt):
    rgb = Image.fromarray(phantom8()).convert("RGB")
    result = decode(encode(rgb, fmt, **({"quality": 95} if fmt == "JPEG" else {})))
    assert "color_image" not in codes(result)


def frames_for_animation():
    a, b, c = phantom8(), 255 - phantom8(), gradient()
    return [Image.fromarray(x) for x in (a, b, c)]


@pytest.mark.parametrize("fmt, kwargs, label", [
    ("TIFF", {}, "pages"),
    ("GIF", {"duration": 100, "loop": 0}, "frames"),
    ("WEBP", {"lossless": True, "duration": 100}, "frames"),
    ("PNG", {"duration": 100}, "frames"),  # APNG
])
def test_multi_frame_rasters_show_the_first_frame_with_a_warning(fmt, kwargs, label):
    first, *rest = frames_for_animation()
    result = decode(encode(first, fmt, save_all=True, append_images=rest, **kwargs))
    assert_valid(result)
    np.testing.assert_array_equal(result.pixels, phantom8())
    assert result.meta["frames"] == 3
    assert result.warnings == [{"code": "multi_frame",
                                "message": f"This file has 3 {label}; the first usable one is shown."}]


def test_animated_gif_skips_blank_leading_frames():
    blanks = [Image.fromarray(np.full((48, 64), v, np.uint8)) for v in (0, 40)]  # distinct: Pillow merges repeats
    frames = [*blanks, Image.fromarray(phantom8())]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)
    result = decode(data)
    np.testing.assert_array_equal(result.pixels, phantom8())
    assert codes(result) == ["multi_frame"] and "number 3" in result.warnings[0]["message"]


def test_blank_animation_has_no_usable_frame():
    frames = [Image.fromarray(np.full((16, 16), v, np.uint8)) for v in (0, 90, 180)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)
    with pytest.raises(NoUsableFrame) as info:
        decode(data)
    assert info.value.code == "no_usable_frame"


def test_a_single_flat_image_decodes_with_a_blank_warning():
    result = decode(encode(Image.new("L", (10, 10), 77), "PNG"))
    assert np.all(result.pixels == 77)
    assert codes(result) == ["blank_image"]


# ---------------------------------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------------------------------
def test_empty_file():
    with pytest.raises(EmptyFile) as info:
        decode(b"", "scan.png")
    assert info.value.code == "empty_file"
    assert str(info.value) == info.value.message == "This file is empty."
    assert isinstance(info.value, DecodeError)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
@pytest.mark.parametrize("keep", [0.5, 0.9])
def test_truncated_files(fmt, keep):
    noisy = np.random.default_rng(7).integers(0, 256, (48, 64), dtype=np.uint8)  # incompressible: mostly pixel data
    data = encode(Image.fromarray(noisy), fmt)
    with pytest.raises(TruncatedImage) as info:
        decode(data[: int(len(data) * keep)])
    assert info.value.code == "truncated_image"
    assert "incomplete" in info.value.message


def test_truncation_is_not_tolerated_globally():
    from PIL import ImageFile

    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


@pytest.mark.parametrize("data, name", [
    (bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)), "x.png"),
    (bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8)), None),
    (b"patient notes, definitely not an image\n" * 10, "notes.txt"),
    (b"%PDF-1.7\n" + b"0" * 300, "report.pdf"),
    (bytes(np.random.default_rng(2).integers(0, 256, 4096, dtype=np.uint8)), "x.dcm"),
])
def test_things_that_are_not_images_are_unreadable(data, name):
    with pytest.raises(UnreadableImage) as info:
        decode(data, name)
    assert info.value.code == "unreadable_image"


def test_named_like_png_message_mentions_png():
    with pytest.raises(UnreadableImage, match="PNG"):
        decode(b"\x00\x01\x02garbage" * 20, "x.png")


@pytest.mark.parametrize("data", [crafted_png(50_000, 50_000), jpeg_claiming(50_000, 50_000)],
                         ids=["png-ihdr", "jpeg-sof"])
def test_decompression_bombs_are_refused_from_the_header(data):
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(ImageTooLarge) as info:
            decode(data)
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.value.code == "image_too_large"
    assert elapsed < 1.0
    assert peak < 20 * 2**20  # nothing near 2.5 GB was allocated


def test_pixel_cap_between_our_limit_and_pillows_uses_our_message():
    with pytest.raises(ImageTooLarge, match="10,000 × 6,000"):
        decode(crafted_png(10_000, 6_000))  # 60 MP > MAX_PIXELS, below Pillow's own bomb limit
    assert MAX_PIXELS == 50_000_000


def test_max_pixels_argument():
    data = encode(Image.fromarray(phantom8()), "PNG")
    with pytest.raises(ImageTooLarge):
        decode(data, max_pixels=48 * 64 - 1)
    assert decode(data, max_pixels=48 * 64).pixels.shape == (48, 64)


# ---------------------------------------------------------------------------------------------------------------------
# DICOM
# ---------------------------------------------------------------------------------------------------------------------
def test_dicom_12_bit_with_rescale_and_window():
    stored = phantom12()
    ds = make_dicom(stored, bits_stored=12, RescaleSlope=2, RescaleIntercept=-1024,
                    WindowCenter=2000, WindowWidth=4000, ViewPosition="PA", BodyPartExamined="CHEST",
                    PixelSpacing=[0.139, 0.14])
    result = decode(dicom_bytes(ds), "chest.dcm")
    assert_valid(result)
    expected = linear_window(stored.astype(np.float64) * 2 - 1024, 2000, 4000)
    assert np.abs(result.pixels.astype(int) - expected).max() <= 1
    assert result.meta == {
        "format": "dicom", "width": 80, "height": 64, "bit_depth": 12, "frames": 1,
        "modality": "CR", "view_position": "PA", "body_part": "CHEST", "pixel_spacing": [0.139, 0.14],
        "photometric": "MONOCHROME2", "transfer_syntax": "Explicit VR Little Endian",
        "window": [2000.0, 4000.0], "windowing": "file",
    }
    assert result.warnings == []


def test_dicom_without_window_uses_the_robust_range():
    stored = phantom12()
    result = decode(dicom_bytes(make_dicom(stored, bits_stored=12)))
    out = result.pixels.astype(int)
    assert out.min() <= 5 and out.max() == 255
    order = np.argsort(stored.ravel(), kind="stable")
    assert np.all(np.diff(out.ravel()[order]) >= 0)  # brighter stored value → brighter pixel
    assert result.meta["windowing"] == "auto"


def test_dicom_voi_lut_sequence_is_applied():
    stored = np.tile(np.arange(0, 256, dtype=np.uint16), (4, 1))
    ds = make_dicom(stored, bits_stored=8 + 4)
    item = Dataset()
    item.LUTDescriptor = [256, 0, 8]
    item.add_new(0x00283006, "OW", np.arange(255, -1, -1, dtype="<u2").tobytes())  # LUTData: an inverting LUT
    ds.VOILUTSequence = [item]
    result = decode(dicom_bytes(ds))
    assert int(result.pixels[0, 0]) == 255 and int(result.pixels[0, -1]) == 0
    assert result.meta["windowing"] == "voi_lut"


def test_monochrome1_is_inverted_so_bone_stays_bright():
    source = phantom12()
    square = (slice(8, 24), slice(8, 24))
    mono2 = decode(dicom_bytes(make_dicom(source, bits_stored=12)))
    mono1 = decode(dicom_bytes(make_dicom((4095 - source).astype(np.uint16), bits_stored=12,
                                          photometric="MONOCHROME1")))
    assert mono1.pixels[square].mean() > mono1.pixels.mean() + 50
    assert np.abs(mono1.pixels.astype(int) - mono2.pixels).max() <= 1
    assert mono1.meta["photometric"] == "MONOCHROME1"


@pytest.mark.parametrize("bits_stored", [12, 16])
def test_signed_pixels(bits_stored):
    ramp = np.tile(np.linspace(-2000, 2000, 100).round().astype(np.int16), (5, 1))
    result = decode(dicom_bytes(make_dicom(ramp, bits_stored=bits_stored, WindowCenter=0, WindowWidth=4001)))
    out = result.pixels[0].astype(int)
    assert out[0] == 0 and out[-1] == 255 and np.all(np.diff(out) >= 0)
    assert abs(int(out[50]) - 128) <= 2  # zero sits mid-window


def test_8_bit_dicom():
    src = phantom8()
    result = decode(dicom_bytes(make_dicom(src, WindowCenter=127.5, WindowWidth=256)))
    assert np.abs(result.pixels.astype(int) - src).max() <= 1
    assert result.meta["bit_depth"] == 8


def test_multi_frame_dicom_shows_the_first_usable_frame():
    frames = np.stack([np.zeros((64, 80), np.uint16), phantom12(), phantom12()[::-1].copy()])
    window = {"WindowCenter": 2048, "WindowWidth": 4096}
    result = decode(dicom_bytes(make_dicom(frames, bits_stored=12, **window)))
    single = decode(dicom_bytes(make_dicom(phantom12(), bits_stored=12, **window)))
    np.testing.assert_array_equal(result.pixels, single.pixels)
    assert result.meta["frames"] == 3
    assert codes(result) == ["multi_frame"] and "3 frames" in result.warnings[0]["message"]


def test_multi_frame_dicom_with_only_blank_frames():
    frames = np.zeros((3, 8, 8), np.uint16)
    with pytest.raises(NoUsableFrame):
        decode(dicom_bytes(make_dicom(frames, bits_stored=12)))


def test_rgb_dicom_becomes_luminance():
    rgb = np.zeros((10, 12, 3), np.uint8)
    rgb[:, :6] = (255, 0, 0)
    rgb[:, 6:] = (200, 200, 200)
    result = decode(dicom_bytes(make_dicom(rgb, photometric="RGB")))
    assert abs(int(result.pixels[0, 0]) - 76) <= 1 and int(result.pixels[0, -1]) == 200
    assert codes(result) == ["color_image"]


@pytest.mark.parametrize("name", ["test-SR.dcm", "rtplan.dcm", "waveform_ecg.dcm"])
def test_dicom_without_pixel_data_has_no_usable_frame(name):
    with pytest.raises(NoUsableFrame) as info:
        decode(shipped(name), "report.dcm")
    assert info.value.code == "no_usable_frame"


def test_dicom_with_short_pixel_data_is_truncated():
    with pytest.raises(TruncatedImage):
        decode(shipped("MR_truncated.dcm"))  # pydicom's MR_small.dcm, cut inside its (uncompressed) pixel data


def test_dicom_header_claiming_huge_rows_and_columns_is_refused():
    ds = make_dicom(np.zeros((4, 4), np.uint16), bits_stored=12)
    ds.Rows = ds.Columns = 50_000
    started = time.perf_counter()
    with pytest.raises(ImageTooLarge, match="50,000 × 50,000"):
        decode(dicom_bytes(ds))
    assert time.perf_counter() - started < 1.0


def test_dicom_jpeg_frame_claiming_huge_size_is_refused():
    ds = encapsulated(make_dicom(phantom8()), [jpeg_claiming(50_000, 50_000)], JPEGBaseline8Bit)
    with pytest.raises(ImageTooLarge):
        decode(dicom_bytes(ds))


@pytest.mark.parametrize("name", ["scan.dcm", None])
def test_dicom_without_preamble(name):
    ds = make_dicom(phantom12(), bits_stored=12, WindowCenter=2048, WindowWidth=4096)
    data = bare_dicom_bytes(ds)
    assert data[128:132] != b"DICM"
    result = decode(data, name)
    reference = decode(dicom_bytes(ds))
    np.testing.assert_array_equal(result.pixels, reference.pixels)
    assert result.meta["format"] == "dicom"


def test_deflated_dicom():
    ds = make_dicom(phantom12(), bits_stored=12, WindowCenter=2048, WindowWidth=4096)
    reference = decode(dicom_bytes(ds))
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    result = decode(dicom_bytes(ds))
    np.testing.assert_array_equal(result.pixels, reference.pixels)


def test_deflate_bomb_is_refused_before_inflating():
    ds = make_dicom(np.ones((8, 8), np.uint16), bits_stored=12)
    ds.add_new(0x00091010, "OB", bytes(8 * 2**20))  # 8 MB of zeros in a private element: deflates to ~8 kB
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    data = dicom_bytes(ds)
    assert len(data) < 100_000
    with pytest.raises(ImageTooLarge):
        decode(data, max_pixels=100_000)


# --- compressed transfer syntaxes ------------------------------------------------------------------------------------
WINDOW12 = {"WindowCenter": 2048, "WindowWidth": 4096}


def _base12() -> Dataset:
    return make_dicom(phantom12(), bits_stored=12, **WINDOW12)


PYDICOM_ENCODERS = {  # pydicom 3 `Dataset.compress`: RLE natively, JPEG-LS via pyjpegls, JPEG 2000 via openjpeg
    "rle": (RLELossless, {}),
    "jpegls_lossless": (JPEGLSLossless, {}),
    "jpegls_near_lossless": (JPEGLSNearLossless, {"jls_error": 3}),
    "j2k_lossless": (JPEG2000Lossless, {}),
    "j2k": (JPEG2000, {"j2k_psnr": [60]}),
}


def _compressed(kind: str, tmp_path) -> tuple[bytes, Dataset]:
    """(compressed DICOM bytes, the uncompressed dataset it came from)."""
    if kind in PYDICOM_ENCODERS:
        tsuid, options = PYDICOM_ENCODERS[kind]
        src = _base12()
        ds = copy.deepcopy(src)
        ds.compress(tsuid, **options)
        return dicom_bytes(ds), src
    if kind in ("jpeg_baseline", "jpeg_extended_8bit"):  # Pillow's JPEG bytes, encapsulated
        src = make_dicom(phantom8(), WindowCenter=127.5, WindowWidth=256)
        jpeg = encode(Image.fromarray(phantom8()), "JPEG", quality=95)
        tsuid = JPEGBaseline8Bit if kind == "jpeg_baseline" else JPEGExtended12Bit
        return dicom_bytes(encapsulated(copy.deepcopy(src), [jpeg], tsuid)), src
    if gdcm is None:
        pytest.skip("python-gdcm is not installed: no JPEG Lossless / 12-bit JPEG encoder available")
    src = _base12()
    if kind == "jpeg_lossless_sv1":
        return gdcm_transcode(src, "JPEGLosslessProcess14_1", tmp_path), src
    if kind == "jpeg_lossless":
        return gdcm_transcode(src, "JPEGLosslessProcess14", tmp_path), src
    if kind == "jpeg_extended_12bit":
        # GDCM writes a precision-12 SOF1 only when told the samples are 12 bits allocated;
        # the data set is then put back to the standard 16 bits allocated.
        data = gdcm_transcode(src, "JPEGExtendedProcess2_4", tmp_path, pixel_format=(1, 12, 12, 11))
        sof1 = data.index(b"\xff\xc1")
        assert data[sof1 + 4] == 12  # really a 12-bit lossy JPEG
        ds = pydicom.dcmread(io.BytesIO(data))
        ds.BitsAllocated = 16
        return dicom_bytes(ds), src
    raise AssertionError(kind)


COMPRESSED = [
    # (kind, transfer syntax, lossless?)
    ("rle", RLELossless, True),
    ("jpegls_lossless", JPEGLSLossless, True),
    ("jpegls_near_lossless", JPEGLSNearLossless, False),
    ("j2k_lossless", JPEG2000Lossless, True),
    ("j2k", JPEG2000, False),
    ("jpeg_baseline", JPEGBaseline8Bit, False),
    ("jpeg_extended_8bit", JPEGExtended12Bit, False),
    ("jpeg_extended_12bit", JPEGExtended12Bit, False),
    ("jpeg_lossless_sv1", JPEGLosslessSV1, True),
    ("jpeg_lossless", JPEGLossless, True),
]


@pytest.mark.parametrize("kind, tsuid, lossless", COMPRESSED, ids=[c[0] for c in COMPRESSED])
def test_compressed_dicom_matches_the_uncompressed_original(kind, tsuid, lossless, tmp_path):
    data, src = _compressed(kind, tmp_path)
    assert pydicom.dcmread(io.BytesIO(data)).file_meta.TransferSyntaxUID == tsuid
    result = decode(data, "scan.dcm")
    reference = decode(dicom_bytes(src))
    assert_valid(result)
    diff = np.abs(result.pixels.astype(int) - reference.pixels)
    if lossless:
        assert diff.max() == 0
    else:
        assert diff.mean() < 1.5 and diff.max() <= 16
    assert result.meta["transfer_syntax"] == UID(tsuid).name


@pytest.mark.parametrize("kind", ["jpeg_lossless_sv1", "jpeg_extended_12bit"])
def test_gdcm_only_syntaxes_decode_in_a_child_process(kind, tmp_path, monkeypatch):
    """Without the optional GPL pylibjpeg-libjpeg only GDCM decodes these, and it runs in a child process."""
    data, src = _compressed(kind, tmp_path)
    monkeypatch.setattr(model_io.dicom, "IN_PROCESS_PLUGINS", ())  # as if no in-process decoder could do it
    result = decode(data, "scan.dcm")
    reference = decode(dicom_bytes(src))
    diff = np.abs(result.pixels.astype(int) - reference.pixels)
    assert diff.mean() < 1.5 and diff.max() <= 16


def test_a_decoder_crash_on_damaged_data_does_not_take_the_app_down(tmp_path):
    data, _ = _compressed("jpeg_lossless_sv1", tmp_path)
    soi = data.index(b"\xff\xd8")
    dht = data.index(b"\xff\xc4", soi)
    damaged = bytearray(data)
    damaged[dht + 1] = 0xD0  # DHT marker → RST0: GDCM 3.2.6 aborts the interpreter on this
    with pytest.raises(UnreadableImage, match="JPEG Lossless"):
        decode(bytes(damaged))


def test_missing_decoder_names_the_compression(monkeypatch):
    ds = _base12()
    ds.compress(JPEGLSLossless)
    monkeypatch.setattr(get_decoder(JPEGLSLossless), "_available", {})
    with pytest.raises(UnreadableImage, match="JPEG-LS"):
        decode(dicom_bytes(ds))


def test_unsupported_transfer_syntax_names_the_compression():
    ds = make_dicom(phantom8())
    ds = encapsulated(ds, [b"\x00\x00\x01\xb3" + b"\x00" * 64], "1.2.840.10008.1.2.4.100")  # MPEG2 video
    with pytest.raises(UnreadableImage, match="MPEG2"):
        decode(dicom_bytes(ds))


# --- patient data never leaks ----------------------------------------------------------------------------------------
IDENTIFIERS = {
    "PatientName": "Doe^Jane",
    "PatientID": "PID-4815162342",
    "PatientBirthDate": "19700101",
    "AccessionNumber": "ACC-99887766",
    "InstitutionName": "Saint Example Hospital",
    "ReferringPhysicianName": "House^Gregory",
    "StudyInstanceUID": "1.2.826.0.1.3680043.8.498.111111111",
    "SeriesInstanceUID": "1.2.826.0.1.3680043.8.498.222222222",
}


def _identifying_strings(ds: Dataset) -> list[str]:
    strings = list(IDENTIFIERS.values()) + ["Doe", "Jane", str(ds.SOPInstanceUID)]
    return strings + ["1970-01-01", "4815162342"]


def test_patient_identifiers_never_reach_meta_warnings_or_logs(caplog):
    caplog.set_level(logging.DEBUG)
    frames = np.stack([np.zeros((64, 80), np.uint16), phantom12()])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom complains about the invalid values planted below
        ds = make_dicom(frames, bits_stored=12, **IDENTIFIERS)
        ds.add_new(0x00100030, "DA", "1970-13-45")  # invalid birth date: pydicom quotes such values in its logs
        ds.OtherPatientIDs = "OPID-" + "7" * 70  # over-long LO
        ds.BodyPartExamined = "JANE"  # a name typed into a code string
        data = dicom_bytes(ds)
    caplog.clear()  # only what decode() logs counts
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = decode(data, "Doe_Jane_PID-4815162342.dcm")
    exposed = repr(result.meta) + repr(result.warnings) + caplog.text + repr([str(w.message) for w in caught])
    for secret in _identifying_strings(ds) + ["Doe_Jane", "1970-13-45", "OPID", "JANE"]:
        assert secret not in exposed
    assert "body_part" not in result.meta
    assert result.warnings  # the multi-frame warning was produced, and it is clean


def test_bare_dicom_is_recognised_without_reading_patient_values(caplog):
    caplog.set_level(logging.DEBUG)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = make_dicom(phantom12(), bits_stored=12, **IDENTIFIERS)
        ds.add_new(0x00100030, "DA", "1970-13-45")
        data = bare_dicom_bytes(ds)
    caplog.clear()
    result = decode(data, "Doe_Jane.dcm")
    assert result.meta["format"] == "dicom"
    for secret in _identifying_strings(ds) + ["1970-13-45"]:
        assert secret not in repr(result.meta) + caplog.text


@pytest.mark.parametrize("damage", ["no_pixels", "truncated", "huge"])
def test_patient_identifiers_never_reach_error_messages(damage, caplog):
    caplog.set_level(logging.DEBUG)
    ds = make_dicom(phantom12(), bits_stored=12, **IDENTIFIERS)
    data = dicom_bytes(ds)
    if damage == "no_pixels":
        del ds.PixelData
        data = dicom_bytes(ds)
    elif damage == "truncated":
        data = data[:-3000]
    else:
        ds.Rows = 60_000
        data = dicom_bytes(ds)
    with pytest.raises(DecodeError) as info:
        decode(data, "Doe_Jane.dcm")
    exposed = str(info.value) + repr(info.value.args) + caplog.text
    assert info.value.__cause__ is None  # no chained pydicom exception carrying element values
    for secret in _identifying_strings(ds) + ["Doe_Jane"]:
        assert secret not in exposed


# --- every DICOM pydicom ships ---------------------------------------------------------------------------------------
SHIPPED = shipped_dicoms()
MUST_DECODE = {"CT_small.dcm", "MR_small.dcm", "MR_small_bigendian.dcm"}
DUAL_FORMAT = ["CT_small.dcm", "MR_small.dcm", "MR_small_bigendian.dcm", "MR_small_padded.dcm", "MR_small_expb.dcm",
               "examples_rgb_color.dcm"]  # a TIFF header in the 128-byte preamble (PS3.10 §7.1 allows it)
TYPED_CODES = {cls.code for cls in (EmptyFile, UnreadableImage, TruncatedImage, ImageTooLarge, NoUsableFrame)}


def test_pydicom_ships_the_files_named_here():
    names = {path.name for path in SHIPPED}
    assert len(names) >= 70 and MUST_DECODE | set(DUAL_FORMAT) <= names


@pytest.mark.parametrize("path", SHIPPED, ids=lambda path: path.name)
def test_every_dicom_pydicom_ships_decodes_or_raises_a_typed_error(path):
    data = path.read_bytes()
    assert sniff(data) != "tiff"
    try:
        result = decode(data, path.name)
    except DecodeError as err:
        assert path.name not in MUST_DECODE
        assert err.code in TYPED_CODES and err.message
        return
    assert_valid(result)
    assert result.meta["format"] == "dicom"
    # CT and MR slices, ultrasound, screen captures, dose grids: none is a chest radiograph.
    assert "not_chest_xray" in {w["code"] for w in check(result, population="pediatric, 1-5 years")}


@pytest.mark.parametrize("name", DUAL_FORMAT)
def test_dicom_with_a_tiff_header_in_its_preamble_is_read_as_dicom(name):
    data = shipped(name)
    assert data[:4] in (b"II*\x00", b"MM\x00*") and data[128:132] == b"DICM"
    result = decode(data, name)
    assert result.meta["format"] == "dicom" and result.meta["modality"] in ("CT", "MR", "US")


def test_an_intact_ybr_full_422_dicom_is_not_mistaken_for_a_truncated_one():
    """Uncompressed YBR_FULL_422 stores 2 samples per pixel, not 3; the same picture as SC_rgb_rle.dcm."""
    ybr, rgb = decode(shipped("SC_ybr_full_422_uncompressed.dcm")), decode(shipped("SC_rgb_rle.dcm"))
    assert np.abs(ybr.pixels.astype(int) - rgb.pixels).max() <= 2


@pytest.mark.parametrize("name", ["JPEG2000.dcm", "SC_rgb_rle.dcm", "JPEG-lossy.dcm", "MR_small_jpeg_ls_lossless.dcm"])
def test_compressed_dicom_cut_off_inside_its_pixel_data_is_truncated(name):
    data = shipped(name)
    start, end = data.index(b"\xe0\x7f\x10\x00"), data.rindex(b"\xfe\xff\xdd\xe0")  # Pixel Data … its end
    for keep in (start + 40, (start + end) // 2, end - 4):
        with pytest.raises(TruncatedImage):
            decode(data[:keep], name)


def test_cli_predict_answers_every_shipped_dicom_on_one_json_line(tiny_bundles):
    done = run_cli(["predict", "--json", *SHIPPED], tiny_bundles)
    assert "Traceback" not in done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == len(SHIPPED)
    for path, line in zip(SHIPPED, lines):
        result = json.loads(line)
        assert result["file"] == str(path)
        if result.get("error"):
            assert result["error"]["code"] in TYPED_CODES and path.name not in MUST_DECODE
        else:
            assert "not_chest_xray" in {w["code"] for w in result["warnings"]}
    assert done.returncode == 1  # reports and other objects without an image could not be analysed


# ---------------------------------------------------------------------------------------------------------------------
# Fuzzing: near-valid bytes either decode to a valid image or raise DecodeError, never anything else
# ---------------------------------------------------------------------------------------------------------------------
@functools.cache
def seeds() -> dict[str, bytes]:
    small = phantom8(12, 16)
    rle = make_dicom(phantom12(12, 16), bits_stored=12)
    rle.compress(RLELossless)
    return {
        "png": encode(Image.fromarray(small), "PNG"),
        "png16": encode(Image.fromarray(phantom12(12, 16)), "PNG"),
        "jpeg": encode(Image.fromarray(small), "JPEG"),
        "gif": encode(Image.fromarray(small), "GIF"),
        "tiff": encode(Image.fromarray(small), "TIFF"),
        "bmp": encode(Image.fromarray(small), "BMP"),
        "webp": encode(Image.fromarray(small), "WEBP", quality=80),
        "dicom": dicom_bytes(make_dicom(phantom12(12, 16), bits_stored=12, WindowCenter=2048, WindowWidth=4096)),
        "dicom_rle": dicom_bytes(rle),
        "dicom_jpeg": dicom_bytes(encapsulated(make_dicom(small), [encode(Image.fromarray(small), "JPEG")],
                                               JPEGBaseline8Bit)),
    }


@st.composite
def near_valid_files(draw):
    kind = draw(st.sampled_from(sorted(seeds())))
    seed = seeds()[kind]
    how = draw(st.sampled_from(["header+random tail", "mutate", "truncate"]))
    if how == "header+random tail":
        keep = draw(st.integers(1, len(seed)))
        data = seed[:keep] + draw(st.binary(max_size=512))
    elif how == "mutate":
        data = bytearray(seed)
        edits = draw(st.lists(st.tuples(st.integers(0, len(seed) - 1), st.integers(0, 255)), min_size=1, max_size=8))
        for position, value in edits:
            data[position] = value
        data = bytes(data)
    else:
        data = seed[: draw(st.integers(0, len(seed)))]
    name = draw(st.sampled_from([None, "upload.png", "upload.jpg", "upload.dcm", f"upload.{kind[:3]}"]))
    return data, name


@settings(max_examples=200, deadline=2000, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(near_valid_files())
def test_fuzz_near_valid_files_decode_or_raise_decode_error(case):
    data, name = case
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    logger = logging.getLogger("model.io")
    logger.addHandler(handler)
    try:
        result = decode(data, name, max_pixels=4_000_000)
    except DecodeError as err:
        assert err.code != DecodeError.code and err.message
        result = None
    finally:
        logger.removeHandler(handler)
    # decode() turns unanticipated library exceptions into UnreadableImage and logs a warning: none expected here
    assert [r.getMessage() for r in records] == []
    if result is not None:
        assert_valid(result)
