"""The PDF report: parsed back with pypdf, it says the result, the threshold and what it means (and on which
evidence), the warnings and the model version, and shows two pictures. Also `predict --pdf-dir`."""
import io
import json
from dataclasses import replace

import cv2
import numpy as np
from pypdf import PdfReader

from model.core.types import Result, Task

from helpers.cli import run_cli
from helpers.images import toy_chest


class Bundle:
    name, version, title, task, classes = "pneumonia-kermany", "2026-01-01-test", "Pneumonia (test)", "binary", \
        ["NORMAL", "PNEUMONIA"]
    operating_points = [{"name": "balanced", "threshold": 0.5, "val_sensitivity": 0.9, "val_specificity": 0.8}]
    manifest = {}

    def __init__(self, scores=None):
        self.scores = scores

    def read_report(self, name):
        return self.scores if name == "scores" else None


RESULT = Result(file="x.png", bundle="pneumonia-kermany", task=Task.BINARY, probability=0.8125,
                probabilities={"NORMAL": 0.1875, "PNEUMONIA": 0.8125}, members={"cnn": 0.8}, spread=0.02,
                threshold=0.5, operating_point="balanced", label="PNEUMONIA",
                warnings=[{"code": "outside_intended_population", "message": "This looks like an adult's X-ray."}],
                error=None, meta={"format": "png"})


def text_of(pdf: bytes) -> str:
    return " ".join(" ".join((page.extract_text() or "").split()) for page in PdfReader(io.BytesIO(pdf)).pages)


def test_the_pdf_states_result_threshold_meaning_warnings_and_version():
    from model.outputs.pdf_report import pdf_report

    scores = {"task": "binary", "split": "internal-test", "y": [1, 1, 1, 1, 0, 0, 0, 0],
              "ensemble": [0.9, 0.8, 0.6, 0.2, 0.1, 0.3, 0.4, 0.7]}
    gray = toy_chest((200, 160), True, seed=1)
    pdf = pdf_report(RESULT, Bundle(scores), gray, np.dstack([gray] * 3))
    assert pdf.startswith(b"%PDF")
    reader = PdfReader(io.BytesIO(pdf))
    text = text_of(pdf)
    assert "Decision support, not for diagnosis" in text and "2026-01-01-test" in text
    assert "PNEUMONIA" in text and "0.812" in text and "Threshold 0.500" in text and "balanced" in text
    # 3 of 4 positives and 3 of 4 negatives are on the right side of 0.5, on the bundle's internal test scores.
    assert "sensitivity is 75.0%" in text and "specificity 75.0%" in text and "internal test split" in text
    assert "This looks like an adult's X-ray." in text
    assert "x.png" not in text  # no file names: they often carry the patient's name
    images = sum(len(page.images) for page in reader.pages)
    assert images == 2


def test_without_scores_the_meaning_comes_from_the_operating_points_validation_figures():
    from model.outputs.pdf_report import pdf_report, threshold_meaning

    meaning = threshold_meaning(Bundle(), 0.5)
    assert meaning["sensitivity"] == 0.9 and meaning["split"] == "val"
    assert threshold_meaning(Bundle(), 0.42) is None
    text = text_of(pdf_report(replace(RESULT, threshold=0.42, operating_point=None), Bundle()))
    assert "No evaluation figures are available" in text and "custom" in text


def test_a_chest_check_failure_reads_not_assessed_and_a_decode_error_is_stated():
    from model.outputs.pdf_report import pdf_report

    warning = {"code": "not_chest_xray", "message": "This does not look like a frontal chest X-ray."}
    text = text_of(pdf_report(replace(RESULT, warnings=[warning]), Bundle()))
    assert "Not assessed" in text and "does not look like a frontal chest X-ray" in text
    failed = replace(RESULT, error={"code": "unreadable", "message": "This file is not an image we can read."},
                     probability=None, probabilities=None, label=None)
    assert "This file is not an image we can read." in text_of(pdf_report(failed, Bundle()))


def test_predict_writes_one_pdf_per_file(tiny_bundles, tmp_path):
    image = tmp_path / "chest.png"
    cv2.imwrite(str(image), toy_chest((220, 180), True, seed=3))
    run = run_cli(["predict", image, "--json", "--pdf-dir", tmp_path / "pdf"], tiny_bundles)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout.splitlines()[-1])
    [pdf] = (tmp_path / "pdf").glob("*.pdf")
    assert pdf.name == "0000-chest-report.pdf"
    text = text_of(pdf.read_bytes())
    assert f"{result['probability']:.3f}" in text and "Decision support" in text
