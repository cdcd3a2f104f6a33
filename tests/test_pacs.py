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

from helpers.cli import run_cli
from helpers.dicom import Orthanc, StubDicomWeb, chest_dx, orthanc_available, tls_files, to_bytes
from helpers.images import radiograph, toy_chest  # radiograph: the input check takes it for a chest X-ray
from helpers.servers import free_port

ROOT = Path(__file__).resolve().parent.parent
PATIENT_ID, PATIENT_NAME = "HOSP-778899", "Doe^Jane"
needs_orthanc = pytest.mark.skipif(not orthanc_available(), reason="Orthanc with the DICOMweb plugin not installed")


@pytest.fixture(scope="module")
def orthanc_server(tmp_path_factory):
    server = Orthanc(tmp_path_factory.mktemp("orthanc")).start()  # one per module: it takes seconds to start
    yield server
    server.stop()


@pytest.fixture
def orthanc(orthanc_server):
    """The module's Orthanc, emptied for this test."""
    orthanc_server.clear()
    return orthanc_server


def torax(args, tiny_bundles, state: Path, password: str | None, timeout: int = 900, process: bool = False):
    """`python -m model ARGS` with the tiny bundles, a state folder and the PACS password (None: none set), in this
    process (run_cli); `process=True` runs a real one, for what only a process shows (libraries writing to fd 2)."""
    env = {"TORAX_BUNDLES": str(tiny_bundles), "TORAX_STATE": str(state), "TF_CPP_MIN_LOG_LEVEL": "3"}
    if process:
        env = {**{k: v for k, v in os.environ.items() if k != "TORAX_PACS_PASSWORD"}, **env}
        if password is not None:
            env["TORAX_PACS_PASSWORD"] = password
        return subprocess.run([sys.executable, "-m", "model", *args], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=timeout)
    saved = os.environ.pop("TORAX_PACS_PASSWORD", None)
    try:
        return run_cli(args, env={**env, **({"TORAX_PACS_PASSWORD": password} if password is not None else {})})
    finally:
        os.environ.pop("TORAX_PACS_PASSWORD", None)
        if saved is not None:
            os.environ["TORAX_PACS_PASSWORD"] = saved


def watch_once(server: Orthanc, tiny_bundles, state: Path, password=None, user=None, process=False):
    return torax(["pacs", "watch", "--url", server.url, "--user", user or server.user, "--once"], tiny_bundles,
                 state, server.password if password is None else password, process=process)


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

    source = chest_dx(radiograph((512, 448), seed=5), patient_id=PATIENT_ID, patient_name=PATIENT_NAME)
    orthanc.store(source)
    state = tmp_path / "state"

    run = watch_once(orthanc, tiny_bundles, state)
    assert run.returncode == 0, run.stderr
    [line] = json_lines(run.stdout)
    assert line["source_sop_instance_uid"] == source.SOPInstanceUID and line["error"] is None
    assert "not_chest_xray" not in [w["code"] for w in line["warnings"]]
    stored = line["stored"]
    assert stored["study_instance_uid"] == source.StudyInstanceUID
    assert line["record"]["state"] == "stored"  # kept in the record, by its UIDs (tests/test_store.py)
    from model.store.db import Store

    kept = Store.open(f"sqlite:///{state / 'records.sqlite3'}")
    (row,) = kept.results()
    assert (row["id"], row["channel"], row["sop_instance_uid"]) == \
        (line["record"]["id"], "pacs", source.SOPInstanceUID)
    kept.close()

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
    assert (state / "pacs.json").exists()


@needs_orthanc
def test_a_radiograph_that_is_not_a_chest_is_filed_as_not_assessed(orthanc, tiny_bundles, tmp_path):
    from model.outputs.dicom_results import read_sr

    hand = chest_dx(radiograph((512, 448), seed=6), body_part="HAND")
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
def test_state_remembers_instances_and_outputs_by_digest_only(tmp_path, monkeypatch):
    from model.channels.pacs import State, state_path

    monkeypatch.setenv("TORAX_STATE", str(tmp_path))
    path = state_path()
    monkeypatch.undo()
    assert path == tmp_path / "pacs.json"
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

    source = chest_dx(toy_chest((200, 160), seed=1), patient_id=PATIENT_ID)
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

    source = chest_dx(toy_chest((1400, 1200), seed=2), patient_id=PATIENT_ID, patient_name=PATIENT_NAME)
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


