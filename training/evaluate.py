"""Calibrate and choose operating points on validation; score the internal test split once.

Temperature scaling is fitted per member on val; the ensemble is the mean of calibrated member probabilities.
Operating points come from the val ensemble scores. The test split is only scored with choices already fixed.
Writes `evaluation.json` (the numbers) and `scores.json` (per-image test scores for the app's threshold views).
"""
from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pandas as pd
from scipy.optimize import minimize_scalar

from model.core import metrics as M
from model.core.ensemble import apply_temperature
from model.core.metrics import DEFAULT_TARGETS, choose_operating_points  # noqa: F401  (shared with model.sites.profiles)
from model.core.types import TrainingTask
from training import data as data_lib
from training.train import encode_targets


def fit_calibration(prob: np.ndarray, y: np.ndarray, task: str) -> tuple[float, float | list[float]]:
    """(temperature, bias) by validation likelihood, with the fits a site profile uses (`model.core.metrics`) but on
    the plain labels: val is the bundle's in-house sample, where a site's Platt-smoothed targets would soften what
    val supports. Class weighting during training shifts a model's outputs towards the rarer classes, which a
    temperature alone cannot undo, so binary models also get a bias (Platt scaling) and multiclass models a bias per
    class (vector scaling; the first class's is 0, since only differences count). Multi-label models keep one
    temperature for all findings."""
    p = np.clip(np.asarray(prob, dtype="float64"), 1e-7, 1 - 1e-7)
    if task == TrainingTask.MULTICLASS:
        slope, bias = M.fit_vector_scaling(np.asarray(y).argmax(1), np.log(p), smoothed=False)
        return 1.0 / slope, bias
    if task == TrainingTask.BINARY:
        slope, bias = M.fit_platt(np.asarray(y).ravel(), np.log(p / (1 - p)).ravel(), smoothed=False)
        return 1.0 / slope, bias

    def nll(log_t):
        q = np.clip(apply_temperature(p, float(np.exp(log_t)), task), 1e-7, 1 - 1e-7)
        return -np.mean(y * np.log(q) + (1 - y) * np.log(1 - q))
    return float(np.exp(minimize_scalar(nll, bounds=(-3, 3), method="bounded").x)), 0.0


def bootstrap_auc_ci(y, score, n: int = 1000, seed: int = 0) -> list[float]:
    """Percentile 95% CI of the AUC over image-level bootstrap resamples."""
    rng = np.random.default_rng(seed)
    y, score = np.asarray(y).ravel(), np.asarray(score).ravel()
    aucs = [M.roc_auc(y[i], score[i]) for i in (rng.integers(0, len(y), len(y)) for _ in range(n))]
    return [float(v) for v in np.nanpercentile(aucs, [2.5, 97.5])]


def _thin(*arrays, points: int = 200):
    """Keep curves light for JSON: at most `points` evenly spaced entries (always first and last)."""
    n = len(arrays[0])
    idx = np.unique(np.linspace(0, n - 1, min(n, points)).round().astype(int))
    return [np.asarray(a)[idx] for a in arrays]


def binary_report(y, score, thresholds: dict, subtype=None) -> dict:
    """Everything the evaluation page draws for one binary scorer."""
    fpr, tpr, thr = M.roc_curve(y, score)
    precision, recall, pthr = M.pr_curve(y, score)
    fpr, tpr, thr = _thin(fpr, tpr, np.where(np.isfinite(thr), thr, 1.0))
    precision, recall, pthr = _thin(precision, recall, np.where(np.isfinite(pthr), pthr, 1.0))
    report = {"n": int(len(y)), "positives": int(np.sum(y)), "auc": M.roc_auc(y, score),
              "auc_ci95": bootstrap_auc_ci(y, score), "average_precision": M.average_precision(y, score),
              "roc": {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "threshold": thr.tolist()},
              "pr": {"precision": precision.tolist(), "recall": recall.tolist(), "threshold": pthr.tolist()},
              "operating_points": {}}
    for name, t in thresholds.items():
        counts = M.confusion(y, score, t)
        point = {"threshold": t, **counts, **M.rates(counts)}
        if subtype is not None:
            point["sensitivity_by_subtype"] = {
                s: M.rates(M.confusion(np.asarray(y)[subtype == s], np.asarray(score)[subtype == s], t))["sensitivity"]
                for s in sorted(set(subtype[np.asarray(y).astype(bool)]))}
        report["operating_points"][name] = point
    return report


def predict(model, images: np.ndarray, batch: int = 64) -> np.ndarray:
    return np.asarray(model.predict(images, batch_size=batch, verbose=0), dtype="float64")


