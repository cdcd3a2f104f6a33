"""How much of a bundle's Grad-CAM falls on the frame of the image, where markers and collimation edges sit.

The frame is the outer 10% on every side of the model input (36% of its area). A network that reads lungs puts
little of its ensemble CAM there; one that learned the "R" marker or the film edge puts its peak there. Measured
on the PNEUMONIA images of a labelled folder, the first `n` by file name, so two bundles see the same images.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from model.core.bundle import load_bundle
from model.core.explain import Explainer
from model.io import decode
from training import data as data_lib


def frame_mask(h: int, w: int, margin: float = 0.10) -> np.ndarray:
    mask = np.ones((h, w), bool)
    dh, dw = int(round(h * margin)), int(round(w * margin))
    mask[dh:h - dh, dw:w - dw] = False
    return mask


def frame_share(cam: np.ndarray, mask: np.ndarray) -> tuple[float, bool]:
    """(share of the CAM's mass in the frame, whether its peak lies in the frame)."""
    total = float(cam.sum())
    share = float(cam[mask].sum() / total) if total > 0 else float("nan")
    return share, bool(mask.flat[int(np.argmax(cam))])


def audit(bundle_path: str | Path, data: str | Path, n: int = 60, label: str = "PNEUMONIA") -> dict:
    bundle = load_bundle(bundle_path)
    explainer = Explainer(bundle)
    table = data_lib.read_dataset(data)
    paths = sorted(table.loc[table["label"] == label, "path"], key=lambda p: Path(p).name)[:n]
    mask = frame_mask(bundle.input_spec["height"], bundle.input_spec["width"])
    shares, peaks = [], []
    for path in paths:
        cam = explainer.cams(decode(Path(path).read_bytes(), Path(path).name).pixels, "gradcam")["ensemble"]
        share, peak = frame_share(cam, mask)
        shares.append(share)
        peaks.append(peak)
    return {"bundle": bundle.name, "version": bundle.version, "dataset": Path(data).name, "label": label,
            "n": len(paths), "frame_area": float(mask.mean()), "mean_frame_share": float(np.nanmean(shares)),
            "median_frame_share": float(np.nanmedian(shares)), "peak_in_frame": int(np.sum(peaks))}
