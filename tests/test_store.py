"""The department's record (model/store/) on real databases: SQLite always, PostgreSQL on a server the session starts
(helpers.postgres). Results are recorded by `predict` with their allowlisted fields and nothing identifying; the
schema is migrated from the previous revision; rows are append-only; a corrupt or foreign SQLite file is refused
and left alone; a locked or unreachable database sends records to the spool, written later without duplicates;
eight sessions and the API writing at once lose no row; confirmations are checked one by one and per CSV row;
export, retention, and `site fit --from-records` giving the same profile as the image-based fit."""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import sqlite3
import stat
import threading
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from model.store import confirmations as C
from model.store.db import HEAD, Store, StoreError, migrate, revision
from model.store.recorder import Channel, Recorder
from model.store.schema import results

from helpers.cli import run_cli
from helpers.dicom import chest_dx, to_bytes
from helpers.images import radiograph, radiograph_png
from helpers.records import START, result, shipped_bundle, write


class Clock:
    """Time that moves only when told to."""

    def __init__(self, start: float = 1_750_000_000.0):
        self.now = start

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def bundle():
    return shipped_bundle()


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path):
    """A fresh, empty database of each kind."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'records.sqlite3'}"
    return request.getfixturevalue("postgres").database(f"t{uuid.uuid4().hex[:12]}")


# ---------------------------------------------------------------------------------------------------------------
# What a record holds (one real `predict` run, shared by the tests that need a model)
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def predicted(tiny_bundles, tmp_path_factory):
    """`predict --json` over a DICOM with a patient's name, ID and birth date in a file named after her, and 14
    drawn radiographs (7 NORMAL, 7 PNEUMONIA) in a labelled folder, into a fresh record. The truth CSV too."""
    tmp = tmp_path_factory.mktemp("predicted")
    env = {"TORAX_STATE": str(tmp / "state"), "TORAX_SITES": str(tmp / "sites")}
    ds = chest_dx(radiograph((256, 224), seed=3))
    dicom = tmp / "DOE_JANE_19670302.dcm"
    dicom.write_bytes(to_bytes(ds))
    folder, files, truth = tmp / "sample", [], [["sha256", "label"]]
    for label, pneumonia in (("NORMAL", False), ("PNEUMONIA", True)):
        (folder / label).mkdir(parents=True)
        for i in range(7):
            data = radiograph_png(50 * pneumonia + i, pneumonia)
            (folder / label / f"{i}.png").write_bytes(data)
            files.append(folder / label / f"{i}.png")
            truth.append([hashlib.sha256(data).hexdigest(), label])
    (tmp / "truth.csv").write_bytes(_csv(truth))
    done = run_cli(["predict", "--json", dicom, *files], tiny_bundles, env)
    assert done.returncode == 0, done.stderr
    return {"env": env, "tmp": tmp, "ds": ds, "dicom": dicom, "folder": folder,
            "lines": [json.loads(line) for line in done.stdout.splitlines()]}


def test_predict_records_each_result_with_its_uids_and_nothing_identifying(predicted, tiny_bundles):
    env, ds, dicom, lines = predicted["env"], predicted["ds"], predicted["dicom"], predicted["lines"]
    assert len(lines) == 15 and {line["record"]["state"] for line in lines} == {"stored"}
    shown = run_cli(["record", "show", lines[0]["record"]["id"]], env=env)
    row = json.loads(shown.stdout)
    assert row["channel"] == "cli" and row["user"] == "local"
    assert row["input_sha256"] == hashlib.sha256(dicom.read_bytes()).hexdigest()
    assert (row["study_instance_uid"], row["series_instance_uid"], row["sop_instance_uid"]) == \
        (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    manifest = json.loads((tiny_bundles / "pneumonia-kermany" / "manifest.json").read_text())
    assert row["bundle"] == manifest["name"] and row["bundle_version"] == manifest["version"]
    assert row["bundle_members"] == {m["name"]: m["sha256"] for m in manifest["members"]}
    assert row["probability"] == pytest.approx(lines[0]["probability"]) and row["probability_raw"] == row["probability"]
    assert row["threshold"] == lines[0]["threshold"] and row["label"] == lines[0]["label"]
    assert row["warnings"] == ([w["code"] for w in lines[0]["warnings"]] or None)
    assert 0 <= row["guard_scores"]["chest_xray"] <= 1 and row["latency_ms"] > 0
    assert row["meta"]["format"] == "dicom" and "file" not in row
    # No patient attribute and no file name anywhere in the database's files.
    state = predicted["tmp"] / "state"
    stored = b"".join(p.read_bytes() for p in state.glob("records.sqlite3*"))
    for identifier in (b"Doe", b"Jane", b"TEST-0001", b"20200101", b"DOE_JANE", b"0.png"):
        assert identifier not in stored
    assert stat.S_IMODE(os.stat(state / "records.sqlite3").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(state).st_mode) == 0o700

    found = run_cli(["record", "find", "--sop-instance-uid", ds.SOPInstanceUID], env=env)
    assert [json.loads(x)["id"] for x in found.stdout.splitlines()] == [lines[0]["record"]["id"]]
    assert run_cli(["record", "find", "--sha256", row["input_sha256"].upper()], env=env).stdout == found.stdout

    # The reader's confirmation: checked, then the latest one counts.
    rid = lines[0]["record"]["id"]
    assert run_cli(["record", "confirm", rid, "--label", "pneumonia", "--note", "lobar"], env=env).returncode == 0
    assert run_cli(["record", "confirm", rid, "--label", "unsure"], env=env).returncode == 0
    refused = run_cli(["record", "confirm", rid, "--label", "maybe"], env=env)
    assert refused.returncode == 2 and "use one of NORMAL, PNEUMONIA, UNSURE" in refused.stderr
    unknown = run_cli(["record", "confirm", str(uuid.uuid4()), "--label", "NORMAL"], env=env)
    assert unknown.returncode == 2 and "No recorded result" in unknown.stderr
    assert run_cli(["record", "confirm", "not-an-id", "--label", "NORMAL"], env=env).returncode == 2
    row = json.loads(run_cli(["record", "show", rid], env=env).stdout)
    assert [c["label"] for c in row["confirmations"]] == ["PNEUMONIA", "UNSURE"]
    assert row["confirmed"]["label"] == "UNSURE" and row["confirmations"][0]["note"] == "lobar"


def test_a_site_profile_result_keeps_the_probability_as_shipped(bundle):
    from model.sites import profiles as sites
    from model.store.recorder import result_row

    from helpers.records import children

    y, p = children(bundle, 120, seed=9)
    site = sites.SiteProfile(sites.fit(sites.Scored(bundle.name, bundle.classes, "s", [""] * 120, y, p, [], {}),
                                       bundle, "clinic", boot=50))
    assert site.uncalibrate(site.calibrate(p)) == pytest.approx(p, abs=1e-9)
    row = result_row(result(bundle, site.calibrate(0.3), site=site), bundle, channel=Channel.CLI, site=site)
    assert row["site"] == "clinic" and row["site_sha256"] == site.data["sha256"]
    assert row["probability_raw"] == pytest.approx(0.3) and row["probability"] == pytest.approx(site.calibrate(0.3))


# ---------------------------------------------------------------------------------------------------------------
# Schema, migrations, append-only
# ---------------------------------------------------------------------------------------------------------------
def test_a_database_at_the_previous_revision_is_upgraded_and_keeps_its_rows(url, bundle):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from model.store.schema import metadata

    engine = sa.create_engine(url)
    migrate(engine, "0001")  # what the first release made: results only
    with engine.begin() as connection:
        connection.execute(sa.text(
            "INSERT INTO results (id, created_at, channel, \"user\", bundle, task, probability_raw, probability) "
            "VALUES ('0b6f7a3e-2f1c-4c55-9f0e-8a1d2c3b4a59', '2025-01-02 03:04:05', 'cli', 'local', :b, 'binary', "
            "0.8, 0.8)"), {"b": bundle.name})
    engine.dispose()
    store = Store.open(url)
    with store.engine.connect() as connection:
        assert revision(connection) == HEAD
        assert compare_metadata(MigrationContext.configure(connection), metadata) == []  # migrations == schema
    old = store.result("0b6f7a3e-2f1c-4c55-9f0e-8a1d2c3b4a59")
    assert old["probability"] == 0.8 and old["guard_scores"] is None and old["confirmations"] == []
    store.add_confirmations([C.row(old["id"], "PNEUMONIA", None, "local", C.Source.CLI, datetime(2025, 1, 3))])
    assert store.result(old["id"])["confirmed"]["label"] == "PNEUMONIA"
    store.close()


def test_results_and_confirmations_are_append_only(url, bundle):
    store = Store.open(url)
    (rid,) = write(store, bundle, [0.9], [1])
    for statement in ("UPDATE results SET label = '\"NORMAL\"'", "UPDATE confirmations SET label = 'NORMAL'"):
        with pytest.raises(sa.exc.DBAPIError, match="append-only"), store.engine.begin() as connection:
            connection.execute(sa.text(statement))
    assert store.result(rid)["label"] == "PNEUMONIA" and store.result(rid)["confirmed"]["label"] == "PNEUMONIA"
    assert write(store, bundle, [0.9], [1]) != [rid]  # a new row, never a change
    store.close()


# ---------------------------------------------------------------------------------------------------------------
# Database files that are not ours
# ---------------------------------------------------------------------------------------------------------------
def _foreign_sqlite(path: Path) -> None:
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE patients (name TEXT)")


def _corrupt_sqlite(path: Path) -> None:
    _foreign_sqlite(path)
    data = bytearray(path.read_bytes())
    data[100:] = os.urandom(len(data) - 100)  # the header survives, the pages do not
    path.write_bytes(bytes(data))


def _newer(path: Path) -> None:
    store = Store.open(f"sqlite:///{path}")
    with store.engine.begin() as connection:
        connection.execute(sa.text("UPDATE alembic_version SET version_num = '0099'"))
    store.close()


@pytest.mark.parametrize("make, code", [
    (lambda p: p.write_bytes(b"%PDF-1.7 a report, not a database" * 40), "not_a_database"),
    (_foreign_sqlite, "foreign"),
    (_corrupt_sqlite, "corrupt"),
    (_newer, "newer_schema"),
], ids=["not-sqlite", "another-programs-sqlite", "corrupt-sqlite", "newer-schema"])
def test_a_database_file_that_is_not_ours_is_refused_and_left_alone(tmp_path, make, code, bundle):
    path = tmp_path / "records.sqlite3"
    make(path)
    before = path.read_bytes()
    with pytest.raises(StoreError) as refused:
        Store.open(f"sqlite:///{path}")
    assert refused.value.code == code and str(path) in refused.value.message
    assert path.read_bytes() == before
    # The reader is not blocked: the result waits in the spool, and the page or CLI says why.
    keeper = Recorder(f"sqlite:///{path}", tmp_path / "spool.jsonl")
    kept = keeper.record(result(bundle, 0.7), bundle, channel=Channel.CLI)
    assert kept.pending and str(path) in kept.message and keeper.pending() == 1
    shown = run_cli(["record", "show", kept.id], env={"TORAX_STATE": str(tmp_path)})
    assert shown.returncode == 3 and str(path) in shown.stderr and "Traceback" not in shown.stderr
    assert path.read_bytes() == before


# ---------------------------------------------------------------------------------------------------------------
# Never blocking the reader: the spool
# ---------------------------------------------------------------------------------------------------------------
def test_a_locked_sqlite_database_spools_and_is_written_later_without_duplicates(tmp_path, bundle):
    url = f"sqlite:///{tmp_path / 'records.sqlite3'}"
    clock = Clock()
    keeper = Recorder(url, tmp_path / "spool.jsonl", clock=clock, lock_timeout=0.05)
    first = keeper.record(result(bundle, 0.2), bundle, channel=Channel.APP_DIAGNOSE)
    assert first.state == "stored"
    blocker = sqlite3.connect(tmp_path / "records.sqlite3", isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")  # another program holds the write lock
    try:
        waiting = [keeper.record(result(bundle, p), bundle, channel=Channel.APP_WORKLIST) for p in (0.3, 0.6, 0.9)]
        assert all(w.pending for w in waiting) and "locked" in waiting[0].message
        confirmed = keeper.confirm(waiting[0].id, "normal", classes=bundle.classes, source=C.Source.APP)
        assert confirmed.pending and confirmed.label == "NORMAL"
        assert keeper.pending() == 4
        assert stat.S_IMODE(os.stat(tmp_path / "spool.jsonl").st_mode) == 0o600
        with pytest.raises(StoreError):  # a caller that can't vouch for the result gets the fault itself
            keeper.confirm(waiting[1].id, "NORMAL")
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    spooled = (tmp_path / "spool.jsonl").read_text()
    clock.now += 11  # past the retry wait: the next record tries the database again
    assert keeper.record(result(bundle, 0.5), bundle, channel=Channel.CLI).state == "stored"
    assert keeper.pending() == 0
    store = keeper.store()
    assert store.count() == {"results": 5, "confirmations": 1}
    assert store.result(waiting[0].id)["confirmed"]["label"] == "NORMAL"
    (tmp_path / "spool.jsonl").write_text(spooled)  # a replay (a drain cut short, run again) adds nothing
    assert keeper.spool.drain(store) == 0 and store.count() == {"results": 5, "confirmations": 1}


def test_an_unreachable_postgresql_server_spools_and_is_written_when_it_is_back(postgres, tmp_path, bundle):
    clock = Clock()
    keeper = Recorder(postgres.database("outage"), tmp_path / "spool.jsonl", clock=clock)
    assert keeper.record(result(bundle, 0.2), bundle, channel=Channel.API, user="alice").state == "stored"
    postgres.stop()
    try:
        down = [keeper.record(result(bundle, p), bundle, channel=Channel.API) for p in (0.4, 0.8)]
        assert [d.state for d in down] == ["pending", "pending"] and "can't be reached" in down[0].message
    finally:
        postgres.start()
    clock.now += 11
    assert keeper.record(result(bundle, 0.6), bundle, channel=Channel.API).state == "stored"
    rows = keeper.store().results()
    assert len(rows) == 4 and len({r["id"] for r in rows}) == 4 and keeper.pending() == 0
    keeper.close()


def test_eight_sessions_and_the_api_writing_at_once_lose_no_row(url, bundle, tmp_path):
    """Nine writers with their own connections (eight app sessions and the API), 25 results each, at once."""
    start = threading.Barrier(9)
    kept: list = []

    def session(k: int):
        keeper = Recorder(url, tmp_path / "spool.jsonl")
        start.wait()
        for i in range(25):
            kept.append(keeper.record(result(bundle, (i + 1) / 27), bundle,
                                      channel=Channel.API if k == 8 else Channel.APP_DIAGNOSE, user=f"s{k}"))
        keeper.close()

    threads = [threading.Thread(target=session, args=(k,)) for k in range(9)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    store = Recorder(url, tmp_path / "spool.jsonl").store()  # writes anything that had to wait
    ids = [r["id"] for r in store.results()]
    assert len(kept) == 225 and len(ids) == 225 and set(ids) == {k.id for k in kept}
    store.close()


# ---------------------------------------------------------------------------------------------------------------
# Confirmations in bulk, export, retention
# ---------------------------------------------------------------------------------------------------------------
def _csv(rows) -> bytes:
    out = io.StringIO()
    csv.writer(out).writerows(rows)
    return out.getvalue().encode()


def test_imported_confirmations_are_matched_or_refused_row_by_row(tmp_path, bundle):
    env = {"TORAX_STATE": str(tmp_path)}
    store = Store.open(f"sqlite:///{tmp_path / 'records.sqlite3'}")
    ids = write(store, bundle, [0.9, 0.1, 0.5, 0.7, 0.3], sha_prefix="a")
    rows = store.results()
    sha = [r["input_sha256"] for r in rows]
    again = write(store, bundle, [0.91], sha_prefix="a")  # the first image analysed a second time
    table = tmp_path / "truth.csv"
    table.write_bytes(_csv([
        ["SHA256", "Label", "note"],
        [sha[0], "PNEUMONIA", "culture positive"],   # matched: both records of that image
        [sha[1].upper(), "normal", ""],              # matched (any case)
        ["f" * 64, "NORMAL", ""],                    # unmatched
        ["not-a-digest", "NORMAL", ""],              # refused: not a sha256
        [sha[2], "MAYBE", ""],                       # refused: not a label
        [sha[3], "NORMAL", ""],                      # ambiguous: two labels for one image
        [sha[3], "PNEUMONIA", ""],
        [sha[4], "UNSURE", "x" * 1001],              # refused: note too long
    ]))
    done = run_cli(["record", "import-confirmations", table], env=env)
    assert done.returncode == 1, done.stderr
    assert done.stdout.splitlines()[0] == ("8 rows: 2 matched (3 results confirmed), 1 unmatched, 2 ambiguous, "
                                           "3 refused")
    reasons = "\n".join(done.stdout.splitlines()[1:])
    for expected in ("line 4: unmatched", "line 5: refused: sha256 'not-a-digest'", "line 6: refused: 'MAYBE' is not "
                     "a label", "line 7: ambiguous", "line 8: ambiguous", "line 9: refused: The note has 1001"):
        assert expected in reasons
    assert store.result(ids[0])["confirmed"]["label"] == "PNEUMONIA"
    assert store.result(again[0])["confirmed"]["note"] == "culture positive"
    assert store.result(ids[1])["confirmed"]["label"] == "NORMAL" and store.result(ids[2])["confirmed"] is None

    # By SOP Instance UID: one names a single image, one was reused for two different images.
    from model.store.recorder import result_row

    sops = [result_row(result(bundle, p), bundle, channel=Channel.PACS, sha256=f"b{i:063x}") | {"sop_instance_uid": s}
            for i, (p, s) in enumerate(((0.8, "1.2.3.1"), (0.4, "1.2.3.9"), (0.6, "1.2.3.9")))]
    store.add(results, sops)
    table.write_bytes(_csv([["sop_instance_uid", "label"], ["1.2.3.1", "PNEUMONIA"], ["1.2.3.9", "NORMAL"]]))
    done = run_cli(["record", "import-confirmations", "--json", table], env=env)
    report = json.loads(done.stdout)
    assert (report["matched"], report["ambiguous"], report["confirmed"]) == (1, 1, 1)
    assert "2 recorded results of different images" in report["problems"][0]["reason"]
    table.write_text("file,diagnosis\nx.png,PNEUMONIA\n")
    bad = run_cli(["record", "import-confirmations", table], env=env)
    assert bad.returncode == 2 and "needs a header with a `sha256` or `sop_instance_uid` column" in bad.stderr
    store.close()


def test_export_writes_csv_and_parquet_audit_extracts(tmp_path, bundle):
    env = {"TORAX_STATE": str(tmp_path)}
    store = Store.open(f"sqlite:///{tmp_path / 'records.sqlite3'}")
    ids = write(store, bundle, [0.9, 0.2, 0.6], [1, 0, None])
    store.add_confirmations([C.row(ids[1], "NORMAL", "=HYPERLINK(\"http://evil\")", "dr", C.Source.CLI,
                                   START + timedelta(days=1))])
    for fmt in ("csv", "parquet"):
        done = run_cli(["record", "export", "--format", fmt, "--out", tmp_path / f"x.{fmt}"], env=env)
        assert done.returncode == 0 and json.loads(done.stdout)["results"] == 3, done.stderr
    frame = pd.read_parquet(tmp_path / "x.parquet")
    assert list(frame["id"]) == ids and list(frame["confirmed_label"])[:2] == ["PNEUMONIA", "NORMAL"]
    assert list(frame["confirmations"]) == [1, 2, 0] and json.loads(frame["probabilities"][0])["PNEUMONIA"] == 0.9
    text = (tmp_path / "x.csv").read_text()
    assert "'=HYPERLINK" in text and len(pd.read_csv(tmp_path / "x.csv")) == 3  # a note can't run as a formula
    store.close()


def test_retention_deletes_old_results_and_logs_the_deletion(tmp_path, bundle):
    env = {"TORAX_STATE": str(tmp_path)}
    store = Store.open(f"sqlite:///{tmp_path / 'records.sqlite3'}")
    now = datetime(2025, 6, 1)
    old = write(store, bundle, [0.9, 0.1], [1, 0], start=now - timedelta(days=400))
    recent = write(store, bundle, [0.8], [1], start=now - timedelta(days=10))
    done = store.retain(365, user="admin", now=now)
    assert done["results_deleted"] == 2 and done["confirmations_deleted"] == 2
    assert store.result(old[0]) is None and store.result(recent[0]) is not None
    (entry,) = store.audit_log()
    assert entry["action"] == "retention" and entry["user"] == "admin" and entry["detail"]["days"] == 365
    # The setting (TORAX_RETAIN_DAYS) applies itself while results are recorded, and logs what it deleted.
    keeper = Recorder(f"sqlite:///{tmp_path / 'records.sqlite3'}", tmp_path / "spool.jsonl",
                      clock=Clock(now.replace(tzinfo=UTC).timestamp() + 86400 * 30), retain_days=20)
    keeper.record(result(bundle, 0.5), bundle, channel=Channel.CLI)
    assert store.result(recent[0]) is None and store.audit_log()[-1]["user"] == "retention"
    cli = run_cli(["record", "retain", "--days", "1"], env=env)
    assert cli.returncode == 0 and json.loads(cli.stdout)["days"] == 1
    assert run_cli(["record", "retain", "--days", "0"], env=env).returncode == 2
    store.close()


# ---------------------------------------------------------------------------------------------------------------
# The record as a site's labelled sample, and the monitor command
# ---------------------------------------------------------------------------------------------------------------
def test_site_fit_from_records_matches_the_fit_on_the_same_images(predicted, tiny_bundles):
    """The record's raw probabilities are predict's, and predict's are the image-based fit's, bit for bit
    (model.sites.profiles.score; tests/test_site_workflow.py pins it): so the two fits see the same sample."""
    from model.core.bundle import load_bundle
    from model.sites import profiles as sites

    env, folder, tmp = predicted["env"], predicted["folder"], predicted["tmp"]
    assert run_cli(["record", "import-confirmations", tmp / "truth.csv"], env=env).returncode == 0
    from_records = run_cli(["site", "fit", "--from-records", "--name", "from-record", "--json", "--repeats", "1"],
                           tiny_bundles, env)
    assert from_records.returncode == 0, from_records.stderr
    a = json.loads(from_records.stdout)
    bundle = load_bundle(tiny_bundles / "pneumonia-kermany", models=False)
    images = predicted["lines"][1:]  # the 14 labelled radiographs, as predict scored them
    y = np.array([int("/PNEUMONIA/" in line["file"]) for line in images])
    scored = sites.Scored(bundle.name, bundle.classes, str(folder), [line["file"] for line in images], y,
                          np.array([line["probability"] for line in images]), [], {})
    b = sites.fit(scored, bundle, "from-images", repeats=1)
    assert a["sample"]["n"] == b["sample"]["n"] == 14
    assert a["calibration"]["a"] == pytest.approx(b["calibration"]["a"], abs=1e-6)
    assert a["calibration"]["b"] == pytest.approx(b["calibration"]["b"], abs=1e-6)
    for p, q in zip(a["operating_points"], b["operating_points"]):
        assert p["threshold"] == pytest.approx(q["threshold"], abs=1e-6)
    assert a["validation"]["auc"] == pytest.approx(b["validation"]["auc"], abs=0.02)
    assert a["sample"]["records"]["results"] == 14 and a["sample"]["source"].startswith("the record")
    both = run_cli(["site", "fit", folder, "--from-records", "--name", "x"], tiny_bundles, env)
    assert both.returncode == 2 and "not both" in both.stderr

    monitor = run_cli(["monitor", "--json"], tiny_bundles, env)
    report = json.loads(monitor.stdout)
    assert {"n", "period", "labels", "guards", "drift", "performance", "alarms"} <= set(report)
    assert report["n"] == 15 and set(report["period"]) == {"since", "until"}  # the DICOM too (never NORMAL/PNEUMONIA)
    assert {"reference", "n_reference", "psi", "ks_p", "alarm"} <= set(report["drift"])
    assert report["performance"]["n_confirmed"] == 14
    for name in ("sensitivity", "specificity", "ppv", "npv", "auc", "ece", "agreement"):
        assert "ci95" in report["performance"][name]
    assert report["performance"]["sensitivity"]["value"] == "too few confirmed"  # 14 < 30
    text = run_cli(["monitor"], tiny_bundles, env)
    assert text.returncode == 0 and "performance: too few confirmed" in text.stdout
