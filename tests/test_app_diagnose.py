"""The Diagnose page as a reader drives it (Streamlit AppTest against app.py and the tiny real bundle): upload,
threshold slider and presets, Grad-CAM, language; and the report the page hands out.

Uploads are simulated with AppTest's own file_uploader support (`at.file_uploader(key=...).set_value(...)`), which
runs the uploader's on_change callback exactly as a browser upload does.
"""
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from helpers.images import png_bytes, radiograph

APP = str(Path(__file__).resolve().parent.parent / "app.py")


pytestmark = pytest.mark.usefixtures("app_on_tiny_bundles")


@pytest.fixture(scope="module")
def manifest(tiny_bundles):
    return json.loads((Path(tiny_bundles) / "pneumonia-kermany" / "manifest.json").read_text())


def open_app() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    assert not at.exception
    return at


def upload(at: AppTest, name: str, data: bytes) -> AppTest:
    at.file_uploader(key="dx_upload").set_value((name, data, "application/octet-stream")).run()
    assert not at.exception, at.exception
    return at


def seen(at: AppTest) -> str:
    """Everything a reader can read on the page."""
    parts = [e.value for kind in ("title", "markdown", "caption", "error", "warning", "info", "subheader")
             for e in getattr(at, kind)]
    parts += [f"{m.label}: {m.value}" for m in at.metric]
    parts += [c for image in at.get("image") for c in image.captions]
    parts += [w.label for kind in ("slider", "button", "toggle", "number_input") for w in getattr(at, kind)]
    return "\n".join(parts)


def decision(at: AppTest) -> str:
    """The big decision word."""
    return next(m.value for m in at.markdown if m.value.startswith("## "))


@pytest.fixture
def diagnosed():
    at = open_app()
    return upload(at, "chest.png", png_bytes(radiograph((256, 200), pneumonia=True, seed=3)))


def test_the_landing_page_asks_for_a_radiograph():
    at = open_app()
    assert at.title[0].value == "Diagnose"
    assert "Drag a radiograph" in seen(at)


def test_an_upload_shows_the_image_at_its_own_shape_with_the_decision_and_every_member(diagnosed, manifest):
    text = seen(diagnosed)
    assert "As decoded · 200 × 256 px" in text  # width × height of the upload, not the model's square input
    assert "Probability of PNEUMONIA" in text
    assert any(word in decision(diagnosed) for word in ("PNEUMONIA", "NORMAL"))
    assert "The models agree" in text or "The models disagree" in text
    for label in ("Sensitivity", "Specificity", "PPV", "NPV"):
        assert f"{label}: " in text
    # The members chart names every member of the bundle.
    chart = next(e for e in diagnosed.get("plotly_chart") if "mobilenetv2" in e.proto.spec)
    for member in manifest["members"]:
        assert member["name"] in chart.proto.spec


def test_moving_the_threshold_across_the_probability_flips_the_decision(diagnosed):
    diagnosed.slider(key="dx_threshold").set_value(0.0).run()
    assert "PNEUMONIA" in decision(diagnosed)
    assert "at or above threshold 0.000 (custom)" in seen(diagnosed)
    assert "Sensitivity: 100.0%" in seen(diagnosed)

    diagnosed.slider(key="dx_threshold").set_value(1.0).run()
    assert "NORMAL" in decision(diagnosed)
    assert "below threshold 1.000 (custom)" in seen(diagnosed)
    assert "Sensitivity: 0.0%" in seen(diagnosed)
    assert diagnosed.session_state["threshold"] == 1.0  # the shared key the Evaluation page reads


def test_operating_point_buttons_set_the_slider_to_the_manifest_threshold(diagnosed, manifest):
    for point in manifest["operating_points"]:
        diagnosed.slider(key="dx_threshold").set_value(0.5).run()
        diagnosed.button(key=f"op_{point['name']}").click().run()
        assert diagnosed.slider(key="dx_threshold").value == pytest.approx(point["threshold"], abs=1e-12)
        assert f"threshold {point['threshold']:.3f}" in seen(diagnosed)
        assert "(custom)" not in seen(diagnosed)


def test_prevalence_changes_ppv_but_not_sensitivity(diagnosed):
    diagnosed.slider(key="dx_threshold").set_value(0.0).run()
    before = {m.label: m.value for m in diagnosed.metric}
    diagnosed.number_input(key="dx_prevalence").set_value(10.0).run()
    after = {m.label: m.value for m in diagnosed.metric}
    assert after["Sensitivity"] == before["Sensitivity"]
    assert after["PPV"] == "10.0%"  # everything called positive: PPV is the prevalence itself
    assert diagnosed.session_state["prevalence"] == pytest.approx(0.10)


