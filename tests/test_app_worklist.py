"""The Worklist page as a reader drives it (Streamlit AppTest against app.py and the tiny real bundle): a batch
of good and bad files becomes one ranked table; a selected row opens in Diagnose; the list survives the trip."""
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from helpers.images import png_bytes, radiograph

APP = str(Path(__file__).resolve().parent.parent / "app.py")
pytestmark = pytest.mark.usefixtures("app_on_tiny_bundles")


GOOD = [(f"chest-{i}.png", png_bytes(radiograph((220 + 10 * i, 200), pneumonia=i % 2 == 0, seed=20 + i)), "image/png")
        for i in range(4)]
BAD = [("truncated.png", png_bytes(radiograph((200, 200), seed=1))[:200], "image/png"),
       ("empty.jpg", b"", "image/jpeg"),
       ("letter.png", b"Dear colleague, please find attached", "image/png")]


def worklist(lang: str = "en") -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120).run()
    if lang != "en":
        at.radio(key="lang").set_value(lang).run()
    at.switch_page("pages/worklist.py").run()
    assert not at.exception
    return at


def seen(at: AppTest) -> str:
    return "\n".join(e.value for kind in ("title", "markdown", "caption", "error", "warning", "info")
                     for e in getattr(at, kind))


@pytest.fixture
def batch():
    at = worklist()
    at.file_uploader(key="wl_upload").set_value(GOOD + BAD).run()
    assert not at.exception, at.exception
    return at


def test_an_empty_worklist_asks_for_files():
    at = worklist()
    assert at.title[0].value == "Worklist"
    assert "Drag radiographs" in seen(at)


def test_a_batch_with_bad_files_gives_one_row_per_file_most_probable_first(batch):
    assert "7 results recorded." in seen(batch)  # each file kept once in the record, unreadable ones too
    table = batch.dataframe[0].value
    assert len(table) == len(GOOD) + len(BAD)
    assert set(table["file"]) == {name for name, _, _ in GOOD + BAD}

    good = table[table["error"] == ""]
    assert list(good["probability"]) == sorted(good["probability"], reverse=True)
    assert set(good["decision"]) <= {"NORMAL", "PNEUMONIA"}
    assert good["spread"].notna().all()

    bad = table[table["error"] != ""]
    assert set(bad["file"]) == {name for name, _, _ in BAD}
    assert (bad["decision"] == "unreadable").all()
    assert list(table["file"])[-len(BAD):] == list(bad["file"])  # errors sink to the bottom

    text = seen(batch)
    assert f"{len(GOOD) + len(BAD)} files" in text and f"unreadable: {len(BAD)}" in text
    assert "This file is empty." in batch.error[0].value and "letter.png" in batch.error[0].value
    assert "Download table (CSV)" in [b.label for b in batch.get("download_button")]


def test_decisions_follow_the_shared_threshold_without_a_new_upload(batch):
    batch.session_state["threshold"] = 0.0
    batch.run()
    table = batch.dataframe[0].value
    assert (table[table["error"] == ""]["decision"] == "PNEUMONIA").all()
    assert "Decisions at threshold 0.000 (custom)" in seen(batch)


def test_selecting_a_row_opens_that_image_in_diagnose_and_the_list_is_kept(batch):
    table = batch.dataframe[0].value
    top = table["file"].iloc[0]
    batch.session_state["wl_table"] = {"selection": {"rows": [0], "columns": []}}
    batch.run()
    assert not batch.exception
    assert batch.title[0].value == "Diagnose"
    assert f"Opened from the worklist: {top}" in seen(batch)
    assert "Probability of PNEUMONIA" in seen(batch)

    batch.switch_page("pages/worklist.py").run()
    assert "Showing your last worklist (7 files)" in seen(batch)
    assert len(batch.dataframe[0].value) == 7


def test_the_worklist_in_spanish():
    at = worklist("es")
    at.file_uploader(key="wl_upload").set_value(GOOD[:2] + BAD[:1]).run()
    assert not at.exception
    assert at.title[0].value == "Lista de trabajo"
    assert "3 archivos" in seen(at) and "ilegibles: 1" in seen(at)
    assert set(at.dataframe[0].value["decision"]) <= {"NORMAL", "NEUMONÍA", "ilegible"}
    assert "ilegible" in set(at.dataframe[0].value["decision"])
    assert "Este archivo está incompleto" in at.error[0].value  # the decoder's message, by its code, in Spanish


class FakeJob:
    """Stands in for the `python -m model archive score` child process (tests never start a real one)."""

    def __init__(self):
        self.returncode, self.terminated = None, False

    def poll(self):
        return self.returncode

    def terminate(self):
        self.terminated = True


def test_the_archive_expander_starts_a_job_on_a_server_folder_and_follows_its_progress(tmp_path, monkeypatch):
    from model.channels.archive import Output
    from pages.lib import archive_job

    monkeypatch.setenv("TORAX_STATE", str(tmp_path / "state"))
    started, job = [], FakeJob()

    def start(folder, name, bundle, site=None):
        started.append((folder, name, bundle, site))
        out = Output(archive_job.output_for(name))
        out.path.parent.mkdir(parents=True, exist_ok=True)
        out.progress(state="running", total=10, written=3, done_before=1, errors=1)
        archive_job._jobs()[name] = job
        return job

    monkeypatch.setattr(archive_job, "start", start)
    assert archive_job.problem(str(tmp_path / "nowhere"), "ward-a") == "archive_no_folder"
    assert archive_job.problem(str(tmp_path), "../etc") == "archive_bad_name"
    at = worklist()
    (tmp_path / "scans").mkdir()
    at.text_input(key="wl_archive_folder").input(str(tmp_path / "scans"))
    at.text_input(key="wl_archive_name").input("ward-a")
    at.button(key="wl_archive_start").click().run()
    assert not at.exception, at.exception
    assert started == [(str(tmp_path / "scans"), "ward-a", "pneumonia-kermany", None)]
    assert "4 of 10 files · unreadable: 1" in at.get("progress")[0].proto.text

    at.button(key="wl_archive_stop").click().run()
    assert job.terminated
    job.returncode = 0
    Output(archive_job.output_for("ward-a")).progress(state="done", written=9, rows=10)
    at.run()
    assert "Done: 10 rows in" in "\n".join(e.value for e in at.success)
