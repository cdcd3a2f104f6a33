"""The record in the app as a reader drives it (Streamlit AppTest, tiny real bundle): Diagnose keeps each result
once and takes the reader's read (the Worklist's record: tests/test_app_worklist.py); a database that can't be used
says "recording pending" and blocks nothing; the sidebar setting turns recording off; the Monitoring page shows a
period's numbers and alarms in English and Spanish, and refits a site profile from the record."""
from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from model.core.bundle import load_bundle
from model.store.db import Store, utc_now

from helpers.images import png_bytes, radiograph
from helpers.records import write

APP = str(Path(__file__).resolve().parent.parent / "app.py")
pytestmark = pytest.mark.usefixtures("app_on_tiny_bundles")


def seen(at: AppTest) -> str:
    parts = [e.value for kind in ("title", "markdown", "caption", "error", "warning", "info", "success",
                                  "subheader") for e in getattr(at, kind)]
    parts += [f"{m.label}: {m.value}" for m in at.metric]
    return "\n".join(str(p) for p in parts)


@pytest.fixture
def record(tiny_bundles, tmp_path, monkeypatch):
    """A state folder of this test's own holding 60 results of the tiny bundle from the last two days: 15 not
    recognised as chest X-rays (far above the input check's measured 0.4%), all confirmed."""
    monkeypatch.setenv("TORAX_STATE", str(tmp_path))
    monkeypatch.setenv("TORAX_SITES", str(tmp_path / "sites"))
    bundle = load_bundle(tiny_bundles / "pneumonia-kermany", models=False)
    store = Store.open()
    y = np.r_[np.zeros(30, int), np.ones(30, int)]
    p = np.clip(np.where(y == 1, 0.7, 0.3) + np.random.default_rng(0).normal(0, 0.15, 60), 0.01, 0.99)
    write(store, bundle, p, y, warnings=[("not_chest_xray",) if i % 4 == 0 else () for i in range(60)],
          start=utc_now() - timedelta(days=2), every=timedelta(minutes=1))
    yield store
    store.close()


def test_monitoring_shows_the_period_and_its_alarms_and_refits_a_site_profile(record, tmp_path, monkeypatch):
    from functools import partial

    from model.sites import profiles as sites

    monkeypatch.setattr(sites, "fit", partial(sites.fit, repeats=1, boot=100))  # the same fit, sooner
    at = AppTest.from_file(APP, default_timeout=120).run()
    at.switch_page("pages/monitoring.py").run()
    assert not at.exception, at.exception
    text = seen(at)
    assert at.title[0].value == "Monitoring" and "Results: 60" in text and "Alarms: 1" in text
    assert "guard\\_rate\\_not\\_chest\\_xray" in text and "Check the source" in text
    assert "Confirmed: 45" in text  # the 15 that are not chest X-rays are not assessed
    assert any(t.value.startswith("At the") for t in at.caption)
    table = next(d.value for d in at.dataframe if "Measure" in d.value.columns)
    assert list(table["Measure"])[:2] == ["Sensitivity", "Specificity"]

    at.text_input(key="mon_refit_name").input("from-record").run()  # the button waits for a name
    at.button(key="mon_refit").click().run()
    assert not at.exception, at.exception
    assert "Saved site profile from-record" in seen(at) and "fitted on 45 confirmed results" in seen(at)
    assert (tmp_path / "sites" / "from-record.json").exists()
    at.button(key="mon_refit").click().run()  # the same name again: asks before replacing
    assert "already exists" in seen(at)

    at.radio(key="lang").set_value("es").run()
    assert at.title[0].value == "Seguimiento" and "Resultados: 60" in seen(at)


def test_diagnose_records_once_and_takes_the_readers_read(tmp_path, monkeypatch):
    monkeypatch.setenv("TORAX_STATE", str(tmp_path))
    at = AppTest.from_file(APP, default_timeout=120).run()
    at.file_uploader(key="dx_upload").set_value(("chest.png", png_bytes(radiograph(seed=11)), "image/png")).run()
    assert not at.exception, at.exception
    caption = next(c.value for c in at.caption if c.value.startswith("Recorded as "))
    rid = caption.removeprefix("Recorded as ").rstrip(".")
    at.radio(key=f"rec_label_{rid}").set_value("positive")
    at.text_input(key=f"rec_note_{rid}").input("right lower lobe").run()  # the button waits for a label
    at.button(key="rec_confirm").click().run()
    assert "Your read is recorded: PNEUMONIA." in seen(at)
    at.slider(key="dx_threshold").set_value(0.9).run()  # a rerun, another threshold: not a new record
    store = Store.open()
    assert store.count() == {"results": 1, "confirmations": 1}
    assert store.result(rid)["confirmed"]["note"] == "right lower lobe"

    assert store.result(rid)["channel"] == "app-diagnose"

    at.toggle(key="record").set_value(False).run()  # the sidebar setting
    at.file_uploader(key="dx_upload").set_value(("other.png", png_bytes(radiograph(seed=12)), "image/png")).run()
    assert "Not recorded" in seen(at) and store.count()["results"] == 1
    store.close()


def test_a_database_that_cant_be_used_leaves_the_reader_working_and_says_so(tmp_path, monkeypatch):
    foreign = tmp_path / "records.sqlite3"
    foreign.write_bytes(b"not a database, but somebody's file" * 20)
    monkeypatch.setenv("TORAX_STATE", str(tmp_path))
    at = AppTest.from_file(APP, default_timeout=120).run()
    at.file_uploader(key="dx_upload").set_value(("chest.png", png_bytes(radiograph(seed=13)), "image/png")).run()
    assert not at.exception, at.exception
    text = seen(at)
    assert "Recording pending" in text and any(m.value.startswith("## ") for m in at.markdown)  # still an answer
    assert (tmp_path / "records-spool.jsonl").exists()
    at.switch_page("pages/monitoring.py").run()
    assert "The record can't be read right now" in seen(at) and "is not a SQLite database" in seen(at)
    assert foreign.read_bytes() == b"not a database, but somebody's file" * 20


def test_one_days_volume_is_a_visible_bar():
    # Seen in Chromium: on plotly's date axis a single day's bar is a millisecond wide, so the chart looked empty.
    from pages.lib.monitoring_view import volume_figure

    fig = volume_figure({"volume": {"by": "day", "counts": {"2026-12-01": 363}}}, lambda key, **_: key)
    assert fig.layout.xaxis.type == "category" and list(fig.data[0].y) == [363]
