"""Site profiles: how a bundle behaves at a new site, measured on that site's own labelled images, and the
recalibration and operating points that make it fit there.

A hospital labels a small sample (class folders, a CSV, or a ZIP of folders). `score` runs it through exactly the
path `python -m model predict` uses (`model.core.analysis.analyse`, with the input guard), skipping and counting files
that cannot be read or are not chest radiographs. `validate` reports AUC, ECE and each operating point on it;
`fit` fits Platt scaling on the ensemble logit and re-chooses the operating points with the bundle's own rules
(`model.core.metrics.choose_operating_points`), and estimates how those choices do on images they were *not* fitted on
by repeated stratified cross-validation inside the sample. For a single-label bundle of more classes (normal /
bacterial / viral) the profile holds vector scaling instead (a slope and a bias per class on the ensemble's
log-probabilities; the most probable class still decides), checked the same way: accuracy, each class's recall,
AUC and calibration, cross-validated. The result is a small JSON profile, tied to the bundle
name, version and member sha256s, carrying a sha256 of its own canonical content; anything else is refused.

Trust (docs/SECURITY.md): the sha256 only shows damage, since whoever can edit a profile can recompute it. Where
$TORAX_TRUSTED_KEYS is set, a profile is used only when it carries an Ed25519 signature of its canonical content by
one of those keys (`site fit --sign-key`), as for bundles; without keys a profile is as trustworthy as the sites
folder's permissions, which is why the folder is created 0700 and profiles written 0600.

Binary and multiclass bundles (not multi-label). Never imports training/ or Streamlit; writes only profiles,
atomically, into `sites_dir()`.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import zipfile
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from model.core import metrics as M
from model.core.types import Task, WarningCode, plain
from model.sites.labelled_sets import (  # noqa: F401  (re-exported: callers read labelled sets through model.sites.profiles)
    IGNORED_NAMES,
    MAX_ZIP_BYTES,
    MAX_ZIP_MEMBERS,
    MAX_ZIP_RATIO,
    Item,
    LabelledSet,
    SiteError,
    labelled_from_path,
    labelled_from_uploads,
    labelled_from_zip,
)

SCHEMA = 1
KIND = "torax-site-profile"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
FEW_PER_CLASS = 30          # below this many images of a class, say how wide the intervals are
MIN_PER_CLASS_TO_FIT = 5    # cross-validation needs a few of each class in every fold's training part
FOLDS, REPEATS, BOOTSTRAP = 5, 5, 1000
UPLOAD_PIXEL_BUDGET = 4_000_000_000
"""Pixels decoded, in all, for one labelled set uploaded in the app (about 1,000 images of 4 megapixels, a minute
or two of CPU): a ZIP of thousands of tiny-compressed huge images stops there instead of taking an hour."""


def sites_dir() -> Path:
    """Where site profiles live: $TORAX_SITES, else $XDG_STATE_HOME/torax/sites (~/.local/state/torax/sites)."""
    if os.environ.get("TORAX_SITES"):
        return Path(os.environ["TORAX_SITES"])
    state = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(state) / "torax" / "sites"


def sites_writable(folder: Path | None = None) -> bool:
    folder = Path(folder or sites_dir())
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(folder, os.W_OK)


def _require_supported(bundle):
    if bundle.task not in (Task.BINARY, Task.MULTICLASS):
        raise SiteError("unsupported_task", f"Site checks and profiles are for bundles that give each image one class; "
                                            f"'{bundle.name}' is {bundle.task.value} ({', '.join(bundle.classes)}).")


# ---------------------------------------------------------------------------------------------------------------
# Scoring: the same analysis path as `python -m model predict`
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class Scored:
    """A labelled set run through the bundle as shipped: y (binary: 1 = the positive class; multiclass: the class's
    index), p (the ensemble probability exactly as `predict` gives it; multiclass: one row of class probabilities
    per image), the files used, the ones skipped, and how often each warning came up."""
    bundle: str
    classes: list[str]
    source: str
    files: list[str]
    y: np.ndarray
    p: np.ndarray
    skipped: list[dict]
    warnings: dict[str, int]

    @property
    def n(self) -> int:
        return len(self.y)

    @property
    def per_class(self) -> dict[str, int]:
        return {c: int((self.y == k).sum()) for k, c in enumerate(self.classes)}


def score(labelled: LabelledSet, ensemble, guard=None, progress=None, max_pixels: int | None = None) -> Scored:
    """Read, check and predict every image of a labelled set, one at a time through `model.core.analysis.analyse` (so
    the probabilities are bit-for-bit those of `predict`). Unreadable files and files the guard calls
    `not_chest_xray` are skipped and listed; a byte-identical duplicate under the same label is skipped; the same
    image under two labels refuses the whole set (SiteError, raised before anything is written). `max_pixels`:
    pixels decoded in all (UPLOAD_PIXEL_BUDGET for uploads); past it the set is refused (SiteError
    `pixel_budget`): each image's header is checked against what is left before its pixels are decoded."""
    from model.core.analysis import analyse
    from model.io import MAX_PIXELS
    from model.io.base import MAX_TOTAL_PIXELS

    bundle = ensemble.bundle
    _require_supported(bundle)
    seen: dict[str, tuple[str, str]] = {}
    conflicts, skipped = [], list(labelled.skipped)
    files, ys, ps = [], [], []
    warnings: Counter = Counter(s["code"] for s in skipped)
    left = max_pixels
    for k, item in enumerate(labelled.items):
        if progress:
            progress(k, len(labelled.items))
        try:
            data = item.read()
        except SiteError:
            raise
        except (OSError, zipfile.BadZipFile, ValueError) as e:
            skipped.append({"file": item.name, "code": "unreadable_file", "message": f"Could not read it ({e})."})
            warnings["unreadable_file"] += 1
            continue
        digest = hashlib.sha256(data).hexdigest()
        if digest in seen:
            first, label = seen[digest]
            if label != item.label:
                conflicts.append(f"{first} ({label}) and {item.name} ({item.label})")
            else:
                skipped.append({"file": item.name, "code": "duplicate", "message": f"The same image as {first}."})
                warnings["duplicate"] += 1
            continue
        seen[digest] = (item.name, item.label)
        limit = MAX_PIXELS if left is None else min(MAX_PIXELS, left)
        result, decoded = analyse(data, item.name, ensemble, guard=guard, max_pixels=limit)
        if left is not None:
            code = (result.error or {}).get("code")
            if code == "image_too_large" and limit < MAX_PIXELS or limit <= 0:
                raise SiteError("pixel_budget", f"Stopped: this upload holds more image data than a site check "
                                                f"reads at once ({max_pixels / 1e6:,.0f} megapixels in all), after "
                                                f"{k:,} of its {len(labelled.items):,} images. Check a smaller "
                                                "sample, or smaller images; nothing was saved.")
            # what decoding cost: the image's pixels, or the frames scanned for a multi-frame file with none usable
            left -= decoded.pixels.size if decoded is not None else MAX_TOTAL_PIXELS if code == "no_usable_frame" \
                else 0
        codes = [w["code"] for w in result.warnings]
        warnings.update(codes)
        if result.error:
            skipped.append({"file": item.name, **result.error})
            warnings[result.error["code"]] += 1
        elif WarningCode.NOT_CHEST_XRAY in codes:
            skipped.append({"file": item.name, "code": WarningCode.NOT_CHEST_XRAY,
                            "message": next(w["message"] for w in result.warnings
                                            if w["code"] == WarningCode.NOT_CHEST_XRAY)})
        else:
            files.append(item.name)
            ys.append(bundle.classes.index(item.label))
            ps.append(float(result.probability) if bundle.task == Task.BINARY else
                      [float(result.probabilities[c]) for c in bundle.classes])
    if conflicts:
        shown = "; ".join(conflicts[:5]) + (f"; and {len(conflicts) - 5} more" if len(conflicts) > 5 else "")
        raise SiteError("conflicting_labels", f"Refused: the same image appears under two labels ({shown}). "
                                              "Fix the labels and try again; nothing was saved.")
    y = np.asarray(ys, int)
    if len(set(ys)) < 2:
        have = ", ".join(f"{c}: {int((y == k).sum())}" for k, c in enumerate(bundle.classes))
        raise SiteError("one_class", f"After skipping {len(skipped)} file(s) that could not be used, the set has "
                                     f"images of one class only ({have}); a site check needs "
                                     + ("both." if len(bundle.classes) == 2 else "at least two of them."))
    return Scored(bundle.name, list(bundle.classes), labelled.source, files, y, np.asarray(ps, float), skipped,
                  dict(warnings))


