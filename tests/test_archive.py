"""`python -m model archive score` without Ray: the scorer, the local engine end to end on a tiny folder, a CSV and a
DICOMweb archive, resuming, errors as rows, and what is refused before any scoring. A hand-set bundle (no training)
and a handful of small images keep it fast; the CLI runs in this process."""
from __future__ import annotations

import json
import types

import pyarrow.parquet as pq
import pytest

from model.channels import archive

from helpers.archives import FakeDicomWeb, dicom_studies, hand_set_bundles, image_folder
from helpers.cli import run_cli
from helpers.images import png_bytes, radiograph


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    return hand_set_bundles(tmp_path_factory.mktemp("archive-bundles"))


@pytest.fixture(scope="module")
def bundle(bundles):
    from model.core.bundle import load_bundle

    return load_bundle(bundles / "pneumonia-kermany")


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "archive"
    return root, image_folder(root)


def table(path) -> list[dict]:
    return pq.read_table(path).to_pylist()


def by_source(rows) -> dict[str, dict]:
    return {r["source"]: r for r in rows}


def predicted(files, bundles) -> dict[str, dict]:
    """`python -m model predict --json` on the files, by path."""
    run = run_cli(["predict", "--json", *files], bundles)
    return {line["file"]: line for line in map(json.loads, run.stdout.splitlines())}


def score(source, out, bundles, *options):
    return run_cli(["archive", "score", source, "--out", out, *options], bundles)


def test_the_scorer_turns_prepared_batches_into_predicts_rows_without_ray(bundle, folder, bundles):
    root, files = folder
    paths = [str((root / rel).resolve()) for rel, kind in files.items() if kind != "other"]
    listing = {"source": paths, "path": paths, **{k: [""] * len(paths) for k in archive.LISTING[2:]}}
    facts = archive.BundleFacts.of(bundle)
    scorer = archive.Scorer(facts, str(bundles))  # loads the bundle itself, on its first batch
    out = scorer(archive.prepare_batch(listing, facts))
    rows = [json.loads(r) for r in out["row"]]
    expected = predicted(paths, bundles)
    for row in rows:
        want = expected[row["source"]]
        if want["error"]:
            assert row["error_code"] == want["error"]["code"] == "truncated_image" and row["probability"] is None
            continue
        assert row["probability"] == pytest.approx(want["probability"], abs=1e-5)
        assert row["probability_raw"] == row["probability"]  # no site profile
        assert (row["label"], row["threshold"]) == (want["label"], want["threshold"])
        assert row["warnings"] == [w["code"] for w in want["warnings"]]
        assert len(row["sha256"]) == 64
    assert sorted(out) == sorted(["state", "row", *archive.TIMINGS]) and out["model_s"].sum() > 0


def test_the_scorer_applies_a_site_profile_and_the_unattended_population_rule(bundle, bundles):
    from model.sites.profiles import SiteProfile

    image = png_bytes(radiograph((96, 88), seed=3))
    site = SiteProfile({"site": "clinic-a", "calibration": {"a": 1.0, "b": -2.0}, "default_operating_point": "balanced",
                        "operating_points": [{"name": "balanced", "threshold": 0.25}]})
    facts = archive.BundleFacts.of(bundle)
    from model.core.types import WarningCode

    def row(**options):
        batch = archive.prepare_batch({"source": ["a.png"], "path": [""], **{k: [""] for k in archive.LISTING[2:]}},
                                      facts, pacs=types.SimpleNamespace(fetch=lambda *uids: image))
        read = json.loads(batch["result"][0])
        read["warnings"].append({"code": WarningCode.OUTSIDE_INTENDED_POPULATION, "message": "an adult"})
        batch["result"][0] = json.dumps(read)
        return json.loads(archive.Scorer(facts, str(bundles), bundle=bundle, **options)(batch)["row"][0])

    shipped = row()
    assert shipped["label"] is None and shipped["finding"] == "not_assessed"  # as pacs watch files it
    assert row(allow_outside_population=True)["label"] in ("NORMAL", "PNEUMONIA")
    local = row(site=site, allow_outside_population=True)
    assert local["probability_raw"] == pytest.approx(shipped["probability_raw"], abs=1e-12)
    assert local["probability"] == pytest.approx(site.calibrate(local["probability_raw"]), abs=1e-9)
    assert (local["site"], local["threshold"]) == ("clinic-a", 0.25)
    assert local["label"] == ("PNEUMONIA" if local["probability"] >= 0.25 else "NORMAL")


