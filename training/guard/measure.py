"""Measuring the guard once on the test split, through the same model.core.guard.check() that serves, plus the checks
that say how far the numbers can be trusted: leave one family of negatives out, swap NIH resolutions, and time it.

Every rate is {n, flagged, rate, ci95} with a 95 % Wilson interval.
"""
from __future__ import annotations

import time

import cv2
import numpy as np

from model.core import guard as G
from model.core.metrics import roc_auc
from model.io import Decoded
from training.guard.fit import RadiographSet, fit_population_classifier, fit_radiograph_classifier


def rate(flags) -> dict:
    flags = np.asarray(flags, bool)
    return {"n": int(flags.size), "flagged": int(flags.sum()), "rate": round(float(flags.mean()), 4) if flags.size
            else None, "ci95": wilson(int(flags.sum()), int(flags.size))}


def wilson(k: int, n: int, z: float = 1.96) -> list | None:
    if n == 0:
        return None
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [round(max(0.0, centre - half), 4), round(min(1.0, centre + half), 4)]


def _codes(decoded, params, population=None) -> set:
    return {w["code"] for w in G.check(decoded, population=population, params=params)}


def _gray(pixels: np.ndarray) -> Decoded:
    """A picture as decode() gives a grayscale upload with no header: no metadata, no warnings."""
    return Decoded(pixels=pixels, meta={}, warnings=[])


def _flags(images, selected, code: str, params, population=None) -> np.ndarray:
    """Whether check() gives `code` for each selected image (False for the others, which are not checked)."""
    return np.array([code in _codes(image, params, population) if chosen else False
                     for image, chosen in zip(images, selected)])


def measure(df, works, augmented, negatives, neg, params, log) -> dict:
    """The held-out rates of both checks (metrics.json's "not_chest_xray" and "population")."""
    test = (df["split"] == "test").to_numpy()
    real_flag = _flags([_gray(w) for w in works], test, "not_chest_xray", params)
    aug_flag = _flags([_gray(w) for w in augmented], test, "not_chest_xray", params)
    # Large uploads take another path to the 256-px working copy (strided, then averaged): same radiographs, x4.
    enlarged = (_gray(cv2.resize(w, (4 * w.shape[1], 4 * w.shape[0]), interpolation=cv2.INTER_CUBIC)) if t else None
                for w, t in zip(works, test))
    big_flag = _flags(enlarged, test, "not_chest_xray", params)
    by_kind = {k: rate(real_flag[test & (df["kind"] == k).to_numpy()]) for k in sorted(df["kind"].unique())}
    neg_test = (neg["split"] == "test").to_numpy()
    neg_flag = _flags([n["decoded"] for n in negatives], neg_test, "not_chest_xray", params)
    by_family = {f: {**rate(neg_flag[neg_test & (neg["family"] == f).to_numpy()]),
                     "source_pictures": int(neg.loc[neg_test & (neg["family"] == f).to_numpy(), "group"].nunique())}
                 for f in sorted(neg.family.unique())}
    # Colour is a strong hint; the content check alone is what protects against gray pictures of the same kinds.
    gray_flag = _flags([_gray(n["decoded"].pixels) for n in negatives], neg_test, "not_chest_xray", params)
    not_cxr = {
        "false_alarm_on_real_radiographs": {**rate(real_flag[test]), "by_source_kind": by_kind},
        "false_alarm_on_real_radiographs_upscaled_x4": {
            **rate(big_flag[test]), "note": "the same held-out radiographs enlarged 4x (cubic), as large uploads"},
        "false_alarm_on_altered_real_radiographs": {
            **rate(aug_flag[test]),
            "note": "the same held-out radiographs cropped/bordered/tilted/re-exposed/labelled/recompressed"},
        "catch_rate_on_non_radiographs": {**rate(neg_flag[neg_test]), "by_family": by_family},
        "catch_rate_ignoring_colour": {
            **rate(gray_flag[neg_test]),
            "note": "as above, but every picture treated as grayscale (no color_image warning from the decoder)"},
    }
    log(f"not_chest_xray: false alarms {not_cxr['false_alarm_on_real_radiographs']['flagged']}/"
        f"{test.sum()} real, catch {neg_flag[neg_test].sum()}/{neg_test.sum()} non-radiographs")

    # Population: only on radiographs that pass the first check, as in serving.
    pop_codes = _flags([_gray(w) for w in works], test, "outside_intended_population", params, "pediatric 1-5 years")
    children = test & (df["population"] == "pediatric").to_numpy()
    adults = test & (df["population"] == "adult").to_numpy()
    minors = test & (df["population"] == "minor").to_numpy()
    scores = G.mlp(np.stack([G.population_features(G.thumbnail(w), params) for w in works]), params, "pop_")
    population = {
        "catch_rate_on_adults": {**rate(pop_codes[adults]), "by_source_kind": {
            k: rate(pop_codes[adults & (df["kind"] == k).to_numpy()]) for k in ("nih-384", "nih-64")}},
        "false_alarm_on_children": {**rate(pop_codes[children]), "by_source_kind": {
            k: rate(pop_codes[children & (df["kind"] == k).to_numpy()])
            for k in ("kermany-original", "kermany-squashed-224")}},
        "nih_under_18_flagged": {**rate(pop_codes[minors]),
                                 "note": "NIH patients aged 7-17: outside 1-5 too, but neither class in training"},
        "test_auc": round(roc_auc(adults[adults | children], scores[adults | children]), 4),
    }
    log(f"population: adults caught {pop_codes[adults].sum()}/{adults.sum()}, children flagged "
        f"{pop_codes[children].sum()}/{children.sum()}")
    return {"not_chest_xray": not_cxr, "population": population}