# --- issue 23: safe unattended ---------------------------------------------------------------------------------------
SMITH = "SMITH JOHN"  # no caret: highdicom warns, quoting it


@pytest.fixture(scope="module")
def models(tiny_bundles):
    """The tiny bundle's ensemble, explainer and guard, loaded once for the in-process watch tests."""
    from model.core.bundle import load_bundle
    from model.core.ensemble import Ensemble
    from model.core.explain import Explainer
    from model.core.guard import for_bundle

    bundle = load_bundle(Path(tiny_bundles) / "pneumonia-kermany")
    return Ensemble(bundle), Explainer(bundle), for_bundle(bundle)


def watch_here(pacs, models, state=None, guard=None, **kwargs) -> list[dict]:
    """model.channels.pacs.watch --once in this process; the results it emitted."""
    from model.channels.pacs import watch

    ensemble, explainer, bundle_guard = models
    out = []
    watch(pacs, ensemble, explainer, guard or bundle_guard, once=True, state=state,
          emit=lambda filed: out.append(filed.to_json()), **kwargs)
    return out


def pacs_for(server, url=None, **kwargs):
    from model.channels.pacs import Pacs

    return Pacs(url or server.url, server.user, server.password, sleep=lambda s: None, **kwargs)


@needs_orthanc
def test_a_bad_instance_never_stops_the_watcher_and_its_name_never_shows(orthanc, tiny_bundles, tmp_path):
    # Issue 23 items 1 and 3: PatientSex U, malformed dates and a caret-less name, as real archives hold them.
    from model.outputs.dicom_results import read_sr

    bad = chest_dx(radiograph((512, 448), seed=7), patient_id="HOSP-1", patient_name=SMITH)
    bad.PatientSex, bad.PatientBirthDate, bad.StudyDate, bad.StudyTime = "U", "2020-01-01", "bad", "25xx"
    good = chest_dx(radiograph((512, 448), seed=8), patient_id="HOSP-2")
    orthanc.store(bad, good)
    state = tmp_path / "state"
    # the first run in a real process: a library writing the name to fd 2 would show there
    first, second = watch_once(orthanc, tiny_bundles, state, process=True), watch_once(orthanc, tiny_bundles, state)
    for run in (first, second):
        assert run.returncode == 0, run.stderr
        assert "Traceback" not in run.stderr
        for part in SMITH.split():
            assert part not in run.stdout + run.stderr
    assert json_lines(second.stdout) == []
    filed = {line["source_sop_instance_uid"]: line["stored"] for line in json_lines(first.stdout)}
    assert set(filed) == {bad.SOPInstanceUID, good.SOPInstanceUID}
    sr = retrieve(orthanc, bad.StudyInstanceUID, filed[bad.SOPInstanceUID]["sr_sop_instance_uid"])
    assert read_sr(sr)["source_sop_instance_uid"] == bad.SOPInstanceUID
    assert sr.PatientSex == "" and sr.PatientBirthDate == "" and sr.StudyDate == "" and sr.PatientID == "HOSP-1"


def test_library_warnings_never_carry_the_patients_name(caplog, capfd):
    # Issue 23 item 3, without a PACS: building the outputs warns about the name in highdicom and pydicom.
    import logging
    import warnings

    from model.outputs.dicom_results import build_outputs

    source = chest_dx(toy_chest((120, 100), seed=3), patient_name=SMITH)
    source.PatientBirthDate = "2020-01-01"
    caplog.set_level(logging.DEBUG)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = build_outputs(to_bytes(source), result(), FakeBundle(), np.zeros((120, 100, 3), np.uint8))
    assert str(out.sr.PatientName) == SMITH  # filed as the archive holds it
    said = " ".join(str(w.message) for w in caught) + caplog.text + "".join(capfd.readouterr())
    assert "SMITH" not in said and "2020-01-01" not in said


def test_values_highdicom_refuses_are_omitted_from_the_outputs():
    from model.outputs.dicom_results import build_outputs

    source = chest_dx(toy_chest((120, 100), seed=4))
    source.PatientSex, source.PatientBirthDate, source.StudyDate, source.StudyTime = "U", "1.1.2020", "2024", "9999"
    out = build_outputs(to_bytes(source), result(), FakeBundle(), np.zeros((120, 100, 3), np.uint8))
    for ds in (out.sr, out.sc):
        assert (ds.PatientSex, ds.PatientBirthDate, ds.StudyDate, ds.StudyTime) == ("", "", "", "")
    kept = chest_dx(toy_chest((120, 100), seed=4))
    out = build_outputs(to_bytes(kept), result(), FakeBundle(), None)
    assert (out.sr.PatientSex, out.sr.PatientBirthDate, out.sr.StudyDate) == ("F", "20200101", "20240102")


