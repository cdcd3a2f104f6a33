"""Which numbers a page leads with, and the sentences written from them.

A binary bundle can be judged on up to three sets of labelled images: the active site profile's cross-validated
sample ("site"), an external collection scored once at the val-chosen settings ("external"), and the internal test
split, which comes from the training images' own collection ("internal"). The most external evidence available is
the one to plan with, so pages lead with it and show the internal numbers second, labelled as the training
collection. Every comparison sentence is decided here from the numbers it cites, per set: the ensemble can beat its
best member on one set and not on another, and two AUCs that print the same are a tie, not a win.
"""
from __future__ import annotations

import numpy as np

from model.core import metrics as M
from model.sites.profiles import evidence_sets

ORDER = ("site", "external", "internal")  # most external first
SHOWN_DECIMALS = 3  # AUCs are printed to three decimals; equal at that precision reads as a tie


def summarise(y: np.ndarray, score: np.ndarray, threshold: float, auc_ci95=None) -> dict:
    """AUC (with its stored CI where the bundle or profile has one), and the decision rates at `threshold` with
    Wilson 95% intervals."""
    counts = M.confusion(y, score, threshold)
    r = M.rates(counts)
    positives, negatives = counts["tp"] + counts["fn"], counts["tn"] + counts["fp"]
    return {"n": int(len(y)), "auc": M.roc_auc(y, score), "auc_ci95": auc_ci95, "threshold": float(threshold),
            **{k: r[k] for k in ("accuracy", "sensitivity", "specificity", "ppv", "npv")},
            "sensitivity_ci95": M.wilson_ci(counts["tp"], positives),
            "specificity_ci95": M.wilson_ci(counts["tn"], negatives)}


def _stored_auc_ci(bundle, site, kind: str):
    if kind == "site":
        return site.data.get("validation", {}).get("auc_ci95")
    summary = bundle.manifest.get("evaluation") or {}
    return (summary.get("external") or {}).get("auc_ci95") if kind == "external" else summary.get("auc_ci95")


def _member_scores(bundle, kind: str) -> dict[str, np.ndarray]:
    """Per-member calibrated scores of one set (the site profile keeps only the ensemble's)."""
    report = {"external": "scores-external", "internal": "scores"}.get(kind)
    scores = bundle.read_report(report) if report else None
    members = (scores or {}).get("members") or {}
    return {name: np.asarray(p, float).reshape(len(p), -1)[:, 0] for name, p in members.items()}


def compare_with_members(y: np.ndarray, ensemble: np.ndarray, members: dict[str, np.ndarray]) -> dict | None:
    """{"verdict": "better" | "tie" | "worse", "best", "best_auc", "ensemble_auc"} against the best single member,
    judged at the precision the page prints; None without member scores."""
    if not members:
        return None
    aucs = {name: M.roc_auc(y, p) for name, p in members.items()}
    best = max(aucs, key=aucs.get)
    ensemble_auc = M.roc_auc(y, ensemble)
    shown_ensemble, shown_best = round(ensemble_auc, SHOWN_DECIMALS), round(aucs[best], SHOWN_DECIMALS)
    verdict = "tie" if shown_ensemble == shown_best else "better" if shown_ensemble > shown_best else "worse"
    return {"verdict": verdict, "best": best, "best_auc": aucs[best], "ensemble_auc": ensemble_auc,
            "member_auc": aucs}


def evidence(bundle, site=None, threshold: float | None = None) -> list[dict]:
    """Every available set, most external first: {"kind", "dataset", "summary", "comparison"}. `threshold`
    defaults to the bundle's (or the profile's) default operating point."""
    sets = evidence_sets(bundle, site)
    if threshold is None:
        threshold = float((site or bundle).operating_point()["threshold"])
    out = []
    for kind in (k for k in ORDER if k in sets):
        s = sets[kind]
        members = _member_scores(bundle, kind)  # a profile's recalibration is monotone: member AUCs stand
        out.append({"kind": kind, "dataset": s["dataset"],
                    "summary": summarise(s["y"], s["score"], threshold, _stored_auc_ci(bundle, site, kind)),
                    "comparison": compare_with_members(s["y"], s["score"], members)})
    return out