def evaluate_run(run: str | Path, targets: dict | None = None, external: str | Path | None = None) -> dict:
    """`targets`: {"screening": min val sensitivity, "confirmatory": min val specificity} (default 0.95 each).

    `external`: a labelled folder from another collection (manifest.csv or class folders). It is scored once,
    with the calibration and thresholds already chosen on val, into the `external` block of evaluation.json and
    into scores-external.json; nothing is fitted or chosen on it."""
    run = Path(run)
    config = json.loads((run / "config.json").read_text())
    members = json.loads((run / "members.json").read_text())
    task, classes = config["task"], config["classes"]
    split = pd.read_csv(run / "split.csv")
    split["path"] = [str(Path(config["data"]) / p) for p in split["path"]]
    images = data_lib.load_images(split, config["input"], config.get("cache_dir", "cache"))
    y = encode_targets(split, task, classes)
    va, te = (split["split"] == "val").to_numpy(), (split["split"] == "test").to_numpy()
    subtype_te = split.loc[te, "subtype"].to_numpy() if "subtype" in split else None

    sets = {"val": images[va], "test": images[te]}
    if external is not None:
        ext = external_table(external, task)
        sets["external"] = data_lib.load_images(ext, config["input"], config.get("cache_dir", "cache"))
    raw = {}
    for m in members:
        model = keras.saving.load_model(run / m["file"], compile=False, safe_mode=True)
        raw[m["name"]] = {s: predict(model, x) for s, x in sets.items()}
        keras.backend.clear_session()

    calibrated, temps, biases = {}, {}, {}
    for name, p in raw.items():
        temps[name], biases[name] = fit_calibration(p["val"], y[va], task)
        calibrated[name] = {s: apply_temperature(p[s], temps[name], task, biases[name]) for s in sets}
    ens = {s: np.mean([calibrated[n][s] for n in raw], axis=0) for s in sets}

    evaluation = {"task": task, "classes": classes, "split": "internal-test", "n": int(te.sum()),
                  "n_val": int(va.sum()), "temperatures": temps, "biases": biases,
                  "members": {}}
    scores = {"task": task, "classes": classes, "split": "internal-test",
              "path": split.loc[te, "path"].map(lambda p: str(Path(p).relative_to(config["data"]))).tolist(),
              "subtype": subtype_te.tolist() if subtype_te is not None else None,
              "y": y[te].astype(int).tolist(), "ensemble": ens["test"].round(5).tolist(),
              "members": {n: calibrated[n]["test"].round(5).tolist() for n in raw}}

    if task == TrainingTask.BINARY:
        yv, yt = y[va, 0], y[te, 0]
        ops = choose_operating_points(yv, ens["val"][:, 0], targets)
        evaluation["operating_points"] = ops
        thresholds = {o["name"]: o["threshold"] for o in ops}
        evaluation["ensemble"] = binary_report(yt, ens["test"][:, 0], thresholds, subtype_te)
        for name in raw:
            member_ops = {o["name"]: o["threshold"]
                          for o in choose_operating_points(yv, calibrated[name]["val"][:, 0], targets)}
            evaluation["members"][name] = binary_report(yt, calibrated[name]["test"][:, 0], member_ops, subtype_te)
        for name, probs in [("ensemble", None)] + [(n, raw[n]) for n in raw]:
            target = evaluation["ensemble"] if name == "ensemble" else evaluation["members"][name]
            after = ens["test"][:, 0] if name == "ensemble" else calibrated[name]["test"][:, 0]
            before = np.mean([raw[n]["test"][:, 0] for n in raw], 0) if probs is None else probs["test"][:, 0]
            ece_b, bins_b = M.expected_calibration_error(yt, before)
            ece_a, bins_a = M.expected_calibration_error(yt, after)
            target["calibration"] = {"ece_before": ece_b, "ece_after": ece_a, "bins_before": bins_b,
                                     "bins_after": bins_a}
        best = max(evaluation["members"], key=lambda n: evaluation["members"][n]["auc"])
        evaluation["best_member"] = best
        evaluation["ensemble_beats_best_member"] = evaluation["ensemble"]["auc"] > evaluation["members"][best]["auc"]
    else:
        evaluation.update(per_class_report(task, classes, y[va], y[te], ens, calibrated))

    binary = task == TrainingTask.BINARY
    evaluation["member_val_auc"] = {n: (M.roc_auc(y[va, 0], calibrated[n]["val"][:, 0]) if binary else
                                        float(np.nanmean([M.roc_auc(y[va, k], calibrated[n]["val"][:, k])
                                                          for k in range(len(classes))])))
                                    for n in raw}
    if task == TrainingTask.MULTICLASS:
        evaluation["ensemble"]["bacterial_vs_viral_auc"] = bacterial_vs_viral_auc(y[te], ens["test"], classes)
    if external is not None:
        y_ext = encode_targets(ext, task, classes)
        evaluation["external"] = external_report(task, classes, evaluation, y_ext, ens["external"],
                                                 {n: calibrated[n]["external"] for n in raw},
                                                 ext["subtype"].to_numpy(), Path(external).name)
        root = Path(external)
        (run / "scores-external.json").write_text(json.dumps({
            "task": task, "classes": classes, "split": "external", "dataset": root.name,
            "path": [str(Path(p).relative_to(root)) for p in ext["path"]], "subtype": ext["subtype"].tolist(),
            "y": y_ext.astype(int).tolist(), "ensemble": ens["external"].round(5).tolist(),
            "members": {n: calibrated[n]["external"].round(5).tolist() for n in raw}}))
    evaluation["val_comparison"] = compare_subsets(task, classes, y[va], {n: calibrated[n]["val"] for n in raw})
    (run / "evaluation.json").write_text(json.dumps(evaluation, indent=1))
    (run / "scores.json").write_text(json.dumps(scores))
    (run / "scores-val.json").write_text(json.dumps({  # what `heads-compare` and member choices read; never test
        "task": task, "classes": classes, "split": "val", "subtype": split.loc[va, "subtype"].tolist()
        if "subtype" in split else None, "y": y[va].astype(int).tolist(), "ensemble": ens["val"].round(5).tolist(),
        "members": {n: calibrated[n]["val"].round(5).tolist() for n in raw}}))
    return summary(evaluation)


