"""The command line as a user runs it (`python -m model predict --json`, a real process) on a folder mixing
radiograph phantoms, pictures that are not radiographs and an identified DICOM: every file gets one JSON line,
the non-radiographs carry `not_chest_xray`, and no patient identifier reaches stdout or stderr."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from helpers.cli import run_cli
from helpers.dicom import secondary_capture
from helpers.images import colour_photo, ct_slice, document, overexposed, png_bytes, toy_chest

PATIENT = {"PatientName": "Zyxwobble^Quintessa^Marguerite", "PatientID": "PID-7781-9932",
           "PatientBirthDate": "19470312", "InstitutionName": "Qwertzuiop Infirmary",
           "ReferringPhysicianName": "Xandervelt^Oriel", "AccessionNumber": "ACC99817263"}


def _jpeg(arr: np.ndarray) -> bytes:
    return cv2.imencode(".jpg", arr, [cv2.IMWRITE_JPEG_QUALITY, 85])[1].tobytes()


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> dict[str, bool]:
    """{path: is it a non-radiograph the guard must flag}."""
    root = tmp_path_factory.mktemp("mixed")
    files = {
        "phantom-1.png": (png_bytes(toy_chest(seed=1)), False),
        "phantom-2.jpg": (_jpeg(toy_chest(seed=2, pneumonia=True)), False),
        "holiday.jpg": (_jpeg(colour_photo(seed=5)[..., ::-1]), True),
        "letter.png": (png_bytes(document(seed=2)), True),
        "ct.png": (png_bytes(ct_slice(seed=1)), True),
        "icon.png": (png_bytes(np.full((32, 32), 90, np.uint8)), True),
        "white.png": (png_bytes(overexposed()), True),
        "scan-ct.dcm": (secondary_capture(toy_chest(seed=3), Modality="CT", **PATIENT), True),
        "scan-cr.dcm": (secondary_capture(toy_chest(seed=4), **PATIENT), False),
    }
    out = {}
    for name, (data, flag) in files.items():
        (root / name).write_bytes(data)
        out[str(root / name)] = flag
    return out


@pytest.fixture(scope="module")
def cli(folder, tiny_bundles):
    done = run_cli(["predict", "--json", *folder], tiny_bundles)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_every_file_gets_one_result_line(cli, folder):
    results = [json.loads(line) for line in cli.stdout.splitlines() if line.strip()]
    assert [r["file"] for r in results] == list(folder)
    assert all(r["error"] is None and r["probability"] is not None for r in results)


def test_non_radiographs_are_flagged_not_chest_xray(cli, folder):
    for line in cli.stdout.splitlines():
        result = json.loads(line)
        found = {w["code"] for w in result["warnings"]}
        assert "guard_unavailable" not in found
        if folder[result["file"]]:
            assert "not_chest_xray" in found, result["file"]


def test_patient_identifiers_never_reach_output_or_stderr(cli):
    text = (cli.stdout + cli.stderr).lower()
    for value in PATIENT.values():
        for part in value.replace("^", " ").split():
            assert part.lower() not in text, part
