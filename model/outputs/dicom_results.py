"""Results a PACS can file: for a DICOM input, a Comprehensive 3D SR with the finding and the numbers behind it, and a
Secondary Capture of the Grad-CAM overlay, both in the source study (built with highdicom).

Patient and study attributes come from re-reading the uploaded bytes here (model.io's decode strips them from
`meta` on purpose); they go straight into the two output datasets and nowhere else: never into a result, a log line
or an exception message. Takes the `Result` every other surface takes. pydicom's and highdicom's own warnings quote
attribute values (a name without a caret, an invalid date), so this module silences both libraries' loggers and
warnings (see `quiet_libraries`). Values highdicom refuses but real archives hold (PatientSex "U", a malformed date)
are omitted from the outputs rather than being fatal.
"""
from __future__ import annotations

import logging
import re
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from io import BytesIO

import cv2
import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from model.core.preprocess import shrink
from model.core.types import Finding, Result, Task, WarningCode

__all__ = ["DISCLAIMER", "DicomOutputs", "FilingPolicy", "NotDicom", "build_outputs", "dicom_bytes", "filed_uids",
           "quiet_libraries", "read_sr"]

DISCLAIMER = "Decision support, not for diagnosis"
MANUFACTURER = "Torax"  # ASCII on purpose: LO values are read by PACSs with many character sets
SR_SERIES_NUMBER, SC_SERIES_NUMBER = 9901, 9902
SC_MAX_SIDE = 1024  # the overlay is for looking at, not for measuring: keep what is sent to the PACS small

# Codes. SNOMED CT where a standard concept says it; a private scheme (99TORAX) for what is ours.
REPORT = hd.sr.CodedConcept("18748-4", "LN", "Diagnostic imaging report")
PNEUMONIA = hd.sr.CodedConcept("233604007", "SCT", "Pneumonia")
PRESENT = hd.sr.CodedConcept("52101004", "SCT", "Present")
ABSENT = hd.sr.CodedConcept("2667000", "SCT", "Absent")
NOT_ASSESSED_CODE = hd.sr.CodedConcept("not-assessed", "99TORAX", "Not assessed")
PROBABILITY = hd.sr.CodedConcept("probability", "99TORAX", "Ensemble probability")
THRESHOLD = hd.sr.CodedConcept("threshold", "99TORAX", "Decision threshold")
OPERATING_POINT = hd.sr.CodedConcept("operating-point", "99TORAX", "Operating point")
SITE = hd.sr.CodedConcept("site-profile", "99TORAX", "Site profile")
WARNING = hd.sr.CodedConcept("input-warning", "99TORAX", "Input check warning")
NOTE = hd.sr.CodedConcept("121106", "DCM", "Comment")
SOURCE = hd.sr.CodedConcept("121112", "DCM", "Source of Measurement")
NO_UNITS = hd.sr.CodedConcept("1", "UCUM", "no units")

# Patient and study attributes a PACS files by; copied verbatim when the source has them.
COPIED = ("PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex", "PatientAge",
          "OtherPatientIDsSequence", "StudyInstanceUID", "StudyID", "StudyDate", "StudyTime", "AccessionNumber",
          "ReferringPhysicianName", "StudyDescription")


# Their warnings quote values from the dataset (e.g. 'The string "SMITH JOHN" is unlikely to represent...'): a
# patient attribute must never reach a log or a stream, so neither library's log records go anywhere, and their
# warnings are dropped (model code that handles a patient's dataset runs inside quiet_libraries() as well).
for _name in ("pydicom", "highdicom"):
    logging.getLogger(_name).addHandler(logging.NullHandler())
    logging.getLogger(_name).propagate = False
    warnings.filterwarnings("ignore", module=rf"{_name}(\.|$)")