def compare_subsets(task: str, classes: list[str], y_val: np.ndarray, calibrated_val: dict) -> list[dict]:
    """Every non-empty subset of the members as an ensemble (mean of calibrated probabilities), scored on val:
    AUC for binary; accuracy, macro AUC and bacterial-vs-viral AUC for multiclass. Chosen on val, never on test."""
    from itertools import combinations
    rows = []
    names = list(calibrated_val)
    for k in range(1, len(names) + 1):
        for subset in combinations(names, k):
            p = np.mean([calibrated_val[n] for n in subset], axis=0)
            if task == TrainingTask.BINARY:
                rows.append({"members": list(subset), "val_auc": M.roc_auc(y_val[:, 0], p[:, 0])})
            elif task == TrainingTask.MULTICLASS:
                rows.append({"members": list(subset), "val_accuracy": float((p.argmax(1) == y_val.argmax(1)).mean()),
                             "val_macro_auc": float(np.mean([M.roc_auc(y_val[:, c], p[:, c])
                                                             for c in range(len(classes))])),
                             "val_bacterial_vs_viral_auc": bacterial_vs_viral_auc(y_val, p, classes)})
    return rows


def external_table(folder: str | Path, task: str) -> pd.DataFrame:
    """The external folder's images and labels, in the columns encode_targets reads."""
    ext = data_lib.read_dataset(folder)
    if task == TrainingTask.MULTICLASS:
        ext["class"] = ext["subtype"].map({"normal": "NORMAL", "bacteria": "BACTERIAL", "virus": "VIRAL"})
    return ext


def bacterial_vs_viral_auc(y: np.ndarray, prob: np.ndarray, classes: list[str]) -> float:
    """AUC for viral vs bacterial among pneumonia images only, scored by P(viral) / (P(bacterial) + P(viral))."""
    b, v = classes.index("BACTERIAL"), classes.index("VIRAL")
    keep = (y[:, b] + y[:, v]) > 0
    score = prob[keep, v] / np.maximum(prob[keep, b] + prob[keep, v], 1e-9)
    return M.roc_auc(y[keep, v], score)


