"""model/core/types.py: the enums every layer shares and the one result object, whose JSON the CLI, the API, the
worklist CSV and the downloads all print."""
import json
import math

import numpy as np
import pytest

from model.core.types import CamMethod, Result, Task, look_up_option


def test_look_up_option_accepts_values_names_and_members_and_lists_the_choices_otherwise():
    assert look_up_option("gradcam++", CamMethod) is CamMethod.GRADCAM_PLUS_PLUS
    assert look_up_option("SCORECAM", CamMethod) is CamMethod.SCORECAM
    assert look_up_option(Task.BINARY, Task) is Task.BINARY
    with pytest.raises(ValueError, match=r"Unknown CamMethod 'lime'; choose one of: 'gradcam', 'gradcam\+\+', "
                                         r"'scorecam'\."):
        look_up_option("lime", CamMethod)


def test_enums_are_their_strings():
    assert Task.BINARY == "binary" and f"{Task.MULTILABEL}" == "multilabel"
    assert [m.label for m in CamMethod] == ["Grad-CAM", "Grad-CAM++", "Score-CAM"]


def test_result_json_has_the_fixed_keys_plain_values_and_optional_cam_fields_only_when_set():
    result = Result("a.png", "pneumonia-kermany", Task.BINARY, probability=np.float32(0.75),
                    probabilities={"NORMAL": 0.25, "PNEUMONIA": 0.75}, members={"cnn": 0.7}, spread=0.1,
                    threshold=0.5, operating_point="balanced", label="PNEUMONIA",
                    meta={"width": np.int64(3), "size": np.array([1, 2]), "ratio": math.nan})
    data = result.to_json()
    assert list(data) == ["file", "bundle", "task", "probability", "probabilities", "members", "spread",
                          "threshold", "operating_point", "label", "site", "warnings", "error", "meta",
                          "guard_scores"]
    assert data["task"] == "binary" and type(data["task"]) is str and data["probability"] == 0.75
    assert data["meta"] == {"width": 3, "size": [1, 2], "ratio": None}
    json.dumps(data, allow_nan=False)
    result.cam = "gradcam"
    assert result.to_json()["cam"] == "gradcam" and "overlay_png_base64" not in result.to_json()
    assert not result.failed and Result(None, "b", Task.BINARY, error={"code": "x", "message": "m"}).failed


def test_the_public_face_names_what_a_newcomer_needs_and_loads_lazily():
    import subprocess
    import sys

    code = ("import sys, model.io, model; assert 'tensorflow' not in sys.modules, 'model.io pulled in TensorFlow'; "
            "from model import Result, Task, WarningCode; assert 'tensorflow' not in sys.modules; "
            "import model.core.types as T; assert model.Result is T.Result and model.Task is T.Task; "
            "assert {'analyse', 'analyse_batch', 'load_chosen', 'Result', 'Task'} <= set(model.__all__)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr


def test_not_assessed_is_one_finding_and_withholds_the_decision():
    from model.core.types import NOT_ASSESSED, Finding, Result, Task, WarningCode

    base = Result("x.png", "b", Task.BINARY, probability=0.9, probabilities={"NORMAL": 0.1, "PNEUMONIA": 0.9},
                  label="PNEUMONIA")
    assert base.finding == Finding.PRESENT and base.decision == "PNEUMONIA"
    flagged = Result(**{**base.__dict__, "label": None,
                        "warnings": [{"code": WarningCode.NOT_CHEST_XRAY, "message": "not a chest X-ray"}]})
    assert NOT_ASSESSED is Finding.NOT_ASSESSED
    assert flagged.finding == NOT_ASSESSED and flagged.decision == "not_assessed" and not flagged.assessed
    failed = Result("x.png", "b", Task.BINARY, error={"code": "unreadable_image", "message": "…"})
    assert failed.finding == NOT_ASSESSED and failed.decision is None
    assert json.loads(json.dumps(flagged.to_json()))["warnings"][0]["code"] == "not_chest_xray"