@needs_orthanc
def test_failures_are_recorded_retried_with_back_off_then_parked_and_listed(orthanc, models, tiny_bundles,
                                                                             tmp_path):
    # Issue 23 item 1: a 404 on retrieve, a WADO body that is not DICOM, a 409 on STOW; the good instance is filed.
    from model.channels.pacs import FAILURE_BACKOFF_S, MAX_INSTANCE_TRIES, Pacs, State

    good, not_dicom, refused = (chest_dx(radiograph((256, 224), seed=s)) for s in (9, 10, 11))
    orthanc.store(good, not_dicom, refused)
    gone = "1.2.826.0.1.3680043.8.498.404"

    class Troubled(Pacs):
        fetched: list = []

        def new_instances(self, done, now=None):
            yield from super().new_instances(done, now)
            if not done.has(gone) and done.due(gone, now):
                yield good.StudyInstanceUID, good.SeriesInstanceUID, gone

        def fetch(self, study_uid, series_uid, sop_uid):
            self.fetched.append(sop_uid)
            return b"<html>Login</html>" if sop_uid == not_dicom.SOPInstanceUID else \
                super().fetch(study_uid, series_uid, sop_uid)

        def store(self, outputs):
            if outputs.sr.StudyInstanceUID == refused.StudyInstanceUID:  # a study the PACS will not take it into
                self.call("store", self.client.store_instances, outputs.datasets(), study_instance_uid="1.2.3.4")
            return super().store(outputs)

    pacs = Troubled(orthanc.url, orthanc.user, orthanc.password, sleep=lambda s: None)
    state, now, reported = State(tmp_path / "pacs.json"), [1000.0], []
    run = lambda: watch_here(pacs, models, state, clock=lambda: now[0], report=reported.append)  # noqa: E731

    assert [r["source_sop_instance_uid"] for r in run()] == [good.SOPInstanceUID]
    failures = {e["sop_instance_uid"]: e for e in State(state.path).failures.values()}
    assert set(failures) == {gone, not_dicom.SOPInstanceUID, refused.SOPInstanceUID}
    assert "HTTP 404" in failures[gone]["reason"] and "HTTP 409" in failures[refused.SOPInstanceUID]["reason"]
    assert "not a DICOM" in failures[not_dicom.SOPInstanceUID]["reason"]
    assert all(e["tries"] == 1 and not e.get("parked") for e in failures.values())

    fetched = len(pacs.fetched)
    now[0] += FAILURE_BACKOFF_S - 1  # not yet due: nothing is asked for
    assert run() == [] and len(pacs.fetched) == fetched
    for tries in range(2, MAX_INSTANCE_TRIES + 1):
        now[0] += FAILURE_BACKOFF_S * 4 ** (tries - 1)
        assert run() == []
        assert {e["tries"] for e in State(state.path).failures.values()} == {tries}
    assert all(e["parked"] for e in State(state.path).failures.values())
    fetched = len(pacs.fetched)
    now[0] += 10 ** 7  # parked for good
    assert run() == [] and len(pacs.fetched) == fetched
    assert len(reported) == 3 * MAX_INSTANCE_TRIES

    listed = torax(["pacs", "watch", "--failed"], tiny_bundles, tmp_path, None)
    assert listed.returncode == 0, listed.stderr
    lines = json_lines(listed.stdout)
    assert {line["sop_instance_uid"] for line in lines} == set(failures)
    assert all(line["parked"] and line["tries"] == MAX_INSTANCE_TRIES and line["reason"] for line in lines)


