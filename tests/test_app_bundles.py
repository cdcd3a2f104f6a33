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


def test_a_three_class_site_profile_is_checked_saved_and_used_in_the_app(tmp_path, monkeypatch):
    """Evaluation → Check the model on your own images, on the three-class bundle: accuracy and each class's recall,
    saved as a profile (vector scaling), then chosen in the sidebar: Evaluation shows it at its site, Diagnose
    decides with it."""
    import json

    from helpers.images import sample_zip

    monkeypatch.setenv("TORAX_SITES", str(tmp_path / "sites"))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=240)
    at.session_state["bundle"] = "pneumonia-type-kermany"
    at.switch_page("pages/evaluation.py").run()
    assert not at.exception, at.exception
    upload = sample_zip(per_class=6, classes=("NORMAL", "BACTERIAL", "VIRAL"))
    at.file_uploader(key="sc_zip").set_value(("three.zip", upload, "application/zip")).run()
    at.button(key="sc_run").click().run()
    assert not at.exception, at.exception
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Images scored"] == "18" and metrics["Accuracy (95% CI)"].count("–") == 1
    classes = next(d.value for d in at.dataframe if "Recall" in d.value.columns)
    assert list(classes.index) == ["NORMAL", "BACTERIAL", "VIRAL"]
    at.text_input(key="sc_name").input("clinic-3").run()
    at.button(key="sc_save").click().run()
    assert not at.exception, at.exception
    profile = json.loads((tmp_path / "sites" / "clinic-3.json").read_text())
    assert profile["task"] == "multiclass" and profile["sample"]["n"] == 18

    at.sidebar.selectbox(key="site").set_value("clinic-3").run()
    assert not at.exception, at.exception
    text = " ".join(str(e.value) for kind in ("caption", "subheader") for e in getattr(at, kind))
    assert "Site profile in use: **clinic-3**" in text and "At this site" in text
    table = next(d.value for d in at.dataframe if "With the profile (cross-validated)" in d.value.columns)
    assert table.loc["Accuracy", "As shipped"] == pytest.approx(profile["as_shipped"]["accuracy"])
    assert table.loc["Accuracy", "With the profile (cross-validated)"] == \
        pytest.approx(profile["validation"]["accuracy"])

    at.switch_page("pages/diagnose.py").run()
    data = cv2.imencode(".png", radiograph((256, 224), pneumonia=True, seed=3))[1].tobytes()
    at.file_uploader(key="dx_upload").set_value(("chest.png", data, "image/png")).run()
    assert not at.exception, at.exception
    assert any("Site profile in use: **clinic-3**" in str(c.value) for c in at.caption)
