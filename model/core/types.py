"""The names every layer shares: what kind of task a bundle solves, which CAM methods exist, and the one result an
upload gets (`Result`), as the CLI, the REST API, the worklist and the downloads all hand it out.

Plain data only: no Keras, no Streamlit, no disk.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from enum import Enum, StrEnum
from typing import Any, TypeVar

E = TypeVar("E", bound=Enum)


def look_up_option(value, options: type[E]) -> E:
    """`value` as a member of the enum `options` (by value or by name, case-insensitively), or a ValueError that
    lists the valid options."""
    if isinstance(value, options):
        return value
    for option in options:
        if str(value).lower() in (str(option.value).lower(), option.name.lower()):
            return option
    valid = ", ".join(repr(o.value) for o in options)
    raise ValueError(f"Unknown {options.__name__} {value!r}; choose one of: {valid}.")


class Task(StrEnum):
    """What a bundle's classes mean. Binary: one positive class (the last), decided at a threshold. Multiclass:
    exactly one class, the most probable. Multilabel: every class at or above its own threshold."""
    BINARY = "binary"
    MULTICLASS = "multiclass"
    MULTILABEL = "multilabel"


class TrainingTask(StrEnum):
    """What a training run learns (training/ only: a bundle is never multitask). The three bundle tasks, plus
    MULTITASK: one backbone with a pneumonia head and a subtype head, which `training.heads` cuts into a binary and a
    multiclass run before export."""
    BINARY = Task.BINARY.value
    MULTICLASS = Task.MULTICLASS.value
    MULTILABEL = Task.MULTILABEL.value
    MULTITASK = "multitask"


class WarningCode(StrEnum):
    """The codes of a result's warnings ({"code", "message"}). A warning never stops the analysis; only
    NOT_CHEST_XRAY withholds the decision (the model only knows frontal chest X-rays)."""
    # from the decoder (model.io)
    COLOR_IMAGE = "color_image"
    TRANSPARENCY = "transparency"
    BLANK_IMAGE = "blank_image"
    MULTI_FRAME = "multi_frame"
    # from the input check (model.core.guard)
    NOT_CHEST_XRAY = "not_chest_xray"
    LATERAL_VIEW = "lateral_view"
    TOO_SMALL = "too_small"
    SATURATED_IMAGE = "saturated_image"
    OUTSIDE_INTENDED_POPULATION = "outside_intended_population"
    GUARD_UNAVAILABLE = "guard_unavailable"


class Finding(StrEnum):
    """What a result says, for the outputs that file or print it (reports, worklist, PDF, DICOM SR).
    NOT_ASSESSED: no decision was given, because the file could not be analysed or the input check says it is not
    a chest X-ray (whatever label a model gives such an image means nothing)."""
    PRESENT = "present"
    ABSENT = "absent"
    NOT_ASSESSED = "not_assessed"


NOT_ASSESSED = Finding.NOT_ASSESSED


class CamMethod(StrEnum):
    """Class activation map methods (model.core.explain)."""
    GRADCAM = "gradcam"
    GRADCAM_PLUS_PLUS = "gradcam++"
    SCORECAM = "scorecam"

    @property
    def label(self) -> str:
        return _CAM_LABELS[self]


_CAM_LABELS = {CamMethod.GRADCAM: "Grad-CAM", CamMethod.GRADCAM_PLUS_PLUS: "Grad-CAM++",
               CamMethod.SCORECAM: "Score-CAM"}


def plain(value):
    """JSON-ready: numpy scalars and arrays as Python values, enums as their values, NaN and infinities as null."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return plain(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# Filled in only by the surface that adds them, and only then part of the JSON.
OPTIONAL_FIELDS = ("cam", "cam_class", "overlay_png_base64")


def _doc(text: str) -> dict:
    return {"doc": text}