def external_report(task, classes, evaluation, y, ens, members, subtype, name) -> dict:
    """The external block: the same report as the internal test, at the val-chosen thresholds, plus ECE."""
    note = "scored once with calibration and thresholds chosen on val; never used to train or choose"
    if task == TrainingTask.BINARY:
        thresholds = {o["name"]: o["threshold"] for o in evaluation["operating_points"]}
        report = binary_report(y[:, 0], ens[:, 0], thresholds, subtype)
        ece, bins = M.expected_calibration_error(y[:, 0], ens[:, 0])
        report["calibration"] = {"ece_after": ece, "bins_after": bins}
        report["member_auc"] = {n: M.roc_auc(y[:, 0], p[:, 0]) for n, p in members.items()}
        return {"dataset": name, "note": note, **report}
    pred, true = ens.argmax(1), y.argmax(1)
    out = {"dataset": name, "note": note, "n": int(len(y)),
           "per_class_auc": {c: M.roc_auc(y[:, k], ens[:, k]) for k, c in enumerate(classes)},
           "accuracy": float((pred == true).mean()),
           "confusion_matrix": [[int(((true == i) & (pred == j)).sum()) for j in range(len(classes))]
                                for i in range(len(classes))]}
    out["macro_auc"] = float(np.nanmean(list(out["per_class_auc"].values())))
    if task == TrainingTask.MULTICLASS:
        out["bacterial_vs_viral_auc"] = bacterial_vs_viral_auc(y, ens, classes)
    return out


def per_class_report(task, classes, y_val, y_test, ens, calibrated) -> dict:
    """One-vs-rest per class: AUC with CI, a val-chosen (Youden) threshold per class, support; plus the argmax
    confusion matrix for multiclass."""
    out = {"per_class": {}, "members": {}}
    for k, c in enumerate(classes):
        t = M.threshold_for(y_val[:, k], ens["val"][:, k], "youden")
        counts = M.confusion(y_test[:, k], ens["test"][:, k], t)
        out["per_class"][c] = {"auc": M.roc_auc(y_test[:, k], ens["test"][:, k]),
                               "auc_ci95": bootstrap_auc_ci(y_test[:, k], ens["test"][:, k], n=300),
                               "support": int(y_test[:, k].sum()), "threshold": t, **counts, **M.rates(counts)}
        fpr, tpr = _thin(*M.roc_curve(y_test[:, k], ens["test"][:, k])[:2])
        out["per_class"][c]["roc"] = {"fpr": fpr.tolist(), "tpr": tpr.tolist()}
    for name, p in calibrated.items():
        out["members"][name] = {"per_class_auc": {c: M.roc_auc(y_test[:, k], p["test"][:, k])
                                                  for k, c in enumerate(classes)}}
    aucs = [v["auc"] for v in out["per_class"].values()]
    out["ensemble"] = {"macro_auc": float(np.nanmean(aucs))}
    out["operating_points"] = [{"name": "per-class", "thresholds": {c: v["threshold"] for c, v in
                                                                   out["per_class"].items()}, "chosen_on": "val"}]
    if task == TrainingTask.MULTICLASS:
        pred, true = ens["test"].argmax(1), y_test.argmax(1)
        out["confusion_matrix"] = [[int(((true == i) & (pred == j)).sum()) for j in range(len(classes))]
                                   for i in range(len(classes))]
        out["ensemble"]["accuracy"] = float((pred == true).mean())
    return out


def summary(evaluation: dict) -> dict:
    """The headline numbers, as recorded in the bundle manifest (internal test, and the external set if scored)."""
    if evaluation["task"] != TrainingTask.BINARY:
        external = evaluation.get("external")
        return {**({"external": {k: external[k] for k in ("dataset", "n", "accuracy", "macro_auc",
                                                            "bacterial_vs_viral_auc") if k in external}}
                   if external else {}),"split": evaluation["split"], "n": evaluation["n"], **evaluation["ensemble"],
                "per_class_auc": {c: v["auc"] for c, v in evaluation["per_class"].items()}}
    e = evaluation["ensemble"]
    bal = e["operating_points"]["balanced"]
    return {"split": evaluation["split"], "n": evaluation["n"], "auc": e["auc"], "auc_ci95": e["auc_ci95"],
            "accuracy": bal["accuracy"], "sensitivity": bal["sensitivity"], "specificity": bal["specificity"],
            "ppv": bal["ppv"], "npv": bal["npv"], "f1": bal["f1"], "at": "balanced",
            "member_auc": {n: m["auc"] for n, m in evaluation["members"].items()},
            "ensemble_beats_best_member": evaluation["ensemble_beats_best_member"],
            **({"external": _external_headline(evaluation["external"])} if "external" in evaluation else {})}


def _external_headline(external: dict) -> dict:
    bal = external["operating_points"]["balanced"]
    return {"dataset": external["dataset"], "n": external["n"], "auc": external["auc"],
            "auc_ci95": external["auc_ci95"], "accuracy": bal["accuracy"], "sensitivity": bal["sensitivity"],
            "specificity": bal["specificity"], "ece": external["calibration"]["ece_after"], "at": "balanced"}
