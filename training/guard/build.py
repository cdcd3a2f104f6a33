"""The whole job: describe the radiographs and the negatives, fit both classifiers, measure once on test, and
write guard.npz + metrics.json (rates, data, date, sha256 of guard.npz) for model/core/guard.py to load."""
from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import pandas as pd

from model.core import guard as G
from training.guard.fit import (
    CXR_PCA_K,
    POP_PCA_K,
    Described,
    RadiographSet,
    fit_pca,
    fit_population_classifier,
    fit_radiograph_classifier,
    prefixed,
)
from training.guard.measure import leave_one_family_out, measure, resolution_swap, timing
from training.guard.negatives import make_negatives
from training.guard.radiographs import augment_radiograph, load_working_copies, read_radiographs, split_groups


def train_guard(kermany: str | Path, nih: str | Path, out: str | Path, seed: int = 0, negatives_per_family: int = 400,
                loo: bool = True, log=print) -> dict:
    t0 = time.time()

    # Positives: every radiograph as it is, and an altered copy of each (what uploads do to radiographs).
    df = read_radiographs(kermany, nih)
    df["split"] = split_groups(df["group"].tolist(), seed)
    split = df["split"].to_numpy()
    log(f"radiographs: {len(df)} ({df.groupby('split').size().to_dict()}); decoding ...")
    works = load_working_copies(df["path"].tolist())
    real = Described.of(works)
    aug_rng = np.random.default_rng(seed + 7)
    augmented = [augment_radiograph(w, aug_rng) for w in works]
    altered = Described.of(augmented)
    log(f"radiographs ready ({time.time() - t0:.0f} s); generating negatives ...")

    # Negatives: generated pictures (and scikit-image's), split by seed or source picture.
    negatives = make_negatives(negatives_per_family, seed)
    neg_seen = Described.of([G.working_copy(n["decoded"].pixels) for n in negatives])
    neg = pd.DataFrame({k: [n[k] for n in negatives] for k in ("family", "group", "split")})
    neg["colour"] = [any(w["code"] == "color_image" for w in n["decoded"].warnings) for n in negatives]
    log(f"negatives: {len(neg)} in {neg.family.nunique()} families ({time.time() - t0:.0f} s)")

    # Is it a chest radiograph? The PCA (the novelty scores) is fitted on training radiographs only.
    params = {"feature_version": np.int32(G.FEATURE_VERSION),
              **prefixed(fit_pca(real.thumbs[split == "train"], CXR_PCA_K), "cxr_pca_")}
    radiograph_set = RadiographSet(
        real=real.cxr_vectors(params), altered=altered.cxr_vectors(params), real_split=split,
        negatives=neg_seen.cxr_vectors(params), neg_split=neg["split"].to_numpy(),
        neg_family=neg["family"].to_numpy(), neg_ruled=neg_seen.ruled_out())
    model, threshold, colour_threshold = fit_radiograph_classifier(radiograph_set, seed)
    params.update(model)
    params["cxr_threshold"] = np.float32(threshold)
    params["cxr_threshold_colour"] = np.float32(max(threshold, colour_threshold))
    log(f"radiograph classifier: threshold {threshold:.3f}, colour threshold {colour_threshold:.3f}")

    # Child or adult? NIH patients under 18 belong to neither class.
    in_population_task = df["population"].isin(["pediatric", "adult"]).to_numpy()
    adult = (df["population"] == "adult").to_numpy().astype(float)
    params.update(prefixed(fit_pca(real.thumbs[(split == "train") & in_population_task], POP_PCA_K), "pop_pca_"))
    pop_x = real.population_vectors(params)
    pop_model, pop_threshold = fit_population_classifier(
        pop_x, adult, (split == "train") & in_population_task, (split == "val") & in_population_task, seed)
    params.update(pop_model)
    params["pop_threshold"] = np.float32(pop_threshold)
    log(f"population classifier: threshold {pop_threshold:.3f}")

    # Measured once on test, through the same check() serving runs.
    params = {k: np.asarray(v) for k, v in params.items()}
    metrics = measure(df, works, augmented, negatives, neg, params, log)
    if loo:
        metrics["not_chest_xray"]["leave_one_family_out"] = leave_one_family_out(
            radiograph_set, neg["colour"].to_numpy(), seed)
    metrics["population"]["resolution_swap"] = resolution_swap(df, pop_x, adult, seed)
    metrics["timing_ms"] = timing(works, params)

    data = _npz_bytes(params)
    info = {
        "sha256": hashlib.sha256(data).hexdigest(),
        "feature_version": G.FEATURE_VERSION,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "seed": seed,
        "thresholds": {"cxr": float(params["cxr_threshold"]), "cxr_colour": float(params["cxr_threshold_colour"]),
                       "population_adult": float(params["pop_threshold"])},
        "data": {
            "radiographs": {"kermany": str(kermany), "nih": str(nih),
                            "counts": df.groupby(["split", "kind"]).size().unstack(fill_value=0).to_dict("index"),
                            "split": "by patient, 60/20/20, seed %d" % seed},
            "negatives": {"per_family": neg.groupby(["family", "split"]).size().unstack(fill_value=0)
                          .to_dict("index"),
                          "split": "by seed (generated) or by source picture (scikit-image files)",
                          "skimage": _skimage_version()},
        },
        "metrics": metrics,
        "wall_seconds": round(time.time() - t0, 1),
        "hardware": f"{platform.machine()}, {os.cpu_count()} CPU",
    }
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "guard.npz").write_bytes(data)
    (out / "metrics.json").write_text(json.dumps(info, indent=2, default=_json_default) + "\n")
    log(f"wrote {out / 'guard.npz'} ({len(data) / 1024:.0f} kB) and metrics.json in {time.time() - t0:.0f} s")
    return info


def _npz_bytes(params: dict) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **params)
    return buf.getvalue()


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    raise TypeError(type(o))


def _skimage_version():
    try:
        import skimage
        return skimage.__version__
    except ImportError:
        return None