# ---------------------------------------------------------------------------------------------------------------
# Numbers
# ---------------------------------------------------------------------------------------------------------------
def _stratified_resamples(y: np.ndarray, n: int, seed: int):
    """Bootstrap index sets that keep every class's count. Classes are drawn from the highest index down, so a
    binary sample draws its positives first, as it always has (the same seed gives the same intervals)."""
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(y == c) for c in sorted(np.unique(y), reverse=True)]
    for _ in range(n):
        yield np.concatenate([rng.choice(g, len(g)) for g in groups])


def bootstrap_ci(y, values, statistic, n: int = BOOTSTRAP, seed: int = 0) -> list[float]:
    """Percentile 95% CI of statistic(y[idx], values[..., idx]) over stratified image-level resamples."""
    y, values = np.asarray(y), np.asarray(values)
    stats = [statistic(y[i], values[..., i]) for i in _stratified_resamples(y, n, seed)]
    return [float(v) for v in np.nanpercentile(stats, [2.5, 97.5])]


def _ece(y, p) -> float:
    return M.expected_calibration_error(y, p)[0]


def point_report(y, p, threshold: float) -> dict:
    r = M.rates(M.confusion(y, p, threshold))
    return {"threshold": float(threshold), **{k: r[k] for k in ("sensitivity", "specificity", "ppv", "npv",
                                                                "accuracy")}}


def _few_images_notes(per_class: dict, y, p, points: dict) -> list[str]:
    notes = []
    if np.ndim(p) == 2:  # multiclass: each class's recall, decided by the most probable class
        pred = np.asarray(p).argmax(axis=1)
        for k, (cls, count) in enumerate(per_class.items()):
            if count < FEW_PER_CLASS:
                hits = int((pred == k)[y == k].sum())
                lo, hi = M.wilson_ci(hits, count)
                notes.append(f"Only {count} {cls} image(s) (at least {FEW_PER_CLASS} per class are advised): the "
                             f"recall of {cls}, {hits}/{count}, has a 95% CI of {lo:.2f}–{hi:.2f} "
                             f"(±{(hi - lo) / 2:.2f}).")
        return notes
    for k, (cls, count) in enumerate(per_class.items()):
        if count < FEW_PER_CLASS:
            rate = "specificity" if k == 0 else "sensitivity"
            t = points.get("balanced", next(iter(points.values())))["threshold"] if points else 0.5
            hits = int(((p >= t) == bool(k))[y == k].sum())
            lo, hi = M.wilson_ci(hits, count)
            notes.append(f"Only {count} {cls} image(s) (at least {FEW_PER_CLASS} per class are advised): the "
                         f"{rate} at the balanced point, {hits}/{count}, has a 95% CI of {lo:.2f}–{hi:.2f} "
                         f"(±{(hi - lo) / 2:.2f}).")
    return notes


