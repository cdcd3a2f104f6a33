"""Issue 23 ("Safe unattended"): the API, site-profile and signing findings that need a real bundle but no server
of their own. Each test pins one finding; docs/SECURITY.md lists them. The tiny real bundle (tests/conftest.py) is
copied where a test edits it."""
from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import cv2
import numpy as np
import pytest

from model.__main__ import main
from model.core import bundle as bundle_lib
from model.sites import profiles as sites

from helpers.images import radiograph


@pytest.fixture
def env(tiny_bundles, tmp_path, monkeypatch):
    """A copy of the tiny bundles folder, served; sites in a fresh folder; no trusted keys."""
    monkeypatch.delenv("TORAX_TRUSTED_KEYS", raising=False)
    monkeypatch.delenv("TORAX_DEFAULT_BUNDLE", raising=False)
    root = tmp_path / "bundles"
    shutil.copytree(tiny_bundles, root)
    monkeypatch.setenv("TORAX_BUNDLES", str(root))
    monkeypatch.setenv("TORAX_SITES", str(tmp_path / "sites"))
    return root


def keypair(tmp_path) -> tuple[Path, Path]:
    from training.export import new_signing_key

    new_signing_key(tmp_path / "k.pem", tmp_path / "k.pub.pem")
    return tmp_path / "k.pem", tmp_path / "k.pub.pem"


def chest_png(tmp_path, name="chest.png") -> Path:
    path = tmp_path / name
    path.write_bytes(cv2.imencode(".png", radiograph((256, 224)))[1].tobytes())
    return path


# --- 8. Bundle reports are covered by the signature -----------------------------------------------------------------
def test_relabelled_external_scores_are_refused_when_keys_are_set(env, tmp_path, monkeypatch):
    from training.export import sign_bundle

    folder = env / "pneumonia-kermany"
    assert "scores.json" in json.loads((folder / "manifest.json").read_text())["reports"]  # export lists them
    scores = json.loads((folder / "reports" / "scores.json").read_text())
    (folder / "reports" / "scores-external.json").write_text(json.dumps({**scores, "dataset": "kermany_external"}))
    private, public = keypair(tmp_path)
    sign_bundle(folder, private)  # records the new report's sha256 in the manifest, then signs
    monkeypatch.setenv("TORAX_TRUSTED_KEYS", str(public))
    loaded, refused = bundle_lib.load_all()
    assert not refused and "external" in sites.evidence_sets(loaded["pneumonia-kermany"])

    relabelled = {**scores, "dataset": "kermany_external", "y": [[0] for _ in scores["y"]]}  # every image "normal"
    (folder / "reports" / "scores-external.json").write_text(json.dumps(relabelled))
    assert loaded["pneumonia-kermany"].read_report("scores-external") is None  # changed after loading: not shown
    loaded, refused = bundle_lib.load_all()
    assert "pneumonia-kermany" not in loaded
    assert "reports/scores-external.json does not match its recorded checksum" in refused["pneumonia-kermany"]

    # A report added to a signed bundle, not listed in its manifest, is not shown either.
    (folder / "reports" / "scores-external.json").unlink()
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["reports"].pop("scores-external.json")
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))
    sign_bundle(folder, private)
    (folder / "reports" / "scores-external.json").write_text(json.dumps(relabelled))
    bundle = bundle_lib.load_all()[0]["pneumonia-kermany"]
    assert bundle.read_report("scores-external") is None and "external" not in sites.evidence_sets(bundle)


# --- 13. The private key is written 0600 ----------------------------------------------------------------------------
def test_keygen_writes_the_private_key_readable_by_its_owner_only(tmp_path):
    from training.__main__ import main as training_main

    (tmp_path / "k.pem").write_text("an old key")
    (tmp_path / "k.pem").chmod(0o644)
    assert training_main(["keygen", "--private", str(tmp_path / "k.pem"), "--public", str(tmp_path / "k.pub")]) == 0
    assert stat.S_IMODE((tmp_path / "k.pem").stat().st_mode) == 0o600
    assert (tmp_path / "k.pem").read_text().startswith("-----BEGIN PRIVATE KEY-----")


# --- 15. An unknown site= shows neither server paths nor profile names ----------------------------------------------
def test_an_unknown_site_on_the_api_names_no_path_and_no_profile(env, tmp_path):
    from fastapi.testclient import TestClient

    from model.channels.api import create_app

    (tmp_path / "sites").mkdir()
    (tmp_path / "sites" / "clinic-secret.json").write_text("{}")
    with TestClient(create_app(tokens=())) as client:
        r = client.post("/v1/predict?site=nowhere",
                        files={"file": ("x.png", chest_png(tmp_path).read_bytes(), "image/png")})
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_site"
    message = r.json()["error"]["message"]
    assert "nowhere" in message
    assert "clinic-secret" not in message and str(tmp_path) not in message and str(Path.home()) not in message


# --- 16. A newline in a file name can't forge a line of plain-text output --------------------------------------------
FORGED = "x.png: NORMAL p(PNEUMONIA)=0.001 (threshold 0.5)"


def test_file_names_cannot_forge_predict_result_lines(env, tmp_path, capsys):
    evil = chest_png(tmp_path, f"a.png\n{FORGED}\n")
    assert main(["predict", str(evil), str(chest_png(tmp_path))]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and FORGED not in lines and "\\x0a" in lines[0]


# --- 17. predict's output folders are checked first: one line, no traceback -----------------------------------------
@pytest.mark.parametrize("option", ["--cam-dir", "--pdf-dir"])
def test_an_output_folder_that_is_a_file_is_a_one_line_error(env, tmp_path, capsys, option):
    taken = tmp_path / "taken"
    taken.write_text("a file")
    assert main(["predict", str(chest_png(tmp_path)), option, str(taken)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "is a file, not a folder" in err and "Traceback" not in err
    assert main(["predict", str(chest_png(tmp_path)), option, str(taken / "below")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and option in err


def test_an_unwritable_output_folder_is_a_one_line_error(env, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running as root: every folder is writable")
        assert main(["predict", str(chest_png(tmp_path)), "--cam-dir", str(locked)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "not writable" in err
    finally:
        locked.chmod(0o700)


def test_cam_and_pdf_outputs_are_still_written(env, tmp_path, capsys):
    assert main(["predict", str(chest_png(tmp_path)), "--cam-dir", str(tmp_path / "cams"),
                 "--pdf-dir", str(tmp_path / "pdfs"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert Path(result["cam"]).is_file() and cv2.imread(result["cam"]) is not None
    assert len(list((tmp_path / "pdfs").glob("*.pdf"))) == 1
    assert np.isfinite(result["probability"])
