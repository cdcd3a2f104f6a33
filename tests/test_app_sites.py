"""The Evaluation page's "Check the model on your own images" as a reader drives it (Streamlit AppTest, tiny real
bundle): upload a ZIP of class folders → the same report as `site validate` → save as a site profile (asking before
replacing one) → choose it in the sidebar, and Diagnose/Evaluation say it is in use. A hostile ZIP is refused."""
from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from helpers.images import png_bytes, radiograph, sample_zip

APP = str(Path(__file__).resolve().parent.parent / "app.py")


pytestmark = pytest.mark.usefixtures("app_on_tiny_bundles")


def seen(at: AppTest) -> str:
    parts = [e.value for kind in ("markdown", "caption", "error", "warning", "info", "success", "subheader")
             for e in getattr(at, kind)]
    parts += [f"{m.label}: {m.value}" for m in at.metric]
    return "\n".join(str(p) for p in parts)


@pytest.fixture
def evaluation(tmp_path, monkeypatch):
    monkeypatch.setenv("TORAX_SITES", str(tmp_path / "sites"))
    at = AppTest.from_file(APP, default_timeout=240).run()
    at.switch_page("pages/evaluation.py").run()
    assert not at.exception, at.exception
    return at, tmp_path / "sites"


def test_upload_report_save_and_use_a_site_profile(evaluation):
    at, sites_dir = evaluation
    assert "Check the model on your own images" in seen(at)
    assert "no external scores" in seen(at)  # the tiny bundle has no scores-external.json
    at.file_uploader(key="sc_zip").set_value(("my-site.zip", sample_zip(), "application/zip")).run()
    at.button(key="sc_run").click().run()
    assert not at.exception, at.exception
    text = seen(at)
    assert "on 12 of your images (NORMAL 6, PNEUMONIA 6)" in text and "as shipped" in text
    assert "Images scored: 12" in text and "not_chest_xray ×1" in text
    assert "Only 6 NORMAL" in text  # few images: how wide the intervals are
    assert any(list(d.value.index) == ["balanced", "screening", "confirmatory"] for d in at.dataframe)

    at.text_input(key="sc_name").input("clinic-a").run()
    at.button(key="sc_save").click().run()
    assert not at.exception, at.exception
    saved = sites_dir / "clinic-a.json"
    assert saved.exists() and "Saved site profile clinic-a" in seen(at)
    before = saved.read_bytes()

    at.button(key="sc_save").click().run()  # the same name again: asks first, writes nothing
    assert "already exists. Replace it?" in seen(at) and saved.read_bytes() == before
    at.button(key="sc_cancel").click().run()
    assert "Replace it?" not in seen(at) and saved.read_bytes() == before
    at.button(key="sc_save").click().run()
    at.button(key="sc_replace").click().run()
    assert "Saved site profile clinic-a" in seen(at)

    assert at.selectbox(key="site").options == ["none (as shipped)", "clinic-a"]
    at.selectbox(key="site").set_value("clinic-a").run()
    assert not at.exception, at.exception
    assert "Site profile in use: **clinic-a**" in seen(at)
    assert "with site profile clinic-a" in seen(at)  # the report now applies it
    at.switch_page("pages/diagnose.py").run()
    assert not at.exception, at.exception
    at.file_uploader(key="dx_upload").set_value(("x.png", png_bytes(radiograph((512, 448), seed=9)), "image/png")).run()
    assert not at.exception, at.exception
    assert "Site profile in use: **clinic-a**" in seen(at)
    assert at.radio(key="dx_evidence").value == "site"  # the most external evidence first
    assert set(at.radio(key="dx_evidence").options) == {"This site, cross-validated (clinic-a, n=12)",
                                                        "Internal test (n=4)"}


def test_a_zip_that_climbs_out_of_itself_is_refused(evaluation):
    at, sites_dir = evaluation
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr("NORMAL/a.png", b"1")
        z.writestr("../../PNEUMONIA/b.png", b"2")
    at.file_uploader(key="sc_zip").set_value(("evil.zip", buffer.getvalue(), "application/zip")).run()
    at.button(key="sc_run").click().run()
    assert not at.exception, at.exception
    assert "points outside the archive" in "\n".join(e.value for e in at.error)
    assert "Images scored" not in seen(at)
    assert not sites_dir.exists() or not list(sites_dir.iterdir())


LINK = "[Session expired…](https://evil.example/login)"


def test_names_and_labels_in_refusals_are_shown_as_text(evaluation):
    """Issue 23, item 5: a CSV label, a ZIP folder name and the archive's own name are quoted in the refusals, as
    escaped Markdown: no link can come from them."""
    from model.outputs.safe_text import md_escape

    at, _ = evaluation
    errors = lambda: "\n".join(e.value for e in at.error)  # noqa: E731
    at.radio(key="sc_mode").set_value("files").run()
    at.file_uploader(key="sc_files").set_value(
        [("a.png", png_bytes(radiograph((512, 448), seed=1)), "image/png"),
         ("b.png", png_bytes(radiograph((512, 448), seed=2)), "image/png")]).run()
    at.file_uploader(key="sc_csv").set_value(
        ("labels.csv", f"path,label\na.png,NORMAL\nb.png,\"{LINK}\"\n".encode(), "text/csv")).run()
    at.button(key="sc_run").click().run()
    assert not at.exception, at.exception
    assert "Unknown label" in errors() and md_escape(LINK) in errors() and "](https" not in errors()

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr("NORMAL/a.png", png_bytes(radiograph((512, 448), seed=1)))
        z.writestr(f"{LINK}/b.png", png_bytes(radiograph((512, 448), seed=2)))
    at.radio(key="sc_mode").set_value("zip").run()
    at.file_uploader(key="sc_zip").set_value((f"{LINK}.zip", buffer.getvalue(), "application/zip")).run()
    at.button(key="sc_run").click().run()
    assert "Unknown class folder" in errors() and md_escape(LINK) in errors() and "](https" not in errors()

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr("NORMAL/a.png", png_bytes(radiograph((512, 448), seed=1)))
    at.file_uploader(key="sc_zip").set_value((f"{LINK}.zip", buffer.getvalue(), "application/zip")).run()
    at.button(key="sc_run").click().run()
    assert "labelled NORMAL" in errors() and md_escape(f"'{LINK}.zip'") in errors() and "](https" not in errors()