def _caveats(scored: Scored, site, notes: list[str], warnings: dict):
    """What a validation report must say beside its numbers: few images (counted as a warning), and when the
    profile is judged on the very sample it was fitted on."""
    if notes:
        warnings["few_images"] = len(notes)
    if site and site.sample_sha256 and site.sample_sha256 == sample_fingerprint(scored):
        notes.append("This is the sample the site profile was fitted on: these numbers are optimistic. The "
                     "profile's cross-validated numbers are the honest ones.")


def validate(scored: Scored, bundle, site: SiteProfile | None = None) -> dict:
    """How the bundle does on a labelled set: as shipped, or with a site profile's calibration and thresholds.
    `python -m model site validate --json` prints this."""
    _require_supported(bundle)
    y = scored.y
    p = site.calibrate(scored.p) if site else scored.p
    if bundle.task == Task.MULTICLASS:
        return _validate_multiclass(scored, bundle, site, p)
    thresholds = {o["name"]: o["threshold"] for o in (site.operating_points if site else bundle.operating_points)
                  if "threshold" in o}
    points = {name: point_report(y, p, t) for name, t in thresholds.items()}
    warnings = dict(scored.warnings)
    notes = _few_images_notes(scored.per_class, y, p, points)
    _caveats(scored, site, notes, warnings)
    return plain({"n": scored.n, "auc": M.roc_auc(y, p),
                  "auc_ci95": bootstrap_ci(y, p, M.roc_auc), "ece": _ece(y, p), "points": points,
                  "warnings": warnings, "site": site.name if site else None, "bundle": bundle.name,
                  "per_class": scored.per_class, "skipped": scored.skipped, "notes": notes})


def _log_probabilities(p) -> np.ndarray:
    return np.log(np.clip(np.asarray(p, float), 1e-7, 1.0))


def _calibrate_multiclass(p, a: float, b) -> np.ndarray:
    """softmax(a·log p + b): the bundle's own vector scaling (`apply_temperature`), with slope a = 1 / T."""
    from model.core.ensemble import apply_temperature

    return apply_temperature(p, 1.0 / a, Task.MULTICLASS, b)


def _multiclass_cis(y, prob, classes, boot: int, seed: int) -> dict:
    """Stratified-bootstrap 95% CIs over images of accuracy, macro AUC, ECE and each class's recall. `prob` is one
    set of probabilities (n × k) or several (repeats × n × k, e.g. cross-validation's): statistics are averaged
    over the sets, then the images resampled."""
    y = np.asarray(y, int)
    sets = np.asarray(prob, float)
    sets = sets[None] if sets.ndim == 2 else sets
    correct = sets.argmax(axis=2) == y[None, :]
    confidence = sets.max(axis=2)

    def stats(idx):
        yy = y[idx]
        out = {"accuracy": float(correct[:, idx].mean()),
               "macro_auc": float(np.mean([M.macro_auc(yy, s[idx]) for s in sets])),
               "ece": float(np.mean([M.expected_calibration_error(c[idx], f[idx])[0]
                                     for c, f in zip(correct, confidence)]))}
        for k, c in enumerate(classes):
            out[f"recall {c}"] = float(correct[:, idx][:, yy == k].mean()) if (yy == k).any() else float("nan")
        return out

    draws = [stats(i) for i in _stratified_resamples(y, boot, seed)]
    return {key: [float(v) for v in np.nanpercentile([d[key] for d in draws], [2.5, 97.5])] for key in draws[0]}


def multiclass_report(y, prob, classes, boot: int = BOOTSTRAP, seed: int = 0) -> dict:
    """Accuracy, macro AUC, ECE and each class's recall and AUC, with 95% CIs, and the confusion matrix of one set
    of probabilities (n × k), or the average over several (repeats × n × k; the matrix then pooled)."""
    sets = np.asarray(prob, float)
    sets = sets[None] if sets.ndim == 2 else sets
    summaries = [M.multiclass_summary(y, s, classes) for s in sets]
    mean = lambda get: float(np.mean([get(x) for x in summaries]))  # noqa: E731
    cis = _multiclass_cis(y, sets, classes, boot, seed)
    return {"accuracy": mean(lambda x: x["accuracy"]), "accuracy_ci95": cis["accuracy"],
            "macro_auc": mean(lambda x: x["macro_auc"]), "macro_auc_ci95": cis["macro_auc"],
            "ece": mean(lambda x: x["ece"]), "ece_ci95": cis["ece"],
            "recall": {c: mean(lambda x: x["recall"][c]) for c in classes},
            # one set: Wilson's interval, which stays honest where a small class is all right (a bootstrap of 8 of 8
            # says 1.00–1.00); cross-validated sets: the bootstrap, since their decisions are pooled over repeats
            "recall_ci95": {c: M.wilson_ci(summaries[0]["confusion"][k][k], sum(summaries[0]["confusion"][k]))
                            if len(sets) == 1 else cis[f"recall {c}"] for k, c in enumerate(classes)},
            "auc": {c: mean(lambda x: x["auc"][c]) for c in classes},
            "confusion": np.sum([x["confusion"] for x in summaries], axis=0).tolist()}


