"""Read a chest X-ray dataset, split it by patient, and cache it as uint8 model input.

Two layouts are accepted: a folder with `manifest.csv` (as in ../shared/data/kermany) or the public
`chest_xray/{train,val,test}/{NORMAL,PNEUMONIA}` download. Images of one patient — and exact or near-identical
copies of one radiograph — always land in the same split.
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from model.core.preprocess import to_model_input
from model.sites.labelled_sets import KERMANY_PERSON

IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png", ".dcm", ".tif", ".tiff", ".bmp", ".webp"}
SPLITS = ("train", "val", "test")

# Kermany file names: person1372_bacteria_3501.jpeg, IM-0115-0001.jpeg, NORMAL2-IM-0587-0001-0001.jpeg
_IM = re.compile(r"^((?:NORMAL2-)?IM-\d+)", re.IGNORECASE)


def parse_kermany_name(name: str, label: str) -> tuple[str, str]:
    """(patient_id, subtype) from a Kermany file name; subtype is normal, bacteria or virus."""
    stem = Path(name).stem
    if m := KERMANY_PERSON.match(stem):
        return m.group(1).lower(), m.group(2).lower()
    if m := _IM.match(stem):
        return m.group(1).upper(), "normal" if label == "NORMAL" else "unknown"
    return stem, "normal" if label == "NORMAL" else "unknown"


def read_dataset(root: str | Path) -> pd.DataFrame:
    """One row per image: path (absolute), label, subtype, patient_id, source_split (+ manifest extras)."""
    root = Path(root)
    if (root / "manifest.csv").exists():
        df = pd.read_csv(root / "manifest.csv")
        df["path"] = [str(root / p) for p in df["path"]]
        df = df.rename(columns={"split": "source_split"})
    elif (root / "labels.csv").exists():  # NIH ChestX-ray14 style: pipe-separated findings, one patient column
        df = pd.read_csv(root / "labels.csv", dtype={"patient_id": str})
        df["path"] = [str(root / p) for p in df["path"]]
        df["finding_labels"] = df["finding_labels"].fillna("No Finding")
        df["label"] = np.where(df["finding_labels"] == "No Finding", "NO_FINDING", "FINDING")
        df["subtype"] = df["label"].str.lower()
        df["source_split"] = df.get("split", "train")
    else:
        df = _read_folder_layout(root)
    if df.empty:
        raise ValueError(f"No images found under {root}")
    if "subtype" not in df:
        df["subtype"] = [parse_kermany_name(p, l)[1] for p, l in zip(df["path"], df["label"])]
    # The official test split reuses personN numbers for other children, so its ids live in their own namespace.
    df["patient_id"] = np.where(df["source_split"] == "test", "test:" + df["patient_id"].astype(str),
                                df["patient_id"].astype(str))
    return df.reset_index(drop=True)


def _read_folder_layout(root: Path) -> pd.DataFrame:
    if (root / "chest_xray").is_dir():
        root = root / "chest_xray"
    rows = []
    # A plain labelled folder ({NORMAL,PNEUMONIA}/ with no split level) is one "external" split.
    layout = [(s, root / s) for s in SPLITS if (root / s).is_dir()] or [("external", root)]
    for split, folder in layout:
        for label_dir in sorted(folder.glob("*")):
            if not label_dir.is_dir():
                continue
            label = label_dir.name.upper()
            for path in sorted(label_dir.iterdir()):
                if path.suffix.lower() in IMAGE_SUFFIXES:
                    pid, subtype = parse_kermany_name(path.name, label)
                    rows.append({"path": str(path), "label": label, "subtype": subtype,
                                 "patient_id": pid, "source_split": split})
    return pd.DataFrame(rows, columns=["path", "label", "subtype", "patient_id", "source_split"])


def cached_array(cache_dir: str | Path | None, prefix: str, key, compute) -> np.ndarray:
    """`compute()`, kept as `<cache_dir>/<prefix>-<digest of key>.npy` (`key`: anything JSON can write that names
    what the array was made from); recomputed every time without a cache folder."""
    if not cache_dir:
        return compute()
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"{prefix}-{digest}.npy"
    if path.exists():
        return np.load(path)
    out = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, out)
    return out


def load_images(df: pd.DataFrame, spec: dict, cache_dir: str | Path | None = None) -> np.ndarray:
    """Decode every image once into an (N, H, W, C) uint8 array, cached on disk by file list and input spec."""
    def decode_all() -> np.ndarray:
        from model.io import decode

        out = np.empty((len(df), spec["height"], spec["width"], spec.get("channels", 1)), np.uint8)
        for i, path in enumerate(df["path"]):
            out[i] = to_model_input(decode(Path(path).read_bytes(), Path(path).name).pixels, spec)
        return out

    return cached_array(cache_dir, "images", [list(df["path"]), spec], decode_all)


def duplicate_groups(images: np.ndarray, threshold: float = 0.995) -> np.ndarray:
    """Group id per image: exact copies and near-identical radiographs (pixel correlation of 32×32 thumbnails
    above `threshold`) share a group. Correlation is computed in blocks to keep memory small."""
    thumbs = np.stack([cv2.resize(im[..., 0], (32, 32), interpolation=cv2.INTER_AREA) for im in images])
    v = thumbs.reshape(len(images), -1).astype(np.float32)
    v -= v.mean(axis=1, keepdims=True)
    v /= np.linalg.norm(v, axis=1, keepdims=True) + 1e-6
    parent = np.arange(len(images))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for start in range(0, len(v), 1024):
        corr = v[start:start + 1024] @ v.T
        for a, b in zip(*np.nonzero(corr > threshold)):
            a += start
            if a < b:
                parent[find(a)] = find(b)
    return np.array([find(i) for i in range(len(images))])


def split_by_patient(df: pd.DataFrame, fractions=(0.70, 0.15, 0.15), seed: int = 42,
                     dup_groups: np.ndarray | None = None, keep_official_test: bool = False) -> np.ndarray:
    """Assign train/val/test so that no patient (and no duplicate group) is in two splits.

    Groups are stratified by their dominant class/subtype and shuffled with `seed`; each stratum is cut at the
    requested image fractions. With `keep_official_test`, the public release's own test folder is the test split.
    """
    df = df.reset_index(drop=True)
    group = df["patient_id"].astype(str).to_numpy()
    if dup_groups is not None:  # merge patients that share a duplicated radiograph
        group = _merge_groups(group, dup_groups)
    split = pd.Series("", index=df.index, dtype=object)
    pool = df.index
    if keep_official_test:
        official = df["source_split"] == "test"
        split[official] = "test"
        pool = df.index[~official]
        fractions = (fractions[0], fractions[1], 0.0)
    rng = np.random.default_rng(seed)
    sub = df.loc[pool]
    strata = sub.groupby(group[pool])["subtype"].agg(lambda s: s.mode().iloc[0])
    bounds = np.cumsum(fractions) / np.sum(fractions)
    for _, groups in strata.groupby(strata):
        names = groups.index.to_numpy()
        rng.shuffle(names)
        sizes = sub.groupby(group[pool]).size().loc[names].to_numpy()
        position = (np.cumsum(sizes) - sizes / 2) / sizes.sum()
        which = np.searchsorted(bounds, position, side="right")
        for name, w in zip(names, which):
            split[pool[group[pool] == name]] = SPLITS[min(w, 2)]
    return split.to_numpy()


def _merge_groups(patients: np.ndarray, dup_groups: np.ndarray) -> np.ndarray:
    """Union patients that share a duplicate group; returns a merged group name per image."""
    parent: dict[str, str] = {}

    def find(x):
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    first_patient: dict[int, str] = {}
    for p, g in zip(patients, dup_groups):
        if g in first_patient:
            parent[find(p)] = find(first_patient[g])
        else:
            first_patient[g] = p
            find(p)
    return np.array([find(p) for p in patients])


def one_image_per_patient(df: pd.DataFrame, seed: int = 42) -> pd.DataFrame:
    """The origin documents' option: keep one image per patient and subtype (a child with both bacterial and viral
    pneumonia keeps one of each)."""
    return (df.groupby(["patient_id", "subtype"], group_keys=False).sample(n=1, random_state=seed)
            .sort_index().reset_index(drop=True))