def test_grad_cam_overlay_follows_the_method_and_model_chosen(diagnosed):
    assert "Turn on “Show Grad-CAM”" in seen(diagnosed)
    diagnosed.toggle(key="dx_cam").set_value(True).run()
    assert not diagnosed.exception
    captions = [c for image in diagnosed.get("image") for c in image.captions]
    assert "Grad-CAM · Ensemble · PNEUMONIA" in captions
    assert diagnosed.get("image")[1].value  # the overlay was drawn

    diagnosed.button_group(key="dx_cam_method").set_value("scorecam").run()
    assert not diagnosed.exception
    assert "Score-CAM · Ensemble · PNEUMONIA" in seen(diagnosed)

    diagnosed.selectbox(key="dx_cam_member").set_value("cnn").run()
    diagnosed.slider(key="dx_cam_opacity").set_value(0.8).run()
    assert "Score-CAM · cnn · PNEUMONIA" in seen(diagnosed)
    assert "Overlay (PNG)" in [b.label for b in diagnosed.get("download_button")]


def test_sliders_and_selectors_reuse_the_prediction_and_the_cam(monkeypatch):
    from model.core.ensemble import Ensemble
    from model.core.explain import Explainer

    calls = {"predict": 0, "cams": 0}

    def counting(name, original):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return original(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(Ensemble, "predict", counting("predict", Ensemble.predict))
    monkeypatch.setattr(Explainer, "cams", counting("cams", Explainer.cams))
    at = upload(open_app(), "fresh.png", png_bytes(radiograph((210, 190), pneumonia=True, seed=123)))
    at.toggle(key="dx_cam").set_value(True).run()
    assert calls == {"predict": 1, "cams": 1}

    at.slider(key="dx_threshold").set_value(0.9).run()
    at.slider(key="dx_cam_opacity").set_value(0.7).run()
    at.selectbox(key="dx_cam_member").set_value("mobilenetv2").run()
    at.radio(key="lang").set_value("es").run()
    assert not at.exception
    assert calls == {"predict": 1, "cams": 1}  # once per image, and once per (image, bundle, method, class)

    at.button_group(key="dx_cam_method").set_value("gradcam++").run()
    assert calls == {"predict": 1, "cams": 2}


def test_switching_the_language_shows_the_page_in_spanish(diagnosed):
    diagnosed.radio(key="lang").set_value("es").run()
    assert not diagnosed.exception
    text = seen(diagnosed)
    assert diagnosed.title[0].value == "Diagnóstico"
    assert "Umbral de decisión" in text
    assert "Probabilidad de NEUMONÍA" in text
    assert "Sensibilidad: " in text and "Especificidad: " in text
    assert any(word in decision(diagnosed) for word in ("NEUMONÍA", "NORMAL"))
    assert "Probability of" not in text
    diagnosed.slider(key="dx_threshold").set_value(0.0).run()  # the language stays through later reruns
    assert "NEUMONÍA" in decision(diagnosed) and "igual o por encima del umbral 0.000" in seen(diagnosed)


def test_a_file_that_is_not_an_image_is_explained_and_the_page_keeps_working():
    at = upload(open_app(), "notes.png", b"these are notes, not pixels")
    assert at.error and "could not be analysed" in at.error[0].value
    upload(at, "chest.png", png_bytes(radiograph((240, 240), seed=5)))
    assert not at.error
    assert "Probability of PNEUMONIA" in seen(at)


def test_decoder_warnings_are_shown_prominently():
    colour = cv2.cvtColor(radiograph((200, 180), seed=7), cv2.COLOR_GRAY2RGB)
    colour[..., 0] = 255 - colour[..., 0]  # clearly not gray
    at = upload(open_app(), "colour.png", png_bytes(colour))
    assert at.warning and "colour image" in at.warning[0].value


def dicom(pixels: np.ndarray, **elements) -> bytes:
    """A small uncompressed 12-bit DICOM file with patient identifiers in it."""
    import io

    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def test_a_dicom_is_shown_windowed_with_its_non_identifying_details_only():
    pixels = radiograph((240, 200), pneumonia=True, seed=4).astype(np.uint16) * 16
    data = dicom(pixels, Modality="CR", ViewPosition="PA", WindowCenter=2048, WindowWidth=4096,
                 PatientName="Doe^Jane", PatientID="HOSP-123456", InstitutionName="Saint Example")
    at = upload(open_app(), "study.dcm", data)
    text = seen(at)
    assert "As decoded · 200 × 240 px" in text
    assert "**Format:** DICOM" in text and "**View:** PA" in text and "**Modality:** CR" in text
    assert "**Window (centre / width):** 2048 / 4096" in text
    assert "Probability of PNEUMONIA" in text
    for identifier in ("Doe", "Jane", "HOSP-123456", "Saint Example"):
        assert identifier not in text


def test_an_image_opened_from_the_worklist_is_shown_without_a_new_upload():
    at = AppTest.from_file(APP, default_timeout=120)
    at.session_state["current_upload"] = {"name": "from-list.png",
                                          "data": png_bytes(radiograph((300, 260), True, seed=9))}
    at.run()
    assert not at.exception
    text = seen(at)
    assert "Opened from the worklist: from-list.png" in text
    assert "As decoded · 260 × 300 px" in text
    assert "Probability of PNEUMONIA" in text


# --- the report the page hands out (model/outputs/downloads.py) -------------------------------------------------


def test_reports_carry_the_result_and_model_but_no_file_name(tiny_bundles):
    from model.core.analysis import analyse, decide
    from model.core.bundle import load_all
    from model.core.ensemble import Ensemble
    from model.outputs.downloads import report_html, report_json

    bundle = load_all(tiny_bundles)[0]["pneumonia-kermany"]
    result, _ = analyse(png_bytes(radiograph((120, 100), True, seed=2)), "Doe^Jane_<script>.png", Ensemble(bundle))
    result = decide(result, bundle, 0.0)
    data = json.loads(report_json(result, bundle))
    assert data["model"]["version"] == bundle.version
    assert data["result"]["decision"] == "PNEUMONIA" and data["result"]["threshold"] == 0.0
    assert set(data["result"]["members"]) == {m.name for m in bundle.members}
    assert "Not a diagnosis" in data["intended_use"] and data["generated"]
    assert data["image"] == {"format": "png", "width": 100, "height": 120, "bit_depth": 8, "frames": 1}

    overlay = cv2.imencode(".png", np.zeros((4, 4, 3), np.uint8))[1].tobytes()
    page = report_html(result, bundle, overlay, lang="es")
    assert "Doe" not in page and "Doe" not in json.dumps(data)
    assert "data:image/png;base64," in page and "Informe de Tórax" in page
    result.warnings = [{"code": "x", "message": "<b>bold</b> & more"}]
    assert "&lt;b&gt;bold&lt;/b&gt; &amp; more" in report_html(result, bundle)


def test_results_are_re_decided_for_every_task_without_inference():
    from dataclasses import replace
    from types import SimpleNamespace

    from model.core.analysis import decide
    from model.core.types import Result, Task
    from model.outputs.downloads import worklist_rows

    def bundle(task, classes, points):
        return SimpleNamespace(task=task, classes=classes, operating_points=points,
                               manifest={"default_operating_point": points[0]["name"] if points else None},
                               operating_point=lambda name=None: points[0])

    binary = bundle("binary", ["NORMAL", "PNEUMONIA"], [{"name": "balanced", "threshold": 0.6}])
    result = Result(probability=0.7, probabilities={"NORMAL": 0.3, "PNEUMONIA": 0.7}, spread=0.3,
                    error=None, warnings=[], file="a.png", bundle="b", task=Task.BINARY)
    assert decide(result, binary, 0.6).label == "PNEUMONIA"
    assert decide(result, binary, 0.6).operating_point == "balanced"
    low = decide(result, binary, 0.71)
    assert low.label == "NORMAL" and low.operating_point is None and low.probability == 0.7

    multiclass = bundle("multiclass", ["NORMAL", "BACTERIAL", "VIRAL"], [])
    three = Result(probability=None, probabilities={"NORMAL": 0.2, "BACTERIAL": 0.5, "VIRAL": 0.3}, spread=0.1,
                   error=None, warnings=[], file="b.png", bundle="b", task=Task.MULTICLASS)
    assert decide(three, multiclass, 0.99).label == "BACTERIAL"
    assert decide(three, multiclass).threshold is None

    per_class = {"name": "per-class", "thresholds": {"A": 0.4, "B": 0.6}}
    multilabel = bundle("multilabel", ["A", "B"], [per_class])
    two = Result(probability=None, probabilities={"A": 0.5, "B": 0.5}, spread=0.0, error=None,
                 warnings=[], file="c.png", bundle="b", task=Task.MULTILABEL)
    decided = decide(two, multilabel, per_class["thresholds"])
    assert decided.label == ["A"] and decided.operating_point == "per-class"

    rows = worklist_rows([decided, replace(two, probabilities=None, error={"code": "x", "message": "bad"})])
    assert rows[0]["decision"] == "A" and rows[0]["probability"] == 0.5
    assert rows[1]["error"] == "bad" and rows[1]["probability"] is None


def test_reruns_leave_the_keras_session_alone_and_the_loaded_models_out_of_the_collectors_walk(
        monkeypatch, point_app_at, tiny_bundles, tmp_path):
    """pages/lib/reruns.py: Streamlit would clear Keras' session after every script run, and collect over every
    object TensorFlow and the members hold. A rerun here must not clear the session, and once the members are
    loaded they are frozen out of the collections Streamlit still runs."""
    import gc
    import shutil

    import keras

    cleared = []
    monkeypatch.setattr(keras.backend, "clear_session", lambda *a, **k: cleared.append(a))
    fresh = point_app_at(shutil.copytree(tiny_bundles, tmp_path / "bundles"))  # members not loaded in this process
    gc.unfreeze()
    at = upload(open_app(), "chest.png", png_bytes(radiograph((256, 200), pneumonia=True, seed=3)))
    at.slider[0].set_value(0.4).run()
    assert decision(at) and not cleared
    from pages.lib.common import with_members
    bundle = with_members("pneumonia-kermany")
    assert Path(bundle.path).parent == fresh
    assert gc.get_freeze_count() > 0
    young = {id(o) for generation in range(3) for o in gc.get_objects(generation)}
    assert all(id(m.model) not in young for m in bundle.members)