def _validate_multiclass(scored: Scored, bundle, site, p) -> dict:
    warnings = dict(scored.warnings)
    notes = _few_images_notes(scored.per_class, scored.y, p, {})
    _caveats(scored, site, notes, warnings)
    return plain({"task": Task.MULTICLASS.value, "n": scored.n, "classes": list(bundle.classes),
                  **multiclass_report(scored.y, p, list(bundle.classes)),
                  "warnings": warnings, "site": site.name if site else None, "bundle": bundle.name,
                  "per_class": scored.per_class, "skipped": scored.skipped, "notes": notes})


def sample_fingerprint(scored: Scored) -> str:
    return hashlib.sha256(json.dumps([scored.y.tolist(), np.round(scored.p, 6).tolist()]).encode()).hexdigest()


def stratified_folds(y, k: int, rng) -> np.ndarray:
    """Fold number (0..k-1) of every image: each class shuffled and dealt round the folds, so every fold has
    about the same share of each class and every image is held out exactly once."""
    y = np.asarray(y)
    fold = np.empty(len(y), int)
    offset = 0
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        rng.shuffle(idx)
        fold[idx] = (np.arange(len(idx)) + offset) % k
        offset += len(idx)
    return fold


def fit_rules(y, z, targets: dict) -> tuple[tuple[float, float], list[dict]]:
    """What a profile fits on a sample: Platt (a, b) on the ensemble logit z, then the operating points chosen
    with the bundle's rules on the recalibrated scores."""
    a, b = M.fit_platt(y, z)
    return (a, b), M.choose_operating_points(y, M.sigmoid(a * z + b), targets, on="site")


