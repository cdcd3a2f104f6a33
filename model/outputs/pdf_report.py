"""A one-page PDF report for any analysed upload (DICOM or not): the image and the overlay, the result, the threshold
and what it means (sensitivity and specificity at that threshold, and on which evidence), the warnings and the model
version. Made in memory with reportlab (BSD).

Like the other reports, it carries no patient identifiers and not the uploaded file's name.
"""
from __future__ import annotations

from datetime import UTC, datetime
from io import BytesIO
from xml.sax.saxutils import escape

import cv2
import numpy as np
from reportlab.lib import colors
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import getSampleStyleSheet
from reportlab.lib.units import mm
from reportlab.platypus import Image, Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

from model.core.metrics import confusion, rates
from model.core.preprocess import shrink
from model.core.types import Finding, Result, Task
from model.outputs.dicom_results import DISCLAIMER

__all__ = ["threshold_meaning", "pdf_report", "write_pdf"]

SPLIT_NAMES = {"internal-test": "the internal test split", "test": "the test split", "val": "the validation split"}


def threshold_meaning(bundle, threshold) -> dict | None:
    """Sensitivity and specificity at `threshold` for a binary bundle, with where they come from:
    the bundle's per-image evaluation scores when it ships them (any threshold), else the validation figures of the
    operating point at exactly this threshold. None when neither is there (or not a binary bundle)."""
    if bundle.task != Task.BINARY or not isinstance(threshold, (int, float)):
        return None
    scores = bundle.read_report("scores")
    if scores and scores.get("task") == "binary" and scores.get("y") is not None:
        y = np.asarray(scores["y"]).ravel()
        counts = confusion(y, np.asarray(scores["ensemble"]).ravel(), float(threshold))
        r = rates(counts)
        split = scores.get("split", "evaluation")
        return {"sensitivity": r["sensitivity"], "specificity": r["specificity"], "n": int(y.size),
                "positives": int(counts["tp"] + counts["fn"]), "split": split,
                "source": f"{SPLIT_NAMES.get(split, split)} of the bundle ({y.size} images, "
                          f"{counts['tp'] + counts['fn']} positive), scored once after training"}
    for point in bundle.operating_points:
        if "threshold" in point and abs(float(point["threshold"]) - float(threshold)) < 1e-9 \
                and "val_sensitivity" in point:
            return {"sensitivity": point["val_sensitivity"], "specificity": point["val_specificity"], "n": None,
                    "positives": None, "split": "val",
                    "source": f"the validation split, on which the '{point['name']}' operating point was chosen "
                              "(optimistic)"}
    return None


def _png_file(pixels: np.ndarray, max_side: int = 900) -> BytesIO:
    image = shrink(np.asarray(pixels), max_side)
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, buffer = cv2.imencode(".png", image)
    return BytesIO(buffer.tobytes())


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return "—" if value != value else f"{value:.{digits}f}"
    if isinstance(value, dict):
        return ", ".join(f"{k} {_fmt(v, digits)}" for k, v in value.items())
    if isinstance(value, list):
        return ", ".join(map(str, value)) or "none"
    return str(value)


def pdf_report(result: Result, bundle, image: np.ndarray | None = None, overlay_rgb: np.ndarray | None = None,
               generated: str | None = None) -> bytes:
    """The report as PDF bytes. `image` is the decoded grayscale upload, `overlay_rgb` its Grad-CAM overlay."""
    styles = getSampleStyleSheet()
    body, small = styles["BodyText"], styles["Italic"]
    p = lambda text, style=body: Paragraph(escape(str(text)), style)  # noqa: E731
    generated = generated or datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    story = [Paragraph("Tórax report", styles["Title"]),
             p(f"{DISCLAIMER}. Generated {generated}. Model: {bundle.title} ({bundle.name}), version "
               f"{bundle.version}.", small),
             Spacer(1, 4 * mm)]

    if image is not None or overlay_rgb is not None:
        cells, width = [], 85 * mm
        for pixels in (image, overlay_rgb):
            if pixels is None:
                continue
            h, w = np.asarray(pixels).shape[:2]
            cells.append(Image(_png_file(pixels), width=width * min(1, w / h), height=width * min(1, h / w)))
        captions = [p("Image", small)] + ([p("Where the models looked (Grad-CAM, ensemble)", small)]
                                          if overlay_rgb is not None and image is not None else [])
        story += [Table([cells, captions[:len(cells)]]), Spacer(1, 4 * mm)]

    if result.failed:
        story.append(p(f"This file could not be analysed: {result.error.get('message')}"))
    else:
        decision = "Not assessed (see the warnings)" if result.finding == Finding.NOT_ASSESSED else _fmt(result.label)
        rows = [["Result", decision],
                ["Probability" if result.probability is not None else "Probabilities",
                 _fmt(result.probability if result.probability is not None else result.probabilities)],
                ["Threshold", _fmt(result.threshold)],
                ["Operating point", result.operating_point or ("custom" if result.threshold is not None else "—")]]
        if result.site:
            rows.append(["Site profile", str(result.site)])
        if result.spread is not None:
            rows.append(["Member spread", _fmt(result.spread)])
        story.append(Table([[p(a), p(b)] for a, b in rows], colWidths=[45 * mm, 120 * mm],
                           style=TableStyle([("LINEBELOW", (0, 0), (-1, -1), 0.3, colors.lightgrey),
                                             ("VALIGN", (0, 0), (-1, -1), "TOP")])))
        meaning = threshold_meaning(bundle, result.threshold)
        story.append(Spacer(1, 3 * mm))
        story.append(Paragraph("What the threshold means", styles["Heading3"]))
        if meaning:
            positive = bundle.classes[-1]
            story.append(p(f"At threshold {_fmt(result.threshold)}, sensitivity is {meaning['sensitivity']:.1%} "
                           f"(share of {positive} images called {positive}) and specificity "
                           f"{meaning['specificity']:.1%} (share of {bundle.classes[0]} images called "
                           f"{bundle.classes[0]}), measured on {meaning['source']}. Other hospitals, devices and "
                           "populations will see lower figures."))
        else:
            story.append(p("No evaluation figures are available for this threshold in this model bundle."))
    story.append(Paragraph("Warnings", styles["Heading3"]))
    warnings = result.warnings
    story += [p(f"• {w.get('message')}") for w in warnings] or [p("None.")]
    story += [Spacer(1, 4 * mm),
              p(bundle.manifest.get("intended_use") or "Decision support for trained readers of chest radiographs. "
                "Not a diagnosis: it must not be used alone to make clinical decisions. Always read the image "
                "yourself.", small)]
    buffer = BytesIO()
    SimpleDocTemplate(buffer, pagesize=A4, leftMargin=18 * mm, rightMargin=18 * mm, topMargin=15 * mm,
                      bottomMargin=15 * mm, title="Tórax report", author="Tórax").build(story)
    return buffer.getvalue()


def write_pdf(path, result, bundle, decoded, explainer) -> None:
    """`python -m model predict --pdf-dir`: the report for one file, with the ensemble Grad-CAM overlay when the file
    could be decoded."""
    from pathlib import Path

    from model.core.explain import overlay

    picture = None
    if decoded is not None and explainer is not None:
        picture = overlay(decoded.pixels, explainer.cams(decoded.pixels, "gradcam")["ensemble"])
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(pdf_report(result, bundle, decoded.pixels if decoded is not None else None, picture))