def leave_one_family_out(data: RadiographSet, neg_colour: np.ndarray, seed: int) -> dict:
    """Catch rate on each family's test pictures by a classifier that never saw that family (threshold still
    chosen on val radiographs): how well it does on kinds of picture nobody thought to generate."""
    out = {}
    test = data.neg_split == "test"
    for family in sorted(np.unique(data.neg_family)):
        model, threshold, colour_threshold = fit_radiograph_classifier(data, seed, exclude_family=family)
        rows = test & (data.neg_family == family)
        score = G.mlp(data.negatives[rows], model, "cxr_")
        needed = np.where(neg_colour[rows], max(threshold, colour_threshold), threshold)
        out[family] = rate(data.neg_ruled[rows] | (score < needed))
    return out


def resolution_swap(df, pop_x: np.ndarray, adult: np.ndarray, seed: int) -> dict:
    """Train the adult detector on one NIH resolution only and test on the other: if it still finds adults,
    resolution or compression is not what it learned."""
    split = df["split"].to_numpy()
    kind = df["kind"].to_numpy()
    children = (df["population"] == "pediatric").to_numpy()
    adults = (df["population"] == "adult").to_numpy()
    out = {}
    for train_kind, test_kind in (("nih-384", "nih-64"), ("nih-64", "nih-384")):
        rows = children | (adults & (kind == train_kind))
        model, threshold = fit_population_classifier(pop_x, adult, (split == "train") & rows,
                                                     (split == "val") & rows, seed)
        target = (split == "test") & adults & (kind == test_kind)
        out[f"train_{train_kind}_test_{test_kind}"] = rate(G.mlp(pop_x[target], model, "pop_") >= threshold)
    return out


def timing(works, params) -> dict:
    """Median milliseconds of check() on a small radiograph and on a 2500×3000 one."""
    rng = np.random.default_rng(0)
    big = cv2.resize(works[0], (2500, 3000), interpolation=cv2.INTER_LINEAR)
    big = np.clip(big.astype(np.int16) + rng.integers(-3, 4, big.shape), 0, 255).astype(np.uint8)
    out = {}
    for name, img in (("384px", works[0]), ("2500x3000", big)):
        d = _gray(img)
        G.check(d, "pediatric", params)
        times = []
        for _ in range(20):
            s = time.perf_counter()
            G.check(d, "pediatric", params)
            times.append(time.perf_counter() - s)
        out[name] = round(1000 * float(np.median(times)), 2)
    return out
