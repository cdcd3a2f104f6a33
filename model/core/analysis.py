"""Uploads in, `Result`s out: decode → check (guard) → preprocess → ensemble → decision, for one file (`analyse`)
or many in batches (`analyse_batch`), and the same result re-decided at another threshold without inference
(`decide`). Shared by the CLI, the REST API and the pages.

Bad input becomes a result with an `error` ({"code", "message"}); nothing here raises on a bad file. Never imports
Streamlit or training/.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import numpy as np

from model.core.ensemble import Ensemble, Prediction
from model.core.preprocess import to_model_input
from model.core.types import Result, Task
from model.io import MAX_PIXELS, DecodeError, decode

# Images per forward pass in a batch. Measured on 2 cores at 224 px (README, Speed): 8 at a time, read a batch ahead,
# gave 34-40 images/s on the default bundle against 23-34 for 32 read before the model ran (same spell, same images).
BATCH = 8


# ---------------------------------------------------------------------------------------------------------------
# Thresholds and decisions
# ---------------------------------------------------------------------------------------------------------------
def default_threshold(bundle, site=None):
    """The threshold a result is decided at until the reader chooses another: the site profile's default operating
    point when one is active, else the bundle's default operating point (binary: a number; multilabel:
    {class: number}); a binary bundle without one decides at 0.5. None for multiclass (the most probable class
    wins). The pages start their slider here and the worklist decides with it, so every surface agrees."""
    if bundle.task == Task.MULTICLASS:
        return None
    if site is not None:
        return float(site.operating_point()["threshold"])
    point = next((p for p in bundle.operating_points if p["name"] == bundle.manifest.get("default_operating_point")),
                 None)
    if bundle.task == Task.BINARY:
        return float(point["threshold"]) if point and "threshold" in point else 0.5
    point = point if point and point.get("thresholds") else \
        next((p for p in bundle.operating_points if p.get("thresholds")), None)
    return point["thresholds"] if point else None


def resolve_threshold(bundle, threshold: float | None = None, operating_point: str | None = None, site=None):
    """(threshold, operating point name) for a bundle: an explicit number wins; else the named (or default)
    operating point, the site profile's when one is given (`model.sites.profiles.SiteProfile`). Multiclass bundles
    decide by the most probable class and have no threshold."""
    if bundle.task == Task.MULTICLASS:
        return None, None
    if threshold is not None:
        if not 0.0 <= float(threshold) <= 1.0:
            raise ValueError("The threshold must be between 0 and 1.")
        return float(threshold), None
    if site is not None:
        point = site.operating_point(operating_point)
        return point["threshold"], point["name"]
    if not bundle.operating_points:
        return 0.5, None
    point = bundle.operating_point(operating_point)
    return (point.get("thresholds") or point["threshold"]), point["name"]


def point_at(bundle, threshold, site=None) -> dict | None:
    """The operating point whose threshold this is, if any (a slider left on a preset still names it)."""
    for point in (site.operating_points if site is not None else bundle.operating_points):
        if "threshold" in point and threshold is not None and not isinstance(threshold, dict) \
                and abs(float(point["threshold"]) - float(threshold)) < 1e-9:
            return point
        if isinstance(threshold, dict) and point.get("thresholds") == threshold:
            return point
    return None


def describe(prediction: Prediction, bundle, threshold=None, operating_point=None, site=None) -> dict:
    """The prediction fields of a result, at a threshold or operating point; with a site profile, its
    recalibration and operating points."""
    if site is not None:
        prediction = site.apply(prediction)
    t, point = resolve_threshold(bundle, threshold, operating_point, site)
    members = prediction.members
    if bundle.task == Task.BINARY:
        members = {name: p[bundle.classes[-1]] for name, p in members.items()}
    return {"probability": prediction.probability, "probabilities": prediction.probabilities, "members": members,
            "spread": prediction.spread, "threshold": t, "operating_point": point, "label": prediction.label(t),
            "site": site.name if site is not None else None}


def _withhold(result: Result) -> Result:
    return result if result.assessed else replace(result, label=None)


def with_prediction(result: Result, prediction: Prediction, bundle, threshold=None, operating_point=None,
                    site=None) -> Result:
    """A read result (see `read`) completed with its ensemble prediction, decided at `threshold` / the operating
    point (the site profile's when given); no label when the input check says it is not a chest radiograph. The
    one step after inference that analyse, analyse_batch and the archive channel share."""
    return _withhold(replace(result, **describe(prediction, bundle, threshold, operating_point, site)))


def apply_site(result: Result, site) -> Result:
    """A result analysed as shipped, recalibrated with a site profile (no inference; binary and multiclass
    bundles). Decide it afterwards with `decide(..., site=site)`."""
    if site is None or result.site == site.name or result.error or result.probabilities is None:
        return replace(result)
    if result.task == Task.MULTICLASS:
        prediction = site.apply(Prediction(list(result.probabilities), result.task, result.probabilities,
                                           result.members or {}))
        return replace(result, probabilities=prediction.probabilities, members=prediction.members or result.members,
                       spread=prediction.spread if prediction.members else result.spread, site=site.name)
    neg, pos = list(result.probabilities)
    prediction = site.apply(Prediction([neg, pos], result.task, result.probabilities,
                                       {m: {neg: 1 - p, pos: p} for m, p in (result.members or {}).items()}))
    return replace(result, probability=prediction.probability, probabilities=prediction.probabilities,
                   members={m: p[pos] for m, p in prediction.members.items()},
                   spread=prediction.spread if prediction.members else result.spread, site=site.name)


def decide(result: Result, bundle, threshold=None, site=None) -> Result:
    """The same result decided at `threshold` (binary: a number; multilabel: {class: number}; None: the bundle's
    default operating point, or the site profile's). No inference runs: the stored probabilities are re-read."""
    if result.error or result.probabilities is None:
        return replace(result)
    if isinstance(threshold, dict):
        t = threshold
    elif threshold is None or bundle.task == Task.MULTICLASS:
        t, _ = resolve_threshold(bundle, site=site)
    else:
        t, _ = resolve_threshold(bundle, threshold)
    prediction = Prediction(bundle.classes, bundle.task, result.probabilities, {})
    point = point_at(bundle, t, site)
    return _withhold(replace(result, threshold=t, operating_point=point["name"] if point else None,
                             label=prediction.label(t)))


def disagree(result: Result) -> bool:
    """Whether the members disagree enough on this image to say so to the reader."""
    return result.spread is not None and result.spread >= Ensemble.DISAGREEMENT


# ---------------------------------------------------------------------------------------------------------------
# Analysis
# ---------------------------------------------------------------------------------------------------------------
def failed(name: str | None, bundle, code: str, message: str) -> Result:
    """The result of a file that could not be analysed."""
    return Result(name, bundle.name, bundle.task, error={"code": code, "message": message})


def read(data: bytes, name: str | None, bundle, guard=None,
         max_pixels: int = MAX_PIXELS) -> tuple[Result, object | None]:
    """The per-file step before inference: decode (refusing more than `max_pixels` per frame), then check with
    `guard(decoded)` (a list of warnings, with their scores when it is a `model.core.guard.Checked`; see
    `model.core.guard.for_bundle`). Returns (result without a prediction,
    Decoded or None when unreadable)."""
    try:
        decoded = decode(data, name, max_pixels=max_pixels)
    except DecodeError as e:
        return failed(name, bundle, e.code, e.message), None
    checked = guard(decoded) if guard else []
    scores = getattr(checked, "scores", None)  # model.core.guard.Checked; a plain list from another guard
    return Result(name, bundle.name, bundle.task, warnings=list(decoded.warnings) + list(checked),
                  meta=decoded.meta, guard_scores=scores or None), decoded


def analyse(data: bytes, name: str | None, ensemble, threshold: float | None = None,
            operating_point: str | None = None, guard=None, site=None,
            max_pixels: int = MAX_PIXELS) -> tuple[Result, object | None]:
    """Decode, check and predict one file (with a site profile's calibration and thresholds when given).
    Returns (Result, Decoded or None)."""
    result, decoded = read(data, name, ensemble.bundle, guard, max_pixels)
    if decoded is None:
        return result, None
    prediction = ensemble.predict(decoded.pixels)
    return with_prediction(result, prediction, ensemble.bundle, threshold, operating_point, site), decoded


def analyse_batch(files, ensemble, threshold=None, progress=None, batch: int = BATCH, guard=None,
                  site=None) -> list[Result]:
    """Results for many uploads [(name, bytes)], in order; a bad file becomes an error result, never an exception.
    Files go through the ensemble `batch` at a time, and one worker thread reads (decodes, checks and resizes) the
    next batch while this one is in the forward pass: OpenCV and TensorFlow both let go of the GIL, so reading no
    longer waits for the model or the model for reading. `progress(done, total)` is called after each batch."""
    bundle = ensemble.bundle
    files = list(files)
    chunks = [files[i:i + batch] for i in range(0, len(files), batch)]

    def read_chunk(chunk):
        out = []
        for name, data in chunk:
            result, decoded = read(data, name, bundle, guard)
            out.append((result, None if decoded is None else to_model_input(decoded.pixels, bundle.input_spec)))
        return out

    results = []
    for chunk in one_ahead(read_chunk, chunks):
        good = [j for j, (_, x) in enumerate(chunk) if x is not None]
        predictions = ensemble.predict_batch(np.stack([chunk[j][1] for j in good])) if good else []
        done = [result for result, _ in chunk]
        for j, prediction in zip(good, predictions):
            done[j] = with_prediction(done[j], prediction, bundle, threshold, site=site)
        results.extend(done)
        if progress:
            progress(len(results), len(files))
    return results


def one_ahead(fn, items):
    """fn(item) for each item, in order, as a generator; one worker thread works out the next while the caller uses
    this one (reading the next batch while the model runs this one). Closing the generator early waits for the one
    in hand."""
    items = list(items)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="torax-ahead") as worker:
        ahead = worker.submit(fn, items[0]) if items else None
        for k in range(len(items)):
            current = ahead.result()
            if k + 1 < len(items):
                ahead = worker.submit(fn, items[k + 1])
            yield current


def cam_class(result: Result, bundle) -> str:
    """The class an overlay explains: the positive class of a binary bundle, else the most probable class."""
    if bundle.task == Task.BINARY:
        return bundle.classes[-1]
    return max(result.probabilities, key=result.probabilities.get)
