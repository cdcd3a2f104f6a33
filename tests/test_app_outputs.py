"""Diagnose's hand-offs (AppTest against app.py and the tiny real bundle): a PDF for every upload; for a DICOM, the
SR and Secondary Capture downloads, and "Send result to PACS" into a real Orthanc when one is configured."""
from pathlib import Path

import cv2
import pytest
from streamlit.testing.v1 import AppTest

from helpers.dicom import Orthanc, chest_dx, orthanc_available, to_bytes
from helpers.images import radiograph

APP = str(Path(__file__).resolve().parent.parent / "app.py")
pytestmark = pytest.mark.usefixtures("app_on_tiny_bundles")


@pytest.fixture
def no_pacs(monkeypatch):
    for name in ("TORAX_PACS_URL", "TORAX_PACS_USER", "TORAX_PACS_PASSWORD"):
        monkeypatch.delenv(name, raising=False)


def diagnose(name: str, data: bytes) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=180)
    at.run()
    at.file_uploader(key="dx_upload").set_value((name, data, "application/octet-stream")).run()
    assert not at.exception, at.exception
    return at


def downloads(at: AppTest) -> list[str]:
    return [b.label for b in at.get("download_button")]


def test_a_picture_gets_a_pdf_but_no_dicom_outputs(no_pacs):
    at = diagnose("chest.png", cv2.imencode(".png", radiograph((512, 448), seed=1))[1].tobytes())
    labels = downloads(at)
    assert "Report (PDF)" in labels
    assert not any("DICOM" in label for label in labels)
    assert "Send result to PACS" not in [b.label for b in at.button]


def test_a_dicom_gets_sr_and_sc_downloads_and_says_how_to_configure_a_pacs(no_pacs):
    at = diagnose("study.dcm", to_bytes(chest_dx(radiograph((512, 448), seed=2), patient_id="HOSP-4242")))
    labels = downloads(at)
    assert {"Report (PDF)", "Structured report (DICOM SR)",
            "Overlay for the PACS (DICOM Secondary Capture)"} <= set(labels)
    assert any("TORAX_PACS_URL" in c.value for c in at.caption)
    assert "HOSP-4242" not in "\n".join(m.value for m in at.markdown)


@pytest.mark.skipif(not orthanc_available(), reason="Orthanc with the DICOMweb plugin not installed")
def test_send_result_to_pacs_stores_both_objects_in_the_study(tmp_path, monkeypatch):
    server = Orthanc(tmp_path / "orthanc").start()
    try:
        monkeypatch.setenv("TORAX_PACS_URL", server.url)
        monkeypatch.setenv("TORAX_PACS_USER", server.user)
        monkeypatch.setenv("TORAX_PACS_PASSWORD", server.password)
        source = chest_dx(radiograph((512, 448), seed=3), patient_id="HOSP-5151")
        at = diagnose("study.dcm", to_bytes(source))
        at.button(key="dx_send_pacs").click().run()
        assert not at.exception, at.exception
        [done] = at.success
        assert f"127.0.0.1:{server.port}/dicom-web" in done.value and "HOSP-5151" not in done.value
        client = server.client()
        modalities = sorted(s["00080060"]["Value"][0] for s in client.search_for_series(source.StudyInstanceUID))
        assert modalities == ["OT", "SR"]  # the source itself was never sent: only the results
        for series in client.search_for_series(source.StudyInstanceUID):
            [instance] = client.search_for_instances(source.StudyInstanceUID, series["0020000E"]["Value"][0])
            assert instance["00100020"]["Value"][0] == "HOSP-5151"
    finally:
        server.stop()
