"""Real radiographs: which files, which patient (the split unit), which population, and what uploads do to them.

The guard's positives are the radiographs of both data sets; the radiograph classifier also trains on an altered
copy of each (augment_radiograph). Splits are by group: patient here, seed or source picture for the negatives.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFont

from model.core import guard as G
from model.io import decode

SPLITS = ("train", "val", "test")
FRACTIONS = (0.6, 0.2, 0.2)
ADULT_AGE = 18


def read_radiographs(kermany: str | Path, nih: str | Path) -> pd.DataFrame:
    """One row per radiograph: path, dataset, group (patient), kind (source resolution), population, age."""
    kermany, nih = Path(kermany), Path(nih)
    k = pd.read_csv(kermany / "manifest.csv", dtype={"patient_id": str})
    # Kermany patient ids are only meaningful inside one official split.
    k = pd.DataFrame({"path": [str(kermany / p) for p in k["path"]], "dataset": "kermany",
                      "group": "kermany:" + k["split"].astype(str) + ":" + k["patient_id"].astype(str),
                      "kind": "kermany-" + k["source_kind"].str.replace("_", "-"),
                      "population": "pediatric", "age": np.nan})
    n = pd.read_csv(nih / "labels.csv", dtype={"patient_id": str})
    age = pd.to_numeric(n["patient_age"], errors="coerce")
    n = pd.DataFrame({"path": [str(nih / p) for p in n["path"]], "dataset": "nih",
                      "group": "nih:" + n["patient_id"], "kind": "nih-" + n["written_width"].astype(str),
                      "population": np.where(age >= ADULT_AGE, "adult", "minor"), "age": age})
    return pd.concat([k, n], ignore_index=True)


def split_groups(groups, seed: int) -> np.ndarray:
    """train/val/test per row, whole groups at a time, in FRACTIONS."""
    unique = np.array(sorted(set(groups)))
    order = np.random.default_rng(seed).permutation(len(unique))
    cut = np.cumsum(np.array(FRACTIONS) * len(unique)).astype(int)
    where = {}
    for rank, i in enumerate(order):
        where[unique[i]] = SPLITS[int(np.searchsorted(cut, rank, side="right"))]
    return np.array([where[g] for g in groups])


def _decode_work(path: str) -> np.ndarray:
    return G.working_copy(decode(Path(path).read_bytes(), path).pixels)


def load_working_copies(paths) -> list[np.ndarray]:
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        return list(pool.map(_decode_work, paths, chunksize=64))


def augment_radiograph(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """What real uploads do to a radiograph: crops and borders, tilt, exposure, burnt-in markers, recompression."""
    h, w = img.shape
    a = img
    if rng.random() < 0.5 and min(h, w) * 0.8 >= G.MIN_SIDE:  # crop (never below what the check can judge)
        t, b, l, r = (rng.uniform(0, 0.1, 4) * [h, h, w, w]).astype(int)
        a = a[t:h - b or h, l:w - r or w]
    if rng.random() < 0.3:  # border (scanned film, exported with a frame)
        pad = (rng.uniform(0, 0.08, 4) * [h, h, w, w]).astype(int)
        a = cv2.copyMakeBorder(a, *map(int, pad), cv2.BORDER_CONSTANT, value=int(rng.choice([0, 0, 255, 128])))
    if rng.random() < 0.5:
        m = cv2.getRotationMatrix2D((a.shape[1] / 2, a.shape[0] / 2), rng.uniform(-8, 8), rng.uniform(0.95, 1.1))
        a = cv2.warpAffine(a, m, (a.shape[1], a.shape[0]), borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    f = a.astype(np.float32) / 255.0
    f = f ** rng.uniform(0.6, 1.6)
    f = f * rng.uniform(0.8, 1.2) + rng.uniform(-0.08, 0.08)
    if rng.random() < 0.3:
        f = cv2.GaussianBlur(f, (0, 0), rng.uniform(0.5, 1.5))
    if rng.random() < 0.3:
        f = f + rng.normal(0, rng.uniform(0.005, 0.03), f.shape).astype(np.float32)
    a = np.clip(f * 255 + 0.5, 0, 255).astype(np.uint8)
    if rng.random() < 0.4:  # side marker or label, as burnt into many radiographs
        pil = Image.fromarray(a)
        d = ImageDraw.Draw(pil)
        size = max(8, int(min(a.shape) * rng.uniform(0.04, 0.09)))
        text = str(rng.choice(["L", "R", "PORTABLE", "AP", "PA", "SUPINE", "ERECT", "L  SITTING"]))
        d.text((rng.uniform(0.02, 0.7) * a.shape[1], rng.uniform(0.02, 0.85) * a.shape[0]), text,
               fill=int(rng.choice([255, 230, 0])), font=ImageFont.load_default(size=size))
        a = np.asarray(pil)
    if rng.random() < 0.3:
        ok, buf = cv2.imencode(".jpg", a, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(30, 90))])
        a = cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE)
    return np.ascontiguousarray(a)
