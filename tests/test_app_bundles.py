"""The committed bundles, served by the app: each loads (checksums verified) and the Diagnose page shows the right
widgets for its task — a threshold slider for the binary bundle, three class probabilities and a per-class CAM for
the multiclass one, per-finding probabilities for the multi-label one. Uses the repo's own model/bundles."""
from pathlib import Path

import cv2
import pytest
from streamlit.testing.v1 import AppTest

from helpers.images import radiograph

ROOT = Path(__file__).resolve().parent.parent
BUNDLES = ROOT / "model" / "bundles"


pytestmark = pytest.mark.usefixtures("app_on_committed_bundles")


def test_every_committed_bundle_loads_and_says_what_it_is():
    from model.core.bundle import load_all

    bundles, errors = load_all(BUNDLES)
    assert errors == {}
    assert {"pneumonia-kermany", "pneumonia-type-kermany", "nih14-findings"} <= set(bundles)
    assert bundles["pneumonia-type-kermany"].task == "multiclass"
    assert bundles["nih14-findings"].task == "multilabel" and bundles["nih14-findings"].manifest["research_use_only"]
    for bundle in bundles.values():
        assert bundle.manifest["evaluation"]["split"] == "internal-test"
        assert bundle.manifest["training"]["code_commit"] not in ("", "unknown")


@pytest.mark.parametrize("name,expected,slider", [
    ("pneumonia-kermany", ["PNEUMONIA"], True),
    ("pneumonia-type-kermany", ["NORMAL", "BACTERIAL", "VIRAL"], False),
    ("nih14-findings", ["Effusion", "Pneumonia", "Cardiomegaly"], False),
])
def test_diagnose_shows_the_widgets_of_each_task(name, expected, slider):
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180)
    at.session_state["bundle"] = name
    at.run()
    assert not at.exception
    data = cv2.imencode(".png", radiograph((256, 224), pneumonia=True, seed=3))[1].tobytes()
    at.file_uploader(key="dx_upload").set_value(("chest.png", data, "image/png")).run()
    assert not at.exception, at.exception
    text = " ".join(str(e.value) for kind in ("markdown", "caption", "subheader", "warning", "error")
                    for e in getattr(at, kind))
    text += " ".join(str(getattr(e, "proto", "")) for e in at.get("plotly_chart"))
    for cls in expected:
        assert cls in text, f"{cls} not shown for {name}"
    has_threshold_slider = any(s.key == "dx_threshold" or "threshold" in (s.label or "").lower() for s in at.slider)
    assert has_threshold_slider == slider


def test_the_model_card_names_each_members_initial_weights_and_their_licence():
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180)
    at.session_state["bundle"] = "pneumonia-type-kermany"
    at.switch_page("pages/model-card.py")
    at.run()
    assert not at.exception
    versions = next(tb.value for tb in at.table if "Initial weights" in tb.value.columns)
    started = dict(zip(versions["Model"], versions["Initial weights"]))
    assert "npm nsfwjs@4.3.0, licence MIT" in started["mobilenetv2_imagenet"].replace("\\", "").replace("\u200b", "")
    assert started["resnet"] == started["cnn"] == "random (seed 42)"
