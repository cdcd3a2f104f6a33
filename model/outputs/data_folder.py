"""Radiographs in a dataset folder on this computer (never required: the app works without one): where the folder
is, a few example images per class, and the internal-test mistakes with the ensemble's Grad-CAM laid over them.
Files are read with `model.io.decode`, as any upload is. Never imports Streamlit or training/.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from model.core.preprocess import shrink
from model.io import DecodeError, decode

REPO_ROOT = Path(__file__).resolve().parent.parent.parent

def default_data_dir() -> str:
    """$TORAX_DATA_DIR, else ../shared/data/kermany next to the repository when it exists, else ""."""
    if os.environ.get("TORAX_DATA_DIR"):
        return os.environ["TORAX_DATA_DIR"]
    shared = (REPO_ROOT.parent / "shared" / "data" / "kermany").resolve()
    return str(shared) if shared.is_dir() else ""


def data_dir_ok(data_dir: str | None) -> bool:
    return bool(data_dir) and Path(data_dir).expanduser().is_dir()


IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png", ".dcm", ".tif", ".tiff", ".bmp", ".webp"}


def sample_paths(data_dir: str, classes: list[str], per_class: int = 6, seed: int = 0) -> dict[str, list[Path]]:
    """A few image files per class from a dataset folder: from its manifest.csv (path, label) when it has one,
    else from `<class>/` sub-folders anywhere below it (the public chest_xray layout). Reproducible for a seed."""
    root = Path(data_dir).expanduser()
    rng = np.random.default_rng(seed)
    found: dict[str, list[Path]] = {}
    manifest = root / "manifest.csv"
    if manifest.is_file():
        df = pd.read_csv(manifest, usecols=lambda c: c in {"path", "label"})
        for c in classes:
            paths = df.loc[df["label"] == c, "path"].to_numpy() if "label" in df else np.array([])
            pick = rng.choice(paths, min(per_class, len(paths)), replace=False) if len(paths) else []
            found[c] = [root / p for p in pick]
        return found
    for c in classes:
        paths = sorted(p for d in root.rglob(c) if d.is_dir() for p in d.iterdir()
                       if p.suffix.lower() in IMAGE_SUFFIXES)
        pick = rng.choice(len(paths), min(per_class, len(paths)), replace=False) if paths else []
        found[c] = [paths[i] for i in pick]
    return found


def thumbnail(path: str | Path, side: int) -> np.ndarray | None:
    """The image at `path` decoded and shrunk to at most `side` pixels on its longest side, or None when it cannot
    be read."""
    try:
        gray = decode(Path(path).read_bytes(), Path(path).name).pixels
    except (OSError, DecodeError):
        return None
    return shrink(gray, side)


def examples(data_dir: str, classes: list[str], per_class: int = 6, seed: int = 0,
             side: int = 320) -> dict[str, list[tuple[str, np.ndarray | None]]]:
    """{class: [(file name, downsized uint8 image or None when unreadable)]}: `sample_paths` decoded."""
    return {cls: [(Path(path).name, thumbnail(path, side)) for path in paths]
            for cls, paths in sample_paths(data_dir, classes, per_class, seed).items()}


def explained(items: list[dict], data_dir: str | Path, explainer, class_name: str, side: int = 360) -> list[dict]:
    """Each item ({path, ...}, path relative to `data_dir`) with "image": the ensemble Grad-CAM for `class_name`
    laid over the downsized image, or None when the file cannot be read."""
    from model.core.explain import overlay
    from model.core.types import CamMethod

    out = []
    for item in items:
        path = Path(data_dir).expanduser() / item["path"]
        try:
            gray = decode(path.read_bytes(), path.name).pixels
        except (OSError, DecodeError):
            out.append({**item, "image": None})
            continue
        cam = explainer.cams(gray, CamMethod.GRADCAM, class_name)["ensemble"]
        out.append({**item, "image": overlay(shrink(gray, side), cam)})
    return out