@needs_orthanc
def test_an_adult_radiograph_is_filed_not_assessed_unless_allowed(orthanc, models):
    # Issue 23 item 2: an unattended channel files no diagnosis outside the intended population.
    from model.outputs.dicom_results import FilingPolicy, read_sr

    adult = {"code": "outside_intended_population", "message": "This looks like an adult's chest X-ray."}
    guard = lambda decoded: [adult]  # noqa: E731 - the input check's verdict, without drawing an adult
    first, second = chest_dx(radiograph((256, 224), seed=12)), chest_dx(radiograph((256, 224), seed=13))
    orthanc.store(first)
    [withheld] = watch_here(pacs_for(orthanc), models, guard=guard)
    assert withheld["label"] is None and withheld["probability"] is not None  # kept for reference, not filed
    stored = retrieve(orthanc, first.StudyInstanceUID, withheld["stored"]["sr_sop_instance_uid"])
    assert read_sr(stored)["finding"] == "not_assessed"
    notes = [i.TextValue for i in stored.ContentSequence if i.ValueType == "TEXT"]
    assert "Not assessed: outside the intended population" in notes

    orthanc.store(second)
    [allowed] = watch_here(pacs_for(orthanc), models, guard=guard,
                           policy=FilingPolicy(allow_outside_population=True))
    said = read_sr(retrieve(orthanc, second.StudyInstanceUID, allowed["stored"]["sr_sop_instance_uid"]))
    assert allowed["label"] in ("NORMAL", "PNEUMONIA")
    assert said["finding"] == ("present" if allowed["label"] == "PNEUMONIA" else "absent")
    assert any(w.startswith("outside_intended_population:") for w in said["warnings"])


def test_the_sr_says_why_it_was_not_assessed():
    from model.outputs.dicom_results import FilingPolicy, build_outputs

    adult = [{"code": "outside_intended_population", "message": "adult"}]
    filed = FilingPolicy().apply(result(warnings=adult))
    assert filed.finding == "not_assessed" and FilingPolicy(True).apply(result(warnings=adult)).finding == "present"
    assert FilingPolicy().apply(result()) == result()
    sr = build_outputs(to_bytes(chest_dx(toy_chest((64, 64), seed=1))), filed, FakeBundle(), None).sr
    notes = [i.TextValue for i in sr.ContentSequence if i.ValueType == "TEXT"]
    assert "Not assessed: outside the intended population" in notes


@needs_orthanc
def test_instances_over_the_size_cap_are_refused_and_recorded(orthanc, models, tmp_path):
    # Issue 23 item 10: the cap holds with the PACS's Content-Length, and while streaming a body without one.
    from model.channels.pacs import InstanceTooLarge, Pacs, State

    big = chest_dx(radiograph((512, 448), seed=14))  # about 230 kB
    orthanc.store(big)
    state = State(tmp_path / "pacs.json")
    assert watch_here(pacs_for(orthanc, max_instance_bytes=100_000), models, state) == []
    [failure] = state.failures.values()
    assert failure["sop_instance_uid"] == big.SOPInstanceUID and "MiB cap" in failure["reason"]

    stub = StubDicomWeb(lambda path: (200, "application/dicom", b"\0" * 3_000_000), length=False)
    try:
        with pytest.raises(InstanceTooLarge):
            Pacs(stub.url, max_instance_bytes=1_000_000).fetch("1.2", "1.2.3", "1.2.3.4")
    finally:
        stub.stop()


def test_a_server_that_ignores_offset_is_not_asked_forever(tmp_path):
    # Issue 23 item 11: the same page again ends the search (today's paging asked 47k times in 2 minutes).
    from model.channels.pacs import Pacs, State

    series = [{"0020000D": {"vr": "UI", "Value": ["1.2"]}, "0020000E": {"vr": "UI", "Value": ["1.2.3"]}}]
    instances = [{"00080018": {"vr": "UI", "Value": ["1.2.3.4"]}}]

    def answer(path):
        if stub.requests > 100:
            return 400, "text/plain", b"enough"
        return 200, "application/dicom+json", json.dumps(instances if "/instances" in path else series).encode()

    stub = StubDicomWeb(answer)
    try:
        found = list(Pacs(stub.url, sleep=lambda s: None).new_instances(State(tmp_path / "pacs.json")))
    finally:
        stub.stop()
    assert found == [("1.2", "1.2.3", "1.2.3.4")] * 2  # one series per modality (CR, DX), as the stub says
    assert stub.requests == 8  # per modality: two pages of series, two of instances, the second a repeat


def test_the_poll_interval_has_a_floor(tmp_path):
    from model.channels.pacs import MIN_INTERVAL_S, Pacs, State, watch

    waits = []

    def sleep(seconds):
        waits.append(seconds)
        raise KeyboardInterrupt

    stub = StubDicomWeb(lambda path: (200, "application/dicom+json", b"[]"))
    try:
        with pytest.raises(KeyboardInterrupt):
            watch(Pacs(stub.url, sleep=sleep), None, None, None, once=False, interval=0,
                  state=State(tmp_path / "pacs.json"))
    finally:
        stub.stop()
    assert waits == [MIN_INTERVAL_S]