@dataclass
class Result:
    """One upload's analysis. `error` ({"code", "message"}) is set instead of the prediction fields when the file
    could not be read; a result never carries the image itself or any patient identifier (`meta` is the decoder's
    non-identifying facts: format, size, bit depth...)."""
    # Each field's `doc` is also its description in the REST API's schema (model.channels.api.PredictResult).
    file: str | None = field(metadata=_doc("The uploaded file's name, as the client sent it."))
    bundle: str = field(metadata=_doc("The model bundle that analysed it."))
    task: Task = field(metadata=_doc("The bundle's task."))
    probability: float | None = field(default=None, metadata=_doc(
        "Binary bundles: calibrated ensemble probability of the positive (last) class; else null."))
    probabilities: dict[str, float] | None = field(default=None, metadata=_doc(
        "Calibrated ensemble probability per class."))
    members: dict[str, Any] | None = field(default=None, metadata=_doc(
        "Per member: the positive class's probability (binary), or a probability per class."))
    spread: float | None = field(default=None, metadata=_doc(
        "Member disagreement: the largest range of member probabilities."))
    threshold: float | dict[str, float] | None = field(default=None, metadata=_doc(
        "The threshold applied (one per class for multilabel bundles; null for multiclass)."))
    operating_point: str | None = field(default=None, metadata=_doc(
        "The operating point used, or null for an explicit threshold."))
    label: str | list[str] | None = field(default=None, metadata=_doc(
        "The decision (multilabel: the classes found); null when the upload is not a chest radiograph "
        "(`not_chest_xray`: not assessed, the probability is kept for reference only)."))
    site: str | None = field(default=None, metadata=_doc(
        "The site profile whose calibration and thresholds were used, or null for the bundle as shipped."))
    warnings: list[dict] = field(default_factory=list, metadata=_doc(
        "From the decoder and the input check: {code (a WarningCode), message}."))
    error: dict | None = field(default=None, metadata=_doc(
        "{code, message} when the file could not be analysed (the prediction fields are then null)."))
    meta: dict | None = field(default=None, metadata=_doc(
        "Non-identifying facts about the file: format, size, bit depth..."))
    guard_scores: dict[str, float] | None = field(default=None, metadata=_doc(
        "The input check's scores behind its warnings: chest_xray (how much the image looks like a frontal chest "
        "radiograph, 0-1) and, for a bundle that learned from children, adult (0-1); each only when it ran."))
    cam: str | None = field(default=None, metadata=_doc(
        "CLI: the overlay file written; API: the CAM method of the overlay, when one was asked for."))
    cam_class: str | None = field(default=None, metadata=_doc("The class the overlay explains."))
    overlay_png_base64: str | None = field(default=None, metadata=_doc(
        "The ensemble CAM blended over the image, at most 1024 px on its longest side, as a base64 PNG."))

    @property
    def failed(self) -> bool:
        return self.error is not None

    def has_warning(self, code: WarningCode) -> bool:
        return any(w.get("code") == code for w in self.warnings)

    @property
    def assessed(self) -> bool:
        """Whether the result may carry a decision: it was analysed, and the input check does not say the upload is
        not a chest radiograph (the probability may stay, for reference, but no label is given)."""
        return not self.failed and self.probabilities is not None \
            and not self.has_warning(WarningCode.NOT_CHEST_XRAY)

    @property
    def finding(self) -> Finding:
        """PRESENT when the decision names a finding (binary and multiclass: any class but the first, the normal
        one; multilabel: any class at all), ABSENT when it does not, NOT_ASSESSED when there is no decision."""
        if not self.assessed or self.label is None:
            return Finding.NOT_ASSESSED
        if isinstance(self.label, list):
            return Finding.PRESENT if self.label else Finding.ABSENT
        return Finding.ABSENT if self.label == list(self.probabilities)[0] else Finding.PRESENT

    @property
    def decision(self) -> str | list[str] | None:
        """What a report or the worklist prints as the decision: the label, NOT_ASSESSED when no decision was
        given, None for a file that could not be read (its error says why)."""
        if self.failed:
            return None
        return self.label if self.assessed and self.label is not None else Finding.NOT_ASSESSED

    def to_json(self) -> dict:
        """The result as a JSON-ready dict: what `python -m model predict --json` prints and `POST /v1/predict`
        answers. The optional CAM fields appear only once set."""
        out = {f.name: getattr(self, f.name) for f in fields(self)
               if f.name not in OPTIONAL_FIELDS or getattr(self, f.name) is not None}
        return plain(out)
