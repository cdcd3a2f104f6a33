"""Values read out of a DICOM data set: header attributes (only ever non-identifying ones reach the result), and
stored pixel values turned into display gray levels (Modality LUT, VOI LUT or window, MONOCHROME1, colour)."""
from __future__ import annotations

import math
import re
import struct
import zlib

import numpy as np
from pydicom.errors import BytesLengthException, InvalidDicomError
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut

from model.io.base import UnreadableImage
from model.io.pixels import COLOUR_WARNING, channels_differ, luminance, minmax_to_u8

PYDICOM_ERRORS = (InvalidDicomError, BytesLengthException, OSError, EOFError, RuntimeError, ValueError, TypeError,
                  KeyError, IndexError, AttributeError, ArithmeticError, struct.error, zlib.error)
"""What pydicom and its decoding plugins raise on damaged or unusual data sets (values are converted lazily, so
even reading one attribute can raise). A decoder that gives up raises RuntimeError or ValueError."""

DICOM_DAMAGED = "This DICOM file is damaged and can't be read."
_CS_ALLOWED = set("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 _")


def attr(ds, keyword: str):
    """Element value, or None when absent, empty or unparsable (values are converted lazily and may raise)."""
    try:
        value = ds.get(keyword, None)
    except PYDICOM_ERRORS:
        return None
    if value is None or value == "":
        return None
    return value


def first(value):
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return value[0] if len(value) else None
    return value


def int_attr(ds, keyword: str) -> int | None:
    value = first(attr(ds, keyword))
    try:
        return None if value is None else int(value)
    except (TypeError, ValueError):
        return None


def float_attr(ds, keyword: str) -> float | None:
    value = first(attr(ds, keyword))
    try:
        out = None if value is None else float(value)
    except (TypeError, ValueError):
        return None
    return out if out is not None and math.isfinite(out) else None


def code_string(ds, keyword: str) -> str | None:
    """A Code String (CS) value, only if it really is one: ≤16 of A–Z 0–9 space _. Anything else is dropped."""
    value = first(attr(ds, keyword))
    if value is None:
        return None
    text = str(value).strip().upper()
    if not text or len(text) > 16 or not set(text) <= _CS_ALLOWED:
        return None
    return text


DEFINED_TERMS: dict[str, frozenset[str]] = {
    # PS3.3 C.7.3.1.1.1 Modality
    "Modality": frozenset(
        "AR ASMT AU BDUS BI BMD CR CT CTPROTOCOL DG DOC DX ECG EPS ES FID GM HC HD IO IOL IVOCT IVUS KER KO LEN LS "
        "MG MR M3D NM OAM OCT OP OPM OPT OPTBSV OPTENF OPV OSS OT PLAN PR PT PX REG RESP RF RG RTDOSE RTIMAGE "
        "RTINTENT RTPLAN RTRAD RTRECORD RTSEGANN RTSTRUCT RWV SEG SM SMR SR SRF STAIN TEXTUREMAP TG US VA XA XC"
        .split()),
    # PS3.3 C.8.11.5 (DX) and C.8.19 View Position; LATERAL/LAT/OBLIQUE as modalities commonly write them
    "ViewPosition": frozenset("AP PA LL RL RLD LLD RLO LLO LAO RAO LPO RPO LATERAL LAT OBLIQUE".split()),
    # PS3.16 Annex L (CID 4031) body parts a radiograph names
    "BodyPartExamined": frozenset(
        "ABDOMEN ABDOMENPELVIS ANKLE ARM BREAST CHEST CHESTABDOMEN CHESTABDPELVIS CLAVICLE COCCYX CSPINE ELBOW "
        "EXTREMITY FACE FINGER FOOT FOREARM HAND HEAD HEADNECK HEART HIP HUMERUS JAW KNEE LEG LSPINE LUNG NECK "
        "PELVIS RIB SCAPULA SHOULDER SKULL SPINE SSPINE STERNUM THORAX TSPINE WHOLEBODY WRIST".split()),
}
"""The values these attributes may carry forward into the result: anything else (a name typed into Body Part
Examined, say) is dropped, whatever it looks like."""


def defined_term(ds, keyword: str) -> str | None:
    """The attribute's code string when it is one of the standard's defined terms (DEFINED_TERMS), else None."""
    value = code_string(ds, keyword)
    return value if value is not None and value in DEFINED_TERMS[keyword] else None


_IDENTIFYING_KEYWORDS = ("PatientName", "PatientID", "OtherPatientIDs", "PatientBirthDate", "AccessionNumber",
                         "InstitutionName", "ReferringPhysicianName", "StudyID", "OperatorsName")


def words(text: str) -> set[str]:
    return {t for t in re.split(r"[^A-Z0-9]+", text.upper()) if len(t) >= 3}


def identifier_tokens(ds) -> set[str]:
    """Words of the identifying attributes, so that a code string that repeats one (a name typed into Body Part
    Examined, say) is left out of the metadata."""
    tokens: set[str] = set()
    for keyword in _IDENTIFYING_KEYWORDS:
        try:
            value = ds.get(keyword, None)
        except PYDICOM_ERRORS:
            continue
        if value is not None:
            tokens |= words(str(value))
    return tokens


def pixel_spacing(ds) -> list[float] | None:
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = attr(ds, keyword)
        try:
            pair = [float(v) for v in value] if value is not None and len(value) == 2 else None
        except (TypeError, ValueError):
            pair = None
        if pair and all(math.isfinite(v) and v > 0 for v in pair):
            return pair
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


def dicom_gray(frame: np.ndarray, ds, photometric: str) -> tuple[np.ndarray, dict]:
    """One monochrome frame → uint8 via Modality LUT, then VOI LUT / window / robust range, then MONOCHROME1 flip."""
    info: dict = {}
    try:
        values = apply_modality_lut(frame, ds)
    except PYDICOM_ERRORS:
        values = frame
    values = np.asarray(values)
    out = None
    voi_seq = attr(ds, "VOILUTSequence")
    if voi_seq:
        try:
            lut_out = np.asarray(apply_voi_lut(values, ds, index=0, prefer_lut=True), dtype=np.float32)
            bits = int(voi_seq[0].LUTDescriptor[2])
            full = float(2 ** bits - 1) if 0 < bits <= 16 else float(lut_out.max() or 1.0)
            out = np.clip(lut_out / full, 0.0, 1.0)
            info["windowing"] = "voi_lut"
        except PYDICOM_ERRORS:
            out = None
    if out is None:
        center, width = float_attr(ds, "WindowCenter"), float_attr(ds, "WindowWidth")
        function = code_string(ds, "VOILUTFunction") or "LINEAR"
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


def dicom_colour(frame: np.ndarray, ds, photometric: str, bits: int) -> tuple[np.ndarray, list[dict]]:
    warns: list[dict] = []
    rgb = frame
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(frame, ds)
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[-1] < 3:
        raise UnreadableImage(DICOM_DAMAGED)
    full = 255.0 if rgb.dtype == np.uint8 else float(2 ** min(max(bits, 8), 16) - 1)
    if channels_differ(rgb, full):
        warns.append(COLOUR_WARNING)
    lum = luminance(rgb)
    if rgb.dtype == np.uint8:
        gray = np.clip(lum + 0.5, 0, 255).astype(np.uint8)
    else:
        gray = minmax_to_u8(lum, full)
    return gray, warns