def check_options(folds: int = FOLDS, repeats: int = REPEATS, seed: int = 0) -> None:
    """SiteError `bad_option` unless the cross-validation options make sense (checked before any work: fold
    counts below 2 or no repeats would leave numbers uninitialised)."""
    for name, value, least in (("folds", folds, 2), ("repeats", repeats, 1), ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < least:
            raise SiteError("bad_option", f"--{name} must be a whole number of at least {least} (got {value!r}).")


def cross_validate(y, p, targets: dict, folds: int = FOLDS, repeats: int = REPEATS, seed: int = 0) -> dict:
    """Repeated stratified k-fold: calibration and thresholds fitted on k−1 folds, applied to the held-out fold;
    the held-out results pooled over the folds of each repeat. Returns the out-of-fold probabilities
    (repeats × n), decisions per point (repeats × n), the fold assignments and the folds used."""
    y, z = np.asarray(y, int), M.logit(p)
    k = int(min(folds, np.bincount(y, minlength=2).min()))
    rng = np.random.default_rng(seed)
    oof = np.empty((repeats, len(y)))
    decisions = {name: np.empty((repeats, len(y)), bool) for name in ("balanced", "screening", "confirmatory")}
    assignments = []
    for r in range(repeats):
        fold = stratified_folds(y, k, rng)
        assignments.append(fold)
        for j in range(k):
            train, test = fold != j, fold == j
            (a, b), points = fit_rules(y[train], z[train], targets)
            oof[r, test] = M.sigmoid(a * z[test] + b)
            for point in points:
                decisions[point["name"]][r, test] = oof[r, test] >= point["threshold"]
    return {"probability": oof, "decisions": decisions, "folds": assignments, "k": k}


def _counts_rates(y, decided) -> dict:
    """Rates from decisions pooled over repeats (repeats × n)."""
    pos = y.astype(bool)[None, :]
    counts = {"tp": int((decided & pos).sum()), "fp": int((decided & ~pos).sum()),
              "tn": int((~decided & ~pos).sum()), "fn": int((~decided & pos).sum())}
    return M.rates(counts)


RATES = ("sensitivity", "specificity", "ppv", "npv", "accuracy")


def cv_metrics(y, cv: dict, boot: int = BOOTSTRAP, seed: int = 0) -> dict:
    """Pooled out-of-fold numbers (mean over repeats) with stratified-bootstrap 95% CIs over images."""
    y = np.asarray(y, int)
    oof = cv["probability"]
    auc = lambda yy, pp: float(np.mean([M.roc_auc(yy, row) for row in pp]))
    ece = lambda yy, pp: float(np.mean([_ece(yy, row) for row in pp]))
    out = {"auc": auc(y, oof), "ece": ece(y, oof)}
    samples = list(_stratified_resamples(y, boot, seed))
    out["auc_ci95"] = [float(v) for v in np.nanpercentile([auc(y[i], oof[:, i]) for i in samples], [2.5, 97.5])]
    out["ece_ci95"] = [float(v) for v in np.nanpercentile([ece(y[i], oof[:, i]) for i in samples], [2.5, 97.5])]
    out["points"] = {}
    for name, decided in cv["decisions"].items():
        point = {k: v for k, v in _counts_rates(y, decided).items() if k in RATES}
        boots = [_counts_rates(y[i], decided[:, i]) for i in samples]
        for rate in RATES:
            point[f"{rate}_ci95"] = [float(v) for v in np.nanpercentile([b[rate] for b in boots], [2.5, 97.5])]
        out["points"][name] = point
    return out


def cross_validate_multiclass(y, p, folds: int = FOLDS, repeats: int = REPEATS, seed: int = 0) -> dict:
    """Repeated stratified k-fold for a multiclass profile: vector scaling fitted on k−1 folds, applied to the
    held-out fold. Returns the out-of-fold probabilities (repeats × n × k), the fold assignments and the folds."""
    y, logp = np.asarray(y, int), _log_probabilities(p)
    k = int(min(folds, np.bincount(y, minlength=logp.shape[1]).min()))
    rng = np.random.default_rng(seed)
    oof = np.empty((repeats, *logp.shape))
    assignments = []
    for r in range(repeats):
        fold = stratified_folds(y, k, rng)
        assignments.append(fold)
        for j in range(k):
            a, b = M.fit_vector_scaling(y[fold != j], logp[fold != j])
            oof[r, fold == j] = M.softmax(a * logp[fold == j] + np.asarray(b))
    return {"probability": oof, "folds": assignments, "k": k}


def bundle_identity(bundle) -> dict:
    return {"name": bundle.name, "version": bundle.version,
            "members": {m.name: m.info.get("sha256") for m in bundle.members}}


def bundle_targets(bundle) -> dict:
    return {o["name"]: o.get("target") for o in bundle.operating_points if o.get("target") is not None}


def fit(scored: Scored, bundle, name: str, folds: int = FOLDS, repeats: int = REPEATS, seed: int = 0,
        boot: int = BOOTSTRAP, records: dict | None = None) -> dict:
    """A site profile (a dict, not yet saved) from a scored labelled sample: labelled images, or the record's
    confirmed results (model.store.sample; `records` then names the range of the record used)."""
    _require_supported(bundle)
    check_name(name)
    check_options(folds, repeats, seed)
    small = {c: n for c, n in scored.per_class.items() if n < MIN_PER_CLASS_TO_FIT}
    if small:
        raise SiteError("too_few", "Too few images to fit a site profile: "
                        + ", ".join(f"{c} has {n}" for c, n in small.items())
                        + f"; at least {MIN_PER_CLASS_TO_FIT} per class are needed (and {FEW_PER_CLASS} advised).")
    if bundle.task == Task.MULTICLASS:
        return _fit_multiclass(scored, bundle, name, folds, repeats, seed, boot, records)
    y, p = scored.y, scored.p
    targets = bundle_targets(bundle)
    (a, b), points = fit_rules(y, M.logit(p), targets)
    cv = cross_validate(y, p, targets, folds, repeats, seed)
    metrics = cv_metrics(y, cv, boot, seed)
    shipped = validate(scored, bundle)
    notes = _few_images_notes(scored.per_class, y, M.sigmoid(a * M.logit(p) + b),
                              {o["name"]: o for o in points})
    profile = {
        "kind": KIND, "schema": SCHEMA, "site": name,
        "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "bundle": bundle_identity(bundle),
        "sample": {"source": scored.source.strip("'"), "n": scored.n, "per_class": scored.per_class,
                   "skipped": dict(Counter(s["code"] for s in scored.skipped)), "sha256": sample_fingerprint(scored),
                   **({"records": records} if records else {})},
        "calibration": {"method": "platt on the ensemble logit: p_site = sigmoid(a * logit(p) + b)",
                        "a": a, "b": b},
        "operating_points": points,
        "default_operating_point": bundle.manifest.get("default_operating_point", "balanced"),
        "validation": {
            "method": f"repeated stratified {cv['k']}-fold cross-validation ({repeats} repeats, seed {seed}): "
                      "calibration and thresholds fitted on the other folds, scored on the held-out fold, pooled; "
                      f"95% CIs from {boot} stratified bootstrap resamples of the images",
            "folds": cv["k"], "repeats": repeats, "seed": seed, **metrics,
            "out_of_fold": {"y": y.tolist(), "probability": np.round(cv["probability"][0], 5).tolist()}},
        "as_shipped": {"auc": shipped["auc"], "ece": shipped["ece"],
                       "points": {k: {r: v[r] for r in ("threshold", "sensitivity", "specificity")}
                                  for k, v in shipped["points"].items()}},
        "notes": notes,
    }
    profile = plain(profile)
    profile["sha256"] = content_sha256(profile)
    return profile


def _fit_multiclass(scored: Scored, bundle, name: str, folds: int, repeats: int, seed: int, boot: int,
                    records: dict | None) -> dict:
    """A multiclass profile: vector scaling on the ensemble's log-probabilities, fitted on the whole sample, and
    its cross-validated accuracy, recall, AUC and calibration. The most probable class decides, as shipped."""
    y, p, classes = scored.y, scored.p, list(bundle.classes)
    a, b = M.fit_vector_scaling(y, _log_probabilities(p))
    cv = cross_validate_multiclass(y, p, folds, repeats, seed)
    shipped = multiclass_report(y, p, classes, boot, seed)
    notes = _few_images_notes(scored.per_class, y, _calibrate_multiclass(p, a, b), {})
    profile = {
        "kind": KIND, "schema": SCHEMA, "site": name, "task": Task.MULTICLASS.value, "classes": classes,
        "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "bundle": bundle_identity(bundle),
        "sample": {"source": scored.source.strip("'"), "n": scored.n, "per_class": scored.per_class,
                   "skipped": dict(Counter(s["code"] for s in scored.skipped)), "sha256": sample_fingerprint(scored),
                   **({"records": records} if records else {})},
        "calibration": {"method": "vector scaling on the ensemble's log-probabilities: p_site = softmax(a * log(p) "
                                  "+ b), b[0] = 0; the most probable class decides",
                        "a": a, "b": b},
        "operating_points": [],
        "default_operating_point": None,
        "validation": {
            "method": f"repeated stratified {cv['k']}-fold cross-validation ({repeats} repeats, seed {seed}): "
                      "vector scaling fitted on the other folds, scored on the held-out fold, averaged over the "
                      f"repeats; 95% CIs from {boot} stratified bootstrap resamples of the images",
            "folds": cv["k"], "repeats": repeats, "seed": seed,
            **multiclass_report(y, cv["probability"], classes, boot, seed),
            "out_of_fold": {"y": y.tolist(), "probability": np.round(cv["probability"][0], 5).tolist()}},
        "as_shipped": {k: shipped[k] for k in ("accuracy", "macro_auc", "ece", "recall", "confusion")},
        "notes": notes,
    }
    profile = plain(profile)
    profile["sha256"] = content_sha256(profile)
    return profile


# ---------------------------------------------------------------------------------------------------------------
# Profiles on disk
# ---------------------------------------------------------------------------------------------------------------
def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise SiteError("bad_name", f"{name!r} is not a usable site name: use 1–64 letters, digits, '.', '_' or "
                                    "'-', starting with a letter or digit.")
    return name


def canonical(profile: dict) -> bytes:
    """The bytes a profile's sha256 and signature cover: everything but those two, in one fixed JSON form."""
    return json.dumps({k: v for k, v in profile.items() if k not in ("sha256", "signature")}, sort_keys=True,
                      separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def content_sha256(profile: dict) -> str:
    return hashlib.sha256(canonical(profile)).hexdigest()


def sign(profile: dict, key: str | Path) -> dict:
    """The profile with `signature`: base64 Ed25519 signature of its canonical content by the private key in PEM
    file `key` (`python -m training keygen`). Servers with TORAX_TRUSTED_KEYS use only profiles so signed."""
    import base64

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        private = load_pem_private_key(Path(key).read_bytes(), password=None)
    except (OSError, ValueError, TypeError):
        private = None
    if not isinstance(private, Ed25519PrivateKey):
        raise SiteError("bad_key", "The signing key could not be read as an Ed25519 private key (PEM, as written "
                                   "by `python -m training keygen`).")
    return {**profile, "signature": base64.b64encode(private.sign(canonical(profile))).decode("ascii")}


def signature_required() -> bool:
    """Whether this server uses only signed profiles ($TORAX_TRUSTED_KEYS is set)."""
    return bool(os.environ.get("TORAX_TRUSTED_KEYS", "").strip())


def _check_trust(profile: dict, label: str) -> None:
    """With TORAX_TRUSTED_KEYS set, refuse a profile that no trusted key signed."""
    from model.core.bundle import TrustedKeysUnreadable, signature_valid, trusted_keys

    try:
        keys = trusted_keys()
    except TrustedKeysUnreadable as e:
        raise SiteError("untrusted", f"{label} was refused: {e.message}") from None
    if keys is None:
        return
    if not isinstance(profile.get("signature"), str):
        raise SiteError("unsigned", f"{label} was refused: it is not signed, and this server only uses profiles "
                                    "signed by a trusted key (TORAX_TRUSTED_KEYS). Fit it with "
                                    "`python -m model site fit --sign-key KEY`.")
    if not signature_valid(canonical(profile), profile["signature"], keys):
        raise SiteError("bad_signature", f"{label} was refused: its signature does not match its content or no "
                                         "trusted key made it (it was edited after signing?).")


def _pretty(profile: dict) -> str:
    """Indented JSON with number lists kept on one line, so the file stays readable."""
    text = json.dumps(profile, indent=1, ensure_ascii=False, allow_nan=False)
    return re.sub(r"\[\s*([-0-9.eE]+(?:,\s*[-0-9.eE]+)*)\s*\]",
                  lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]", text) + "\n"


def profile_path(name: str, folder: Path | None = None) -> Path:
    return Path(folder or sites_dir()) / f"{check_name(name)}.json"


def save(profile: dict, folder: Path | None = None, force: bool = False) -> Path:
    """Write a profile atomically (temp file in the same folder, then os.replace). An existing profile of the
    same name is only replaced with `force` (the CLI's --force, the app's confirm step)."""
    path = profile_path(profile["site"], folder)
    if path.exists() and not force:
        raise SiteError("exists", f"A site profile named '{profile['site']}' already exists ({path}). Choose another "
                                  "name, or confirm that it should be replaced (--force).")
    if profile.get("sha256") != content_sha256(profile):
        raise SiteError("tampered", "Refused to save a profile whose content does not match its sha256.")
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # only the service user may write (or read) them
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".tmp", dir=path.parent)  # 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(_pretty(profile))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


@dataclass
class SiteProfile:
    """A loaded, verified profile, applied to the ensemble probability at inference."""
    data: dict

    name = property(lambda self: self.data["site"])
    operating_points = property(lambda self: self.data["operating_points"])
    sample_sha256 = property(lambda self: self.data.get("sample", {}).get("sha256"))
    task = property(lambda self: Task(self.data.get("task", Task.BINARY.value)))

    def calibrate(self, p):
        """Binary: the positive class's probability (a number or an array). Multiclass: class probabilities, one
        row per image (n × k, or one row of k)."""
        c = self.data["calibration"]
        if self.task == Task.MULTICLASS:
            return _calibrate_multiclass(p, c["a"], c["b"])
        out = M.sigmoid(c["a"] * M.logit(p) + c["b"])
        return float(out) if np.ndim(out) == 0 else out

    def uncalibrate(self, p):
        """The probability as shipped that `calibrate` turns into `p` (a > 0, so one-to-one; exact to about 1e-9
        between 1e-7 and 1 - 1e-7)."""
        c = self.data["calibration"]
        if self.task == Task.MULTICLASS:
            return M.softmax((_log_probabilities(p) - np.asarray(c["b"], float)) / c["a"])
        out = M.sigmoid((M.logit(p) - c["b"]) / c["a"])
        return float(out) if np.ndim(out) == 0 else out

    def operating_point(self, name: str | None = None) -> dict:
        name = name or self.data.get("default_operating_point") or "balanced"
        for point in self.operating_points:
            if point["name"] == name:
                return point
        known = ", ".join(p["name"] for p in self.operating_points)
        raise KeyError(f"Site profile {self.name} has no operating point {name!r} (it has: {known}).")

    def apply(self, prediction):
        """The prediction with every probability (ensemble and members) recalibrated for this site."""
        from model.core.ensemble import Prediction

        if self.task == Task.MULTICLASS:
            classes = list(prediction.classes)
            recal = lambda probs: dict(zip(classes, map(float, self.calibrate([probs[c] for c in classes]))))
        else:
            neg, pos = prediction.classes
            recal = lambda probs: {neg: 1 - self.calibrate(probs[pos]), pos: self.calibrate(probs[pos])}
        return Prediction(prediction.classes, prediction.task, recal(prediction.probabilities),
                          {m: recal(p) for m, p in prediction.members.items()})


def verify(profile: dict, bundle, where: str = "") -> SiteProfile:
    """Check a profile's form, its sha256 and that it belongs to this very bundle; a SiteProfile or SiteError."""
    name = profile.get("site") if isinstance(profile, dict) else None
    label = f"Site profile '{name or where}'"
    required = ("kind", "schema", "site", "bundle", "calibration", "operating_points", "sha256")
    if not isinstance(profile, dict) or profile.get("kind") != KIND or any(k not in profile for k in required):
        raise SiteError("malformed", f"{label} was refused: it is not a Tórax site profile (missing fields).")
    if profile["schema"] != SCHEMA:
        raise SiteError("malformed", f"{label} was refused: schema {profile['schema']} is not supported "
                                     f"(this version reads schema {SCHEMA}).")
    try:
        same = content_sha256(profile) == profile["sha256"]
    except (TypeError, ValueError):
        same = False
    if not same:
        raise SiteError("tampered", f"{label} was refused: its content does not match its recorded sha256 (it was "
                                    "edited or damaged). Fit it again with `python -m model site fit`.")
    _check_trust(profile, label)
    task = profile.get("task", Task.BINARY.value)
    if task != bundle.task.value:
        raise SiteError("wrong_bundle", f"{label} was refused: it is a {task} profile, and {bundle.name} is "
                                        f"{bundle.task.value}.")
    try:
        a, raw = float(profile["calibration"]["a"]), profile["calibration"]["b"]
        b = [float(v) for v in raw] if task == Task.MULTICLASS else [float(raw)]
        thresholds = [float(o["threshold"]) for o in profile["operating_points"]]
        ok = np.isfinite([a, *b, *thresholds]).all() and all(0 <= t <= 1 for t in thresholds) and a > 0 \
            and (task != Task.MULTICLASS or len(b) == len(bundle.classes))
    except (KeyError, TypeError, ValueError):
        ok = False
    if not ok:
        raise SiteError("malformed", f"{label} was refused: its calibration or thresholds are not usable numbers.")
    mine, theirs = bundle_identity(bundle), profile["bundle"]
    if theirs != mine:
        what = [k for k in ("name", "version", "members") if theirs.get(k) != mine[k]]
        raise SiteError("wrong_bundle", f"{label} was fitted for bundle {theirs.get('name')} version "
                                        f"{theirs.get('version')}, not for {mine['name']} version {mine['version']} "
                                        f"(different {', '.join(what)}). Fit a profile for this bundle.")
    return SiteProfile(profile)


def load(name: str, bundle, folder: Path | None = None) -> SiteProfile:
    """The verified profile `name` for `bundle`, or a SiteError saying why it cannot be used."""
    _require_supported(bundle)
    path = profile_path(name, folder)
    if not path.is_file():
        known = ", ".join(p["name"] for p in list_profiles(folder)) or "none"
        raise SiteError("not_found", f"No site profile named '{name}' in {path.parent} (available: {known}).")
    try:
        profile = json.loads(path.read_text(encoding="utf-8"))
    except OSError:  # its message would quote the server's path
        raise SiteError("malformed", f"Site profile '{name}' was refused: it could not be read.") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SiteError("malformed", f"Site profile '{name}' was refused: it is not readable JSON ({e}).") from None
    if isinstance(profile, dict) and profile.get("site") != name:
        raise SiteError("malformed", f"Site profile file {path.name} names another site "
                                     f"({profile.get('site')!r}).")
    return verify(profile, bundle, name)


def list_profiles(folder: Path | None = None, bundle=None) -> list[dict]:
    """[{"name", "ok", "message"}] for every *.json in the sites folder; with `bundle`, `ok` says whether it
    loads for that bundle."""
    folder = Path(folder or sites_dir())
    out = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        if not NAME_PATTERN.match(path.stem):
            continue
        entry = {"name": path.stem, "ok": True, "message": ""}
        if bundle is not None:
            try:
                load(path.stem, bundle, folder)
            except SiteError as e:
                entry.update(ok=False, message=e.message)
        out.append(entry)
    return out


# ---------------------------------------------------------------------------------------------------------------
# Evidence: which labelled scores the live sensitivity/specificity come from
# ---------------------------------------------------------------------------------------------------------------
def evidence_sets(bundle, site: SiteProfile | None = None) -> dict[str, dict]:
    """{"site"|"external"|"internal": {"y", "score", "n", "dataset"}}, most external first. Scores are on the scale
    the reader's threshold is on: with a site profile active, the bundle's own test scores go through its
    calibration too. "site" is the profile's pooled out-of-fold (cross-validated) probabilities. Binary scores
    only: sensitivity and specificity at a threshold mean nothing for a most-probable-class decision."""
    out = {}
    if site is not None and site.task == Task.BINARY:
        oof = site.data.get("validation", {}).get("out_of_fold")
        if oof:
            out["site"] = {"y": np.asarray(oof["y"], int), "score": np.asarray(oof["probability"], float),
                           "n": len(oof["y"]), "dataset": site.name}
    for key, report in (("external", "scores-external"), ("internal", "scores")):
        scores = bundle.read_report(report)
        if not scores or scores.get("task") != Task.BINARY:
            continue
        y = np.asarray(scores["y"], int).reshape(len(scores["y"]), -1)[:, 0]
        p = np.asarray(scores["ensemble"], float).reshape(len(scores["ensemble"]), -1)[:, 0]
        out[key] = {"y": y, "score": site.calibrate(p) if site else p, "n": len(y),
                    "dataset": scores.get("dataset") or scores.get("split", key)}
    return out


def summary_lines(profile: dict, path: Path | None = None) -> list[str]:
    """A short human summary of a fitted profile (what `site fit` prints)."""
    s, v, shipped = profile["sample"], profile["validation"], profile["as_shipped"]
    ci = lambda pair: f"{pair[0]:.2f}–{pair[1]:.2f}"
    bundle = profile["bundle"]
    lines = [f"Site profile '{profile['site']}' for {bundle['name']} (version {bundle['version']})"
             + (f" saved to {path}" if path else ""),
             f"Sample: {s['n']} images (" + ", ".join(f"{c} {n}" for c, n in s["per_class"].items()) + ")"
             + ("; skipped: " + ", ".join(f"{k} {n}" for k, n in s["skipped"].items()) if s["skipped"] else "")]
    if profile.get("task") == Task.MULTICLASS.value:
        recall = lambda r: ", ".join(f"{c} {x:.2f}" for c, x in r.items())  # noqa: E731
        c = profile["calibration"]
        lines += [f"As shipped on this sample: accuracy {shipped['accuracy']:.3f}, macro AUC "
                  f"{shipped['macro_auc']:.3f}, ECE {shipped['ece']:.3f}; recall {recall(shipped['recall'])}",
                  f"Recalibration: p_site = softmax({c['a']:.3f}·log(p) + ["
                  + ", ".join(f"{x:+.3f}" for x in c["b"]) + "]); the most probable class decides",
                  f"With this profile, cross-validated ({v['folds']}-fold × {v['repeats']}, never scored on the "
                  f"images fitted on), 95% CI:",
                  f"  accuracy {v['accuracy']:.3f} ({ci(v['accuracy_ci95'])}), macro AUC {v['macro_auc']:.3f} "
                  f"({ci(v['macro_auc_ci95'])}), ECE {v['ece']:.3f} ({ci(v['ece_ci95'])})",
                  "  recall " + ", ".join(f"{k} {x:.2f} ({ci(v['recall_ci95'][k])})" for k, x in v["recall"].items())]
        return lines + [f"Note: {n}" for n in profile.get("notes", [])]
    lines += [f"As shipped on this sample: AUC {shipped['auc']:.3f}, ECE {shipped['ece']:.3f}; "
              + ", ".join(f"{k} sens {p['sensitivity']:.2f} / spec {p['specificity']:.2f}"
                          for k, p in shipped["points"].items()),
              f"Recalibration: p_site = sigmoid({profile['calibration']['a']:.3f}·logit(p) "
              f"{profile['calibration']['b']:+.3f})",
              f"With this profile, cross-validated ({v['folds']}-fold × {v['repeats']}, never scored on the images "
              f"fitted on), 95% CI:",
              f"  AUC {v['auc']:.3f} ({ci(v['auc_ci95'])}), ECE {v['ece']:.3f} ({ci(v['ece_ci95'])})"]
    for point in profile["operating_points"]:
        m = v["points"][point["name"]]
        lines.append(f"  {point['name']:<12} threshold {point['threshold']:.3f}: sensitivity {m['sensitivity']:.2f} "
                     f"({ci(m['sensitivity_ci95'])}), specificity {m['specificity']:.2f} "
                     f"({ci(m['specificity_ci95'])}), accuracy {m['accuracy']:.2f} ({ci(m['accuracy_ci95'])})")
    lines += [f"Note: {n}" for n in profile.get("notes", [])]
    return lines