@contextmanager
def quiet_libraries():
    """Drop every Python warning raised inside (whichever module it is attributed to): the caller is handling a
    patient's dataset, and a library's warning may quote its attributes."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


OUTSIDE_POPULATION = "outside the intended population"
NOT_A_CHEST = "not a frontal chest radiograph"


@dataclass(frozen=True)
class FilingPolicy:
    """What an unattended channel (`pacs watch`, scoring a whole archive) may file with no reader looking first.
    By default no finding is filed for an image the input check places outside the bundle's intended population
    (an adult's radiograph for a bundle that learned from children): it is filed "not assessed", as a radiograph
    that is not a chest is. `allow_outside_population` files the label anyway, with the warning."""
    allow_outside_population: bool = False

    def withheld(self, result: Result) -> bool:
        return result.has_warning(WarningCode.OUTSIDE_INTENDED_POPULATION) and not self.allow_outside_population

    def apply(self, result: Result) -> Result:
        """The result as this channel files it: without a label when withheld (its finding is then NOT_ASSESSED;
        the SR says why, from the warning)."""
        return replace(result, label=None) if self.withheld(result) else result


def not_assessed_because(result: Result) -> str | None:
    """Why an analysed result carries no decision, in the SR's words; None when it has one or was not analysed."""
    if result.failed or result.finding is not Finding.NOT_ASSESSED:
        return None
    if result.has_warning(WarningCode.NOT_CHEST_XRAY):
        return NOT_A_CHEST
    if result.has_warning(WarningCode.OUTSIDE_INTENDED_POPULATION):
        return OUTSIDE_POPULATION
    return None


class NotDicom(ValueError):
    """The upload is not a DICOM dataset, so there is no study to file results into."""


@dataclass
class DicomOutputs:
    sr: pydicom.Dataset
    sc: pydicom.Dataset | None  # None when there was no image to overlay (the file could not be decoded)

    def datasets(self) -> list[pydicom.Dataset]:
        return [ds for ds in (self.sr, self.sc) if ds is not None]

    def uids(self) -> dict:
        out = {"study_instance_uid": str(self.sr.StudyInstanceUID),
               "sr_series_instance_uid": str(self.sr.SeriesInstanceUID),
               "sr_sop_instance_uid": str(self.sr.SOPInstanceUID)}
        if self.sc is not None:
            out.update(sc_series_instance_uid=str(self.sc.SeriesInstanceUID),
                       sc_sop_instance_uid=str(self.sc.SOPInstanceUID))
        return out


def _finding_concept(result: Result) -> hd.sr.CodedConcept:
    classes = list(result.probabilities or {})
    positive = classes[-1] if classes else "PNEUMONIA"
    if result.task == Task.BINARY and positive.upper() == "PNEUMONIA":
        return PNEUMONIA
    name = positive if result.task == Task.BINARY or not isinstance(result.label, str) else result.label
    return hd.sr.CodedConcept(str(name)[:16], "99TORAX", str(name))


def read_source(data: bytes) -> pydicom.Dataset:
    """The uploaded DICOM's header (no pixels). Raises NotDicom, with no detail from the file in the message."""
    try:
        ds = pydicom.dcmread(BytesIO(data), force=True, stop_before_pixels=True)
        if "SOPInstanceUID" not in ds or "StudyInstanceUID" not in ds:
            raise NotDicom("This file is not a DICOM image with a study to file results into.")
        return ds
    except NotDicom:
        raise
    except Exception:
        raise NotDicom("This file is not a DICOM image with a study to file results into.") from None


_VALID = {"PatientSex": re.compile(r"[MFO]"), "PatientAge": re.compile(r"\d{3}[DWMY]"),
          "StudyTime": re.compile(r"([01]\d|2[0-3])([0-5]\d([0-5]\d(\.\d{1,6})?)?)?")}


def _valid(keyword: str, value) -> bool:
    text = str(value).strip()
    if keyword.endswith("Date"):
        try:
            return datetime.strptime(text, "%Y%m%d") is not None and len(text) == 8
        except ValueError:
            return False
    return keyword not in _VALID or bool(_VALID[keyword].fullmatch(text))


def sanitise(source: pydicom.Dataset) -> pydicom.Dataset:
    """`source` without the patient and study values highdicom refuses but real archives hold (PatientSex "U", a
    date like "2020-01-01", a time "25:00"): each is omitted from the outputs (empty), never fatal."""
    for keyword in ("PatientSex", "PatientAge", "PatientBirthDate", "StudyDate", "StudyTime"):
        if keyword in source and source[keyword].value not in (None, "") and not _valid(keyword, source[keyword].value):
            source[keyword].value = ""
    return source


def filed_uids(source_sop_uid: str, bundle_name: str) -> dict:
    """The UIDs of the SR and SC filed for one source instance by one bundle, derived from both: filing the same
    instance twice (a restart with another state file, the PACS's URL spelt another way) names the same objects,
    and whether it is already answered can be asked of the PACS."""
    seed = f"torax:{bundle_name}:{source_sop_uid}"
    return {key: generate_uid(entropy_srcs=[seed, key]) for key in
            ("sr_series_instance_uid", "sr_sop_instance_uid", "sc_series_instance_uid", "sc_sop_instance_uid")}


def _copy_patient_study(source: pydicom.Dataset, out: pydicom.Dataset) -> None:
    for keyword in COPIED:
        if keyword in source:
            setattr(out, keyword, source[keyword].value)
    out.SpecificCharacterSet = "ISO_IR 192"  # text is held as str here; written back out as UTF-8


def _content(result: Result, bundle_name: str, bundle_version: str,
             source: pydicom.Dataset) -> hd.sr.ContainerContentItem:
    root = hd.sr.ContainerContentItem(name=REPORT, template_id=None)
    root.ContentSequence = hd.sr.ContentSequence(is_root=False)
    items = []
    device = hd.sr.DeviceObserverIdentifyingAttributes(uid=generate_uid(), name=MANUFACTURER,
                                                       manufacturer_name=MANUFACTURER, model_name=bundle_name)
    items += hd.sr.ObserverContext(observer_type=codes.DCM.Device, observer_identifying_attributes=device)
    items += hd.sr.AlgorithmIdentification(name=bundle_name, version=bundle_version)
    value = {Finding.PRESENT: PRESENT, Finding.ABSENT: ABSENT}.get(result.finding, NOT_ASSESSED_CODE)
    items.append(hd.sr.CodeContentItem(name=_finding_concept(result), value=value, relationship_type="CONTAINS"))
    if result.probability is not None:
        items.append(hd.sr.NumContentItem(name=PROBABILITY, value=round(float(result.probability), 6),
                                          unit=NO_UNITS, relationship_type="CONTAINS"))
    elif result.probabilities:
        for cls, p in result.probabilities.items():
            name = hd.sr.CodedConcept(f"p-{cls}"[:16], "99TORAX", f"Ensemble probability of {cls}")
            items.append(hd.sr.NumContentItem(name=name, value=round(float(p), 6), unit=NO_UNITS,
                                              relationship_type="CONTAINS"))
    threshold = result.threshold
    if isinstance(threshold, (int, float)):
        items.append(hd.sr.NumContentItem(name=THRESHOLD, value=round(float(threshold), 6), unit=NO_UNITS,
                                          relationship_type="CONTAINS"))
    elif isinstance(threshold, dict):
        text = ", ".join(f"{c} {float(v):.3f}" for c, v in threshold.items())
        items.append(hd.sr.TextContentItem(name=THRESHOLD, value=text, relationship_type="CONTAINS"))
    items.append(hd.sr.TextContentItem(name=OPERATING_POINT, value=result.operating_point or "custom",
                                       relationship_type="CONTAINS"))
    if result.site:
        items.append(hd.sr.TextContentItem(name=SITE, value=str(result.site), relationship_type="CONTAINS"))
    for w in result.warnings:
        items.append(hd.sr.TextContentItem(name=WARNING, value=f"{w.get('code')}: {w.get('message')}",
                                           relationship_type="CONTAINS"))
    if why := not_assessed_because(result):
        items.append(hd.sr.TextContentItem(name=NOTE, value=f"Not assessed: {why}", relationship_type="CONTAINS"))
    if result.error:
        items.append(hd.sr.TextContentItem(name=NOTE, value=f"Not analysed: {result.error.get('message')}",
                                           relationship_type="CONTAINS"))
    items.append(hd.sr.TextContentItem(name=NOTE, value=DISCLAIMER, relationship_type="CONTAINS"))
    items.append(hd.sr.ImageContentItem(name=SOURCE, referenced_sop_class_uid=source.SOPClassUID,
                                        referenced_sop_instance_uid=source.SOPInstanceUID,
                                        relationship_type="CONTAINS"))
    for item in items:
        root.ContentSequence.append(item)
    return root


def _burn_in(rgb: np.ndarray, footer: str) -> np.ndarray:
    """The overlay, shrunk to SC_MAX_SIDE, with the disclaimer in a black band above and `footer` below."""
    rgb = np.ascontiguousarray(rgb[..., :3] if rgb.ndim == 3 else np.stack([rgb] * 3, -1), dtype=np.uint8)
    rgb = shrink(rgb, SC_MAX_SIDE)
    h, w = rgb.shape[:2]
    band = max(18, w // 22)
    canvas = np.zeros((h + 2 * band, w, 3), np.uint8)
    canvas[band:band + h] = rgb
    for text, y in ((DISCLAIMER, 0), (footer, band + h)):
        size = 1.0
        while size > 0.2 and cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, size, 1)[0][0] > w - 8:
            size -= 0.05
        size = min(size, band / 30)
        (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, size, 1)
        cv2.putText(canvas, text, (4, y + (band + th) // 2), cv2.FONT_HERSHEY_SIMPLEX, size, (255, 255, 255),
                    max(1, band // 24), cv2.LINE_AA)
    return canvas


def build_outputs(source_bytes: bytes, result: Result, bundle, overlay_rgb: np.ndarray | None,
                  uids: dict | None = None) -> DicomOutputs:
    """The SR and the Secondary Capture for one analysed DICOM upload (no SC without an overlay). `bundle` needs
    `.name` and `.version`; `uids` (see `filed_uids`) names the outputs, else new UIDs do. Raises NotDicom for
    anything else."""
    with quiet_libraries():
        return _build_outputs(source_bytes, result, bundle, overlay_rgb, uids or {})


def _build_outputs(source_bytes: bytes, result: Result, bundle, overlay_rgb, uids: dict) -> DicomOutputs:
    source = sanitise(read_source(source_bytes))
    name, version = str(bundle.name), str(bundle.version)
    uid = lambda key: uids.get(key) or generate_uid()  # noqa: E731
    sr = hd.sr.Comprehensive3DSR(
        evidence=[source], content=_content(result, name, version, source),
        series_instance_uid=uid("sr_series_instance_uid"), series_number=SR_SERIES_NUMBER,
        sop_instance_uid=uid("sr_sop_instance_uid"),
        instance_number=1, manufacturer=MANUFACTURER, is_complete=True, is_final=False, is_verified=False)
    sr.SeriesDescription = "Torax decision support (not for diagnosis)"
    _copy_patient_study(source, sr)
    if overlay_rgb is None:
        return DicomOutputs(sr=sr, sc=None)
    state, p = result.finding, result.probability
    footer = f"Torax {name} {version} - Grad-CAM - " + (
        "not assessed" if state == Finding.NOT_ASSESSED else f"{state}" + (f", p={p:.3f}" if p is not None else ""))
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source, pixel_array=_burn_in(overlay_rgb, footer), photometric_interpretation="RGB",
        bits_allocated=8, coordinate_system="PATIENT", patient_orientation=("L", "F"),  # replaced just below
        series_instance_uid=uid("sc_series_instance_uid"),
        series_number=SC_SERIES_NUMBER, sop_instance_uid=uid("sc_sop_instance_uid"), instance_number=1,
        manufacturer=MANUFACTURER, transfer_syntax_uid=ExplicitVRLittleEndian)
    # The overlay keeps the source's axes; highdicom insists on some orientation, so the source's (or "unknown",
    # an empty type 2 value) replaces the placeholder rather than inventing one.
    sc.PatientOrientation = source.get("PatientOrientation", "") or ""
    sc.BurnedInAnnotation = "YES"
    sc.SeriesDescription = "Torax Grad-CAM overlay (not for diagnosis)"
    sc.ImageType = ["DERIVED", "SECONDARY"]
    ref = pydicom.Dataset()
    ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = source.SOPClassUID, source.SOPInstanceUID
    sc.SourceImageSequence = [ref]
    _copy_patient_study(source, sc)
    return DicomOutputs(sr=sr, sc=sc)


def dicom_bytes(ds: pydicom.Dataset) -> bytes:
    """A dataset as a DICOM Part 10 file, in memory."""
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def read_sr(ds: pydicom.Dataset) -> dict:
    """What a Tórax SR says, read back by concept (for tests and for showing a stored SR):
    {"finding", "probability", "threshold", "operating_point", "site", "warnings", "algorithm",
     "source_sop_instance_uid"}."""
    out = {"finding": None, "probability": None, "threshold": None, "operating_point": None, "site": None,
           "warnings": [], "algorithm": {}, "source_sop_instance_uid": None}
    for item in _walk(ds.ContentSequence):
        code = item.ConceptNameCodeSequence[0].CodeValue
        if item.ValueType == "CODE" and item.ConceptNameCodeSequence[0].CodingSchemeDesignator in ("SCT", "99TORAX"):
            meaning = item.ConceptCodeSequence[0].CodeMeaning
            out["finding"] = {"Present": Finding.PRESENT, "Absent": Finding.ABSENT}.get(meaning, Finding.NOT_ASSESSED)
        elif item.ValueType == "NUM" and code in (PROBABILITY.value, THRESHOLD.value):
            value = float(item.MeasuredValueSequence[0].NumericValue)
            out["probability" if code == PROBABILITY.value else "threshold"] = value
        elif item.ValueType == "TEXT" and code == OPERATING_POINT.value:
            out["operating_point"] = item.TextValue
        elif item.ValueType == "TEXT" and code == SITE.value:
            out["site"] = item.TextValue
        elif item.ValueType == "TEXT" and code == WARNING.value:
            out["warnings"].append(item.TextValue)
        elif item.ValueType == "TEXT" and code in ("111001", "111003"):
            out["algorithm"]["name" if code == "111001" else "version"] = item.TextValue
        elif item.ValueType == "IMAGE" and code == SOURCE.value:
            out["source_sop_instance_uid"] = str(item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
    return out


def _walk(sequence):
    for item in sequence:
        yield item
        if "ContentSequence" in item:
            yield from _walk(item.ContentSequence)
