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
_OPTIONAL = ("cam", "cam_class", "overlay_png_base64")


@dataclass
class Result:
    """One upload's analysis. `error` ({"code", "message"}) is set instead of the prediction fields when the file
    could not be read; a result never carries the image itself or any patient identifier (`meta` is the decoder's
    non-identifying facts: format, size, bit depth...)."""
    file: str | None
    bundle: str
    task: Task
    probability: float | None = None               # binary: the positive (last) class's calibrated probability
    probabilities: dict[str, float] | None = None  # calibrated ensemble probability per class
    members: dict[str, Any] | None = None          # binary: {member: p(positive)}; else {member: {class: p}}
    spread: float | None = None                    # member disagreement (largest range of member probabilities)
    threshold: float | dict[str, float] | None = None  # binary: a number; multilabel: per class; multiclass: None
    operating_point: str | None = None             # the operating point the threshold is, or None (custom)
    label: str | list[str] | None = None           # the decision; multilabel: the classes found. None when the
                                                   # upload is not a chest radiograph (not assessed)
    site: str | None = None                        # the site profile whose calibration and thresholds were used
    warnings: list[dict] = field(default_factory=list)  # [{"code", "message"}] from the decoder and the guard
    error: dict | None = None
    meta: dict | None = None
    cam: str | None = None                 # CLI: the overlay file written; API: the CAM method of the overlay
    cam_class: str | None = None           # API: the class the overlay explains
    overlay_png_base64: str | None = None  # API: the overlay, as a base64 PNG

    @property
    def failed(self) -> bool:
        return self.error is not None

    def to_json(self) -> dict:
        """The result as a JSON-ready dict: what `python -m model predict --json` prints and `POST /v1/predict`
        answers. The optional CAM fields appear only once set."""
        out = {f.name: getattr(self, f.name) for f in fields(self)
               if f.name not in _OPTIONAL or getattr(self, f.name) is not None}
        return plain(out)