@needs_orthanc
def test_the_pacs_url_spelt_another_way_files_nothing_twice(orthanc, models, tmp_path, monkeypatch):
    # Issue 23 item 12: localhost after 127.0.0.1 (same state folder), and a fresh state folder, file no second SR.
    from model.channels.pacs import State

    source = chest_dx(radiograph((256, 224), seed=15))
    orthanc.store(source)
    monkeypatch.setenv("TORAX_STATE", str(tmp_path / "state"))
    assert len(watch_here(pacs_for(orthanc), models)) == 1
    localhost = orthanc.url.replace("127.0.0.1", "localhost")
    assert watch_here(pacs_for(orthanc, localhost), models) == []
    fresh = State(tmp_path / "fresh" / "pacs.json")
    assert watch_here(pacs_for(orthanc, localhost), models, fresh) == []
    assert fresh.has(source.SOPInstanceUID)  # known from the PACS: our SR for it is already there
    assert len(study_instances(orthanc, source.StudyInstanceUID)["SR"]) == 1


@pytest.mark.parametrize("options", [
    ["--url", "notaurl"], ["--interval", "-1"], ["--interval", "0"], ["--threshold", "2"], ["--threshold", "nan"],
    ["--operating-point", "foo"], ["--url", "http://pacs.example:8042/dicom-web"]])
def test_bad_options_are_one_line_errors_before_connecting(options, tiny_bundles, tmp_path):
    # Issue 23 items 17, 11 and 18: no traceback, nothing asked of the PACS (a dead port would be retried).
    url = f"http://127.0.0.1:{free_port()}/dicom-web"
    run = torax(["pacs", "watch", "--url", url, "--once", *options], tiny_bundles, tmp_path / "state", "pw")
    assert run.returncode == 2, run.stderr
    [line] = run.stderr.strip().splitlines()
    assert line.startswith("error: ") and "trying again" not in run.stderr
    if "pacs.example" in options[-1]:
        assert "plain HTTP" in line and "--allow-insecure" in line


def test_an_answer_that_is_not_json_is_a_one_line_error(tiny_bundles, tmp_path):
    stub = StubDicomWeb(lambda path: (200, "text/html", b"<html><body>Welcome</body></html>"))
    try:
        run = torax(["pacs", "watch", "--url", stub.url, "--once"], tiny_bundles, tmp_path / "state", None)
    finally:
        stub.stop()
    assert run.returncode == 5 and "Traceback" not in run.stderr
    [line] = run.stderr.strip().splitlines()
    assert "not DICOMweb JSON" in line


def test_tls_errors_are_named_and_certificates_can_be_given(tiny_bundles, tmp_path):
    # Issue 23 item 18: a self-signed PACS is a TLS error, not "not answering"; --ca-bundle and a client certificate
    # get through; a password over plain HTTP to another host is refused unless allowed.
    from model.channels.pacs import Pacs, PacsError, PacsUnavailable

    tls = tls_files(tmp_path / "tls")
    stub = StubDicomWeb(lambda path: (200, "application/dicom+json", b"[]"), tls=tls, client_ca=True)
    try:
        with pytest.raises(PacsError) as caught:
            Pacs(stub.url, sleep=lambda s: None).check()
        assert not isinstance(caught.value, PacsUnavailable)
        assert "CERTIFICATE_VERIFY_FAILED" in str(caught.value) and "--ca-bundle" in str(caught.value)
        Pacs(stub.url, ca_bundle=tls["ca"], client_cert=tls["client_cert"], client_key=tls["client_key"]).check()
        run = torax(["pacs", "watch", "--url", stub.url, "--once"], tiny_bundles, tmp_path / "state", None)
    finally:
        stub.stop()
    assert run.returncode == 5 and "Traceback" not in run.stderr and "not answering" not in run.stderr
    assert "certificate verify failed" in run.stderr

    clear = Pacs("http://pacs.example/dicom-web", "torax", "pw")
    assert "plain HTTP" in clear.insecure()
    with pytest.raises(PacsError):
        clear.check()
    assert Pacs("http://pacs.example/dicom-web", "torax", "pw", allow_insecure=True).insecure() is None
    assert Pacs("http://localhost:8042/dicom-web", "torax", "pw").insecure() is None
    assert Pacs("https://pacs.example/dicom-web", "torax", "pw").insecure() is None
