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
                          "threshold", "operating_point", "label", "site", "warnings", "error", "meta"]
    assert data["task"] == "binary" and type(data["task"]) is str and data["probability"] == 0.75
    assert data["meta"] == {"width": 3, "size": [1, 2], "ratio": None}
    json.dumps(data, allow_nan=False)
    result.cam = "gradcam"
    assert result.to_json()["cam"] == "gradcam" and "overlay_png_base64" not in result.to_json()
    assert not result.failed and Result(None, "b", Task.BINARY, error={"code": "x", "message": "m"}).failed