def test_a_folder_gives_one_row_per_image_with_predicts_numbers_and_a_second_run_adds_nothing(folder, bundles,
                                                                                              tmp_path):
    root, files = folder
    out = tmp_path / "results" / "archive.parquet"
    run = score(root, out, bundles, "--batch-size", "2")
    assert run.returncode == 0, run.stderr
    assert "1 other files skipped" in run.stdout and "where the time goes" in run.stdout
    rows = by_source(table(out))
    wanted = {str((root / rel).resolve()): kind for rel, kind in files.items() if kind != "other"}
    assert set(rows) == set(wanted)
    expected = predicted(list(wanted), bundles)
    for source, kind in wanted.items():
        if kind == "error":
            assert rows[source]["error_code"] == "truncated_image" and rows[source]["finding"] is None
        else:
            assert rows[source]["probability"] == pytest.approx(expected[source]["probability"], abs=1e-5)
            assert rows[source]["label"] == expected[source]["label"]
    assert rows[str((root / "ward-b/toy.jpg").resolve())]["warnings"] == ["not_chest_xray"]
    assert not (out.parent / "archive.parquet.parts").exists()
    progress = archive.read_progress(out)
    assert progress["state"] == "done" and progress["written"] == len(wanted) == progress["total"]

    again = score(root, out, bundles)
    assert again.returncode == 0 and f"{len(wanted)} already done, 0 scored" in again.stdout
    assert table(out) == list(rows.values())  # the same rows, same run, nothing written twice

    (root / "ward-a/chest-9.png").write_bytes(png_bytes(radiograph((90, 90), seed=42)))  # a new file
    (root / "ward-a/chest-0.png").write_bytes(png_bytes(radiograph((90, 90), seed=43)))  # changed in place
    third = score(root, out, bundles)
    assert third.returncode == 0 and "2 scored" in third.stdout
    rows3 = table(out)
    assert len(rows3) == len(wanted) + 2 and len({(r["source"], r["sha256"]) for r in rows3}) == len(rows3)
    assert len({r["run_id"] for r in rows3}) == 2


def test_an_interrupted_run_keeps_what_it_wrote_and_the_next_run_finishes_it(folder, bundles, bundle, tmp_path,
                                                                              monkeypatch):
    root, files = folder
    out = archive.Output(tmp_path / "r.parquet")
    out.check_writable()
    calls = {"n": 0}
    real = archive.Scorer.__call__

    def dies_on_the_second_batch(self, batch):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(self, batch)

    monkeypatch.setattr(archive.Scorer, "__call__", dies_on_the_second_batch)
    monkeypatch.setattr(archive.Output, "consolidate", lambda self: 0)  # as if killed: the parts stay as they are
    with pytest.raises(KeyboardInterrupt):
        archive.score(archive.list_folder(root), out, bundle, batch_size=2, say=lambda line: None)
    monkeypatch.undo()
    assert len(out.part_files()) == 1 and not out.path.exists()  # the batch in flight is all that was lost
    assert archive.read_progress(out.path)["written"] == 2

    summary = archive.score(archive.list_folder(root), out, bundle, batch_size=2, say=lambda line: None)
    images = [rel for rel, kind in files.items() if kind != "other"]
    assert (summary.done_before, summary.written) == (2, len(images) - 2)
    rows = table(out.path)
    assert sorted(r["source"] for r in rows) == sorted(str((root / rel).resolve()) for rel in images)
    assert not out.part_files()


def test_a_file_that_vanishes_mid_run_is_an_error_row_and_is_scored_once_it_is_back(folder, bundle, tmp_path):
    root, _ = folder
    source = archive.list_folder(root)
    gone = root / "ward-a/chest-2.png"
    kept = gone.read_bytes()
    gone.unlink()  # after the listing, before it is read
    out = archive.Output(tmp_path / "r.parquet")
    out.check_writable()
    archive.score(source, out, bundle, say=lambda line: None)
    row = by_source(table(out.path))[str(gone.resolve())]
    assert row["error_code"] == "unreadable_file" and "No such file" in row["error_message"] and row["sha256"] is None

    gone.write_bytes(kept)
    archive.score(archive.list_folder(root), out, bundle, say=lambda line: None)
    rows = [r for r in table(out.path) if r["source"] == str(gone.resolve())]
    assert len(rows) == 1 and rows[0]["error_code"] is None and rows[0]["probability"] is not None


def test_an_output_that_cannot_be_written_or_a_full_disk_is_refused_before_scoring(folder, bundles, tmp_path,
                                                                                   monkeypatch):
    root, _ = folder
    (tmp_path / "a-file").write_text("x")
    run = score(root, tmp_path / "a-file" / "r.parquet", bundles)
    assert run.returncode == 2 and run.stderr.startswith("error: --out") and "can't be written" in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1

    someone_elses = tmp_path / "theirs.parquet"
    someone_elses.write_bytes(b"PAR1 not ours")
    run = score(root, someone_elses, bundles)
    assert run.returncode == 2 and "is not an archive results table" in run.stderr
    assert someone_elses.read_bytes() == b"PAR1 not ours"

    def no_model_may_load(*args, **kwargs):
        raise AssertionError("scoring started")

    monkeypatch.setattr(archive, "free_bytes", lambda folder: 10 << 20)
    monkeypatch.setattr(archive.Scorer, "ensemble", no_model_may_load)
    run = score(root, tmp_path / "full" / "r.parquet", bundles)
    assert run.returncode == 2 and "Not enough disk space" in run.stderr and "MiB is free" in run.stderr
    assert not (tmp_path / "full" / "r.parquet").exists()


