"""Results a PACS can file, and the round trip with a real one: a throwaway Orthanc (DICOMweb plugin) on a loopback
port, `python -m model pacs watch --once` run as a reader would run it, and the SR and Secondary Capture read back
from the PACS. Skips without /usr/sbin/Orthanc (apt-get install orthanc orthanc-dicomweb)."""
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest

from model.core.types import Result, Task

from synthetic import phantom
from synthetic_dicom import Orthanc, chest_dx, free_port, orthanc_available, to_bytes
from test_guard import chest_phantom  # drawn from anatomy: the input check takes it for a chest X-ray

ROOT = Path(__file__).resolve().parent.parent
PATIENT_ID, PATIENT_NAME = "HOSP-778899", "Doe^Jane"
needs_orthanc = pytest.mark.skipif(not orthanc_available(), reason="Orthanc with the DICOMweb plugin not installed")


@pytest.fixture
def orthanc(tmp_path):
    server = Orthanc(tmp_path / "orthanc").start()
    yield server
    server.stop()


def torax(args, tiny_bundles, state: Path, password: str | None, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "TORAX_BUNDLES": str(tiny_bundles), "TORAX_STATE": str(state),
           "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("TORAX_PACS_PASSWORD", None)
    if password is not None:
        env["TORAX_PACS_PASSWORD"] = password
    return subprocess.run([sys.executable, "-m", "model", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def watch_once(server: Orthanc, tiny_bundles, state: Path, password=None, user=None) -> subprocess.CompletedProcess:
    return torax(["pacs", "watch", "--url", server.url, "--user", user or server.user, "--once"], tiny_bundles,
                 state, server.password if password is None else password)


def json_lines(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def study_instances(server: Orthanc, study_uid: str) -> dict[str, list[str]]:
    """{modality: [SOP Instance UID, ...]} of a study, as QIDO-RS lists them."""
    client, out = server.client(), {}
    for series in client.search_for_series(study_uid):
        modality = series["00080060"]["Value"][0]
        for instance in client.search_for_instances(study_uid, series["0020000E"]["Value"][0]):
            out.setdefault(modality, []).append(instance["00080018"]["Value"][0])
    return out


def retrieve(server: Orthanc, study_uid: str, sop_uid: str) -> pydicom.Dataset:
    client = server.client()
    found = client.search_for_instances(study_uid, search_filters={"SOPInstanceUID": sop_uid})
    return client.retrieve_instance(study_uid, found[0]["0020000E"]["Value"][0], sop_uid)


# --- the round trip -----------------------------------------------------------------------------------------------
@needs_orthanc
def test_watch_files_an_sr_and_an_overlay_in_the_source_study_once(orthanc, tiny_bundles, tmp_path):
    from model.outputs.dicom_results import read_sr

    source = chest_dx(chest_phantom(seed=5), patient_id=PATIENT_ID, patient_name=PATIENT_NAME)
    orthanc.store(source)
    state = tmp_path / "state"

    run = watch_once(orthanc, tiny_bundles, state)
    assert run.returncode == 0, run.stderr
    [line] = json_lines(run.stdout)
    assert line["source_sop_instance_uid"] == source.SOPInstanceUID and line["error"] is None
    assert "not_chest_xray" not in [w["code"] for w in line["warnings"]]
    stored = line["stored"]
    assert stored["study_instance_uid"] == source.StudyInstanceUID

    # Both outputs are in the same study, each in a new series, under the same patient.
    found = study_instances(orthanc, source.StudyInstanceUID)
    assert found["DX"] == [source.SOPInstanceUID]
    assert found["SR"] == [stored["sr_sop_instance_uid"]] and found["OT"] == [stored["sc_sop_instance_uid"]]
    sr = retrieve(orthanc, source.StudyInstanceUID, stored["sr_sop_instance_uid"])
    sc = retrieve(orthanc, source.StudyInstanceUID, stored["sc_sop_instance_uid"])
    for ds in (sr, sc):
        assert ds.PatientID == PATIENT_ID and str(ds.PatientName) == PATIENT_NAME
        assert ds.StudyInstanceUID == source.StudyInstanceUID and ds.SeriesInstanceUID != source.SeriesInstanceUID
    assert sc.BurnedInAnnotation == "YES" and sc.pixel_array.ndim == 3

    said = read_sr(sr)
    assert said["source_sop_instance_uid"] == source.SOPInstanceUID
    version = json.loads((Path(tiny_bundles) / "pneumonia-kermany" / "manifest.json").read_text())["version"]
    assert said["algorithm"] == {"name": "pneumonia-kermany", "version": version}
    assert said["finding"] == ("present" if line["label"] == "PNEUMONIA" else "absent")
    assert said["threshold"] == pytest.approx(line["threshold"], abs=1e-6)

    # The SR's probability is predict's, for the same file.
    file = tmp_path / "same.dcm"
    file.write_bytes(to_bytes(source))
    predicted = json_lines(torax(["predict", str(file), "--json"], tiny_bundles, state, None).stdout)[0]
    assert abs(said["probability"] - predicted["probability"]) < 1e-3
    assert line["probability"] == pytest.approx(predicted["probability"], abs=1e-6)

    # Patient attributes stay out of what watch prints.
    for identifier in (PATIENT_ID, "Doe", "Jane"):
        assert identifier not in run.stdout and identifier not in run.stderr

    # A second run (a restart: a new process, the state file on disk) finds nothing new and stores nothing.
    again = watch_once(orthanc, tiny_bundles, state)
    assert again.returncode == 0, again.stderr
    assert json_lines(again.stdout) == []
    assert study_instances(orthanc, source.StudyInstanceUID) == found
    assert list(state.glob("pacs-127.0.0.1-*.json"))


@needs_orthanc
def test_a_radiograph_that_is_not_a_chest_is_filed_as_not_assessed(orthanc, tiny_bundles, tmp_path):
    from model.outputs.dicom_results import read_sr

    hand = chest_dx(chest_phantom(seed=6), body_part="HAND")
    orthanc.store(hand)
    run = watch_once(orthanc, tiny_bundles, tmp_path / "state")
    assert run.returncode == 0, run.stderr
    [line] = json_lines(run.stdout)
    assert "not_chest_xray" in [w["code"] for w in line["warnings"]]
    said = read_sr(retrieve(orthanc, hand.StudyInstanceUID, line["stored"]["sr_sop_instance_uid"]))
    assert said["finding"] == "not_assessed"
    assert any(w.startswith("not_chest_xray:") for w in said["warnings"])


@needs_orthanc
def test_a_wrong_password_is_reported_plainly(orthanc, tiny_bundles, tmp_path):
    run = watch_once(orthanc, tiny_bundles, tmp_path / "state", password="wrong")
    assert run.returncode == 4
    assert "refused the user name or password" in run.stderr and "Traceback" not in run.stderr
    assert "wrong" not in run.stderr


def test_a_pacs_that_is_down_is_retried_then_given_up_on(tiny_bundles, tmp_path):
    url = f"http://127.0.0.1:{free_port()}/dicom-web"
    run = torax(["pacs", "watch", "--url", url, "--once"], tiny_bundles, tmp_path / "state", "pw")
    assert run.returncode == 3
    assert "is not answering" in run.stderr and "4 tries" in run.stderr and "Traceback" not in run.stderr
    assert run.stderr.count("trying again in") == 3


@needs_orthanc
def test_a_site_that_cannot_be_used_is_a_usage_error(orthanc, tiny_bundles, tmp_path):
    run = torax(["pacs", "watch", "--url", orthanc.url, "--user", orthanc.user, "--once", "--site", "nowhere"],
                tiny_bundles, tmp_path / "state", orthanc.password)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert "Site profile 'nowhere' could not be used" in run.stderr


# --- the state file --------------------------------------------------------------------------------------------------
def test_state_remembers_instances_and_outputs_by_digest_only(tmp_path):
    from model.channels.pacs import State, state_path

    os.environ["TORAX_STATE"] = str(tmp_path)
    try:
        path = state_path("http://pacs.example:8042/dicom-web")
    finally:
        del os.environ["TORAX_STATE"]
    assert path == tmp_path / "pacs-pacs.example-8042.json"
    state = State(path)
    state.add("1.2.3", "1.2.3.4", {"sr_sop_instance_uid": "1.2.3.5", "study_instance_uid": "1.2"})
    again = State(path)
    assert again.has("1.2.3.4") and again.has("1.2.3.5") and not again.has("1.2")
    assert again.series_complete("1.2.3", 1) and not again.series_complete("1.2.3", 2)
    assert "1.2.3.4" not in path.read_text()
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left behind


# --- the DICOM outputs without a PACS ---------------------------------------------------------------------------------
class FakeBundle:
    name, version, title, task, classes = "pneumonia-kermany", "2026-01-01-test", "Pneumonia", "binary", \
        ["NORMAL", "PNEUMONIA"]
    operating_points = [{"name": "balanced", "threshold": 0.75, "val_sensitivity": 0.96, "val_specificity": 0.98}]
    manifest = {}

    def read_report(self, name):
        return None


def result(**changes) -> Result:
    base = {"file": None, "bundle": "pneumonia-kermany", "task": Task.BINARY, "probability": 0.8125,
            "probabilities": {"NORMAL": 0.1875, "PNEUMONIA": 0.8125}, "members": {"cnn": 0.8}, "spread": 0.02,
            "threshold": 0.75, "operating_point": "balanced", "label": "PNEUMONIA", "warnings": [], "error": None,
            "meta": {"format": "dicom"}}
    return Result(**{**base, **changes})


def test_the_sr_holds_finding_numbers_algorithm_warnings_and_source():
    from model.outputs.dicom_results import build_outputs, dicom_bytes, read_sr

    source = chest_dx(phantom((200, 160), seed=1), patient_id=PATIENT_ID)
    warning = {"code": "outside_intended_population", "message": "This looks like an adult's chest X-ray."}
    out = build_outputs(to_bytes(source), result(warnings=[warning], site="north"), FakeBundle(),
                        np.full((200, 160, 3), 90, np.uint8))
    sr = pydicom.dcmread(io.BytesIO(dicom_bytes(out.sr)))
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
    assert read_sr(sr) == {"finding": "present", "probability": 0.8125, "threshold": 0.75,
                           "operating_point": "balanced", "site": "north",
                           "warnings": ["outside_intended_population: This looks like an adult's chest X-ray."],
                           "algorithm": {"name": "pneumonia-kermany", "version": "2026-01-01-test"},
                           "source_sop_instance_uid": source.SOPInstanceUID}
    assert sr.PatientID == PATIENT_ID and sr.StudyInstanceUID == source.StudyInstanceUID
    assert sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0] \
        .ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID


def test_not_assessed_whenever_the_guard_says_not_a_chest_xray_even_with_a_label():
    assert result().finding == "present" and result(label="NORMAL").finding == "absent"
    assert result(warnings=[{"code": "not_chest_xray", "message": "…"}]).finding == "not_assessed"
    assert result(error={"code": "x", "message": "y"}, probabilities=None, label=None).finding == "not_assessed"
    assert result(site=None).finding == "present"  # a site field may be there, or be None


def test_the_secondary_capture_burns_in_the_disclaimer_and_copies_the_patient():
    from model.outputs.dicom_results import SC_MAX_SIDE, build_outputs, dicom_bytes

    source = chest_dx(phantom((1400, 1200), seed=2), patient_id=PATIENT_ID, patient_name=PATIENT_NAME)
    out = build_outputs(to_bytes(source), result(), FakeBundle(), np.zeros((1400, 1200, 3), np.uint8))
    sc = pydicom.dcmread(io.BytesIO(dicom_bytes(out.sc)))
    assert sc.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7" and sc.BurnedInAnnotation == "YES"
    assert sc.PatientID == PATIENT_ID and str(sc.PatientName) == PATIENT_NAME
    assert sc.StudyInstanceUID == source.StudyInstanceUID and sc.Modality == "OT"
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    pixels = sc.pixel_array
    assert max(pixels.shape[:2]) <= SC_MAX_SIDE + 200
    band = pixels.shape[1] // 22
    assert pixels[:band].max() == 255 and pixels[band + 5:-band - 5].max() == 0  # white text only in the bands


def test_a_file_that_is_not_dicom_gets_no_dicom_outputs():
    from model.outputs.dicom_results import NotDicom, build_outputs

    with pytest.raises(NotDicom) as caught:
        build_outputs(b"\x89PNG\r\n\x1a\nrest", result(), FakeBundle(), None)
    assert "DICOM" in str(caught.value)