def test_a_csv_of_paths_is_scored_relative_to_its_folder(folder, bundles, tmp_path):
    root, _ = folder
    listed = tmp_path / "list.csv"
    listed.write_text(f"id,path\n1,archive/ward-a/chest-0.png\n2,{root / 'ward-b/IM000001'}\n3,archive/missing.png\n"
                      "4,archive/ward-a/chest-0.png\n")
    out = tmp_path / "r.parquet"
    run = score(listed, out, bundles)
    assert run.returncode == 0, run.stderr
    rows = by_source(table(out))
    assert len(rows) == 3
    assert rows[str(root / "missing.png")]["error_code"] == "unreadable_file"
    assert rows[str(root / "ward-b/IM000001")]["probability"] is not None

    (tmp_path / "bad.csv").write_text("file\nx.png\n")
    run = score(tmp_path / "bad.csv", out, bundles)
    assert run.returncode == 2 and "no 'path' column" in run.stderr


def test_a_dicomweb_archive_from_a_date_and_a_server_that_goes_down_mid_run(bundles, bundle, tmp_path):
    from model.channels.pacs import Pacs

    server = FakeDicomWeb(dicom_studies({"20231231": 1, "20240105": 3, "20240210": 2}))
    out = tmp_path / "pacs.parquet"
    try:
        # Down after 2 instances: with batches of 2, the first batch is written, the run stops (exit 3 at the CLI).
        server.fail_after(2)
        source = archive.list_dicomweb(Pacs(server.url, sleep=lambda s: None), "20240101")
        assert len(source.items) == 5  # the 2023 study is left out
        archive.Output(out).check_writable()
        with pytest.raises(archive.ArchiveError) as stopped:
            archive.score(source, archive.Output(out), bundle, batch_size=2, say=lambda line: None)
        assert stopped.value.exit_code == 3 and "not answering" in stopped.value.message
        assert "run the same command again to resume" in stopped.value.message
        assert len(table(out)) == 2

        server.recover()
        before = server.fetched
        run = score(server.url, out, bundles, "--since", "2024-01-01", "--batch-size", "2")
        assert run.returncode == 0, run.stderr
        assert server.fetched - before == 3  # only what was missing is fetched
        rows = table(out)
        assert len(rows) == 5 and all(r["probability"] is not None and r["sop_instance_uid"] for r in rows)
        assert {r["source"].split("/")[1] for r in rows} == {r["study_instance_uid"] for r in rows}
    finally:
        server.stop()
    run = score(server.url, out, bundles)
    assert run.returncode == 2 and "--since" in run.stderr


def test_record_puts_every_row_in_the_result_store_once_tagged_with_the_run(folder, bundles, tmp_path,
                                                                          monkeypatch):
    from model.store.db import Store

    root, _ = folder
    url = f"sqlite:///{tmp_path / 'records.sqlite3'}"
    monkeypatch.setenv("TORAX_DB_URL", url)
    run = score(root, tmp_path / "r.parquet", bundles, "--record")
    assert run.returncode == 0, run.stderr
    rows = table(tmp_path / "r.parquet")
    store = Store.open(url)
    try:
        records = [r for r in store.results() if r["channel"] == "archive"]
    finally:
        store.close()
    assert len(records) == len(rows) == 6
    assert {r["meta"]["archive_run"] for r in records} == {r["run_id"] for r in rows}
    by_sha = {r["sha256"]: r for r in rows}
    for record in records:
        row = by_sha[record["input_sha256"]]
        assert record["error"] == row["error_code"] and record["label"] == row["label"]
        if row["probability"] is not None and row["probability"] == row["probability"]:
            assert record["probability_raw"] == pytest.approx(row["probability_raw"], abs=1e-12)
    again = score(root, tmp_path / "r.parquet", bundles, "--record")  # nothing left to score: nothing recorded
    assert again.returncode == 0, again.stderr
    store = Store.open(url)
    try:
        assert sum(r["channel"] == "archive" for r in store.results()) == 6
    finally:
        store.close()


def test_bad_options_are_one_line_errors(folder, bundles, tmp_path):
    root, _ = folder
    for options in (["--workers", "2"], ["--since", "2024-01-01"], ["--address", "auto"]):
        run = score(root, tmp_path / "r.parquet", bundles, *options)
        assert run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1, (options, run.stderr)
    run = score(tmp_path / "nowhere", tmp_path / "r.parquet", bundles)
    assert run.returncode == 2 and "no such folder" in run.stderr
