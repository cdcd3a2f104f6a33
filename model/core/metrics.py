"""Small, dependency-free classification metrics shared by training (to choose and report) and the app (to
show what a threshold means on the evaluation data). Pure numpy; no model code."""
from __future__ import annotations

import math

import numpy as np


def roc_curve(y: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False-positive rate, true-positive rate and thresholds, from the strictest threshold to the loosest.
    A case is called positive when score >= threshold."""
    y, score = np.asarray(y).astype(bool).ravel(), np.asarray(score, float).ravel()
    order = np.argsort(-score, kind="mergesort")
    s, yy = score[order], y[order]
    distinct = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]
    tp, fp = np.cumsum(yy)[distinct], np.cumsum(~yy)[distinct]
    tpr = np.r_[0.0, tp / max(yy.sum(), 1)]
    fpr = np.r_[0.0, fp / max((~yy).sum(), 1)]
    return fpr, tpr, np.r_[np.inf, s[distinct]]


def roc_auc(y: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve (ties count one half), or NaN when only one class is present."""
    y = np.asarray(y).astype(bool).ravel()
    if y.all() or not y.any():
        return float("nan")
    fpr, tpr, _ = roc_curve(y, score)
    return float(np.trapezoid(tpr, fpr))


def pr_curve(y: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall and thresholds (strictest first)."""
    y = np.asarray(y).astype(bool).ravel()
    fpr, tpr, thr = roc_curve(y, score)
    tp, fp = tpr * y.sum(), fpr * (~y).sum()
    precision = np.divide(tp, tp + fp, out=np.ones_like(tp), where=(tp + fp) > 0)
    return precision, tpr, thr


def average_precision(y: np.ndarray, score: np.ndarray) -> float:
    precision, recall, _ = pr_curve(y, score)
    return float(np.sum(np.diff(recall) * precision[1:]))


def confusion(y: np.ndarray, score: np.ndarray, threshold: float) -> dict:
    """Counts at a threshold (positive when score >= threshold)."""
    y = np.asarray(y).astype(bool).ravel()
    pred = np.asarray(score).ravel() >= threshold
    return {"tp": int((pred & y).sum()), "fp": int((pred & ~y).sum()),
            "tn": int((~pred & ~y).sum()), "fn": int((~pred & y).sum())}


def _ratio(a: float, b: float) -> float:
    return float(a / b) if b else float("nan")


def rates(counts: dict, prevalence: float | None = None) -> dict:
    """Sensitivity, specificity, PPV, NPV, accuracy and F1 from confusion counts. With `prevalence`, PPV and NPV
    are recomputed for that prevalence (Bayes) instead of the sample's own."""
    tp, fp, tn, fn = counts["tp"], counts["fp"], counts["tn"], counts["fn"]
    sens, spec = _ratio(tp, tp + fn), _ratio(tn, tn + fp)
    if prevalence is None:
        ppv, npv = _ratio(tp, tp + fp), _ratio(tn, tn + fn)
    else:
        ppv = _ratio(sens * prevalence, sens * prevalence + (1 - spec) * (1 - prevalence))
        npv = _ratio(spec * (1 - prevalence), spec * (1 - prevalence) + (1 - sens) * prevalence)
    return {"sensitivity": sens, "specificity": spec, "ppv": ppv, "npv": npv,
            "accuracy": _ratio(tp + tn, tp + tn + fp + fn), "f1": _ratio(2 * tp, 2 * tp + fp + fn)}


def threshold_for(y: np.ndarray, score: np.ndarray, rule: str, target: float = 0.95) -> float:
    """Choose a threshold on (validation) data.

    - "youden": maximises sensitivity + specificity − 1 (the "balanced" point);
    - "sensitivity": the highest threshold whose sensitivity is at least `target` (screening);
    - "specificity": the lowest threshold whose specificity is at least `target` (confirmatory).
    Thresholds are placed midway between neighbouring scores so they do not sit on a case.
    """
    fpr, tpr, thr = roc_curve(y, score)
    finite = np.isfinite(thr)
    if rule == "youden":
        i = int(np.argmax(np.where(finite, tpr - fpr, -np.inf)))
    elif rule == "sensitivity":
        i = int(np.argmax((tpr >= target) & finite))
    elif rule == "specificity":
        ok = np.nonzero((1 - fpr >= target) & finite)[0]
        i = int(ok[-1]) if len(ok) else 1
    else:
        raise ValueError(f"unknown rule {rule!r}")
    nxt = thr[i + 1] if i + 1 < len(thr) else 0.0
    return float((thr[i] + nxt) / 2)


def expected_calibration_error(y: np.ndarray, prob: np.ndarray, bins: int = 10) -> tuple[float, list[dict]]:
    """ECE over equal-width bins and the reliability-diagram bins (mean predicted vs observed frequency)."""
    y, prob = np.asarray(y, float).ravel(), np.asarray(prob, float).ravel()
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(prob, edges[1:-1]), 0, bins - 1)
    out, ece = [], 0.0
    for b in range(bins):
        m = which == b
        if m.any():
            conf, freq = float(prob[m].mean()), float(y[m].mean())
            ece += m.mean() * abs(conf - freq)
            out.append({"lo": float(edges[b]), "hi": float(edges[b + 1]), "n": int(m.sum()),
                        "mean_predicted": conf, "observed": freq})
    return float(ece), out


# ---------------------------------------------------------------------------------------------------------------
# Choosing operating points and recalibrating (training chooses them on val; a site profile on its own sample)
# ---------------------------------------------------------------------------------------------------------------
DEFAULT_TARGETS = {"screening": 0.95, "confirmatory": 0.95}


def choose_operating_points(y, score, targets: dict | None = None, on: str = "val") -> list[dict]:
    """Balanced (Youden J), screening (sensitivity >= target) and confirmatory (specificity >= target), chosen on
    `on` (the bundle's val split, or a site's own sample).

    A strong model can meet both targets at once; the plain rules then put "screening" above the balanced
    threshold and "confirmatory" below it, the opposite of what the names promise. So screening never sits above
    balanced and confirmatory never below it (moving that way only raises the targeted rate)."""
    targets = {**DEFAULT_TARGETS, **{k: v for k, v in (targets or {}).items() if v is not None}}
    balanced = threshold_for(y, score, "youden")
    chosen = {"balanced": ("youden", None, balanced),
              "screening": ("sensitivity", targets["screening"],
                            min(balanced, threshold_for(y, score, "sensitivity", targets["screening"]))),
              "confirmatory": ("specificity", targets["confirmatory"],
                               max(balanced, threshold_for(y, score, "specificity", targets["confirmatory"])))}
    points = []
    for name, (rule, target, t) in chosen.items():
        r = rates(confusion(y, score, t))
        points.append({"name": name, "rule": rule, "target": target, "threshold": t, "chosen_on": on,
                       f"{on}_sensitivity": r["sensitivity"], f"{on}_specificity": r["specificity"]})
    return points


def logit(p) -> np.ndarray:
    p = np.clip(np.asarray(p, float), 1e-7, 1 - 1e-7)
    return np.log(p / (1 - p))


def sigmoid(z) -> np.ndarray:
    return np.exp(-np.logaddexp(0.0, -np.asarray(z, float)))  # 1 / (1 + e^-z) without overflow


MIN_PLATT_SLOPE = 1e-3
MAX_PLAIN_SLOPE = 20.0  # temperature 0.05: a plain likelihood has no finite optimum on a separated sample


def _bounded_slope(a: float, smoothed: bool) -> float:
    """The calibration slope the fits keep: never below MIN_PLATT_SLOPE (which would turn the ranking round or
    flatten it; NaN lands there too), and for a plain-likelihood fit never above MAX_PLAIN_SLOPE (where it would run
    off on a separated sample)."""
    most = math.inf if smoothed else MAX_PLAIN_SLOPE
    return most if a > most else (a if a > MIN_PLATT_SLOPE else MIN_PLATT_SLOPE)


def fit_platt(y, z, iterations: int = 100, smoothed: bool = True) -> tuple[float, float]:
    """(a, b) so that sigmoid(a·z + b) is calibrated on (y, z): Platt's method, with his smoothed targets
    (N₊+1)/(N₊+2) and 1/(N₋+2) so a perfectly separated sample still gives finite numbers (a site's few hundred
    images). `smoothed=False` fits the plain likelihood of the labels (a bundle's validation split, as `training`
    fits it). Newton's method with step halving (a plain Newton step can overshoot and run away when the start is
    far from the optimum)."""
    y, z = np.asarray(y, float).ravel(), np.asarray(z, float).ravel()
    pos, neg = y.sum(), len(y) - y.sum()
    t = np.where(y > 0, (pos + 1) / (pos + 2), 1 / (neg + 2)) if smoothed else y

    def nll(a, b):
        s = a * z + b
        return float(np.sum(np.logaddexp(0.0, s) - t * s))

    a, b = 1.0, 0.0
    loss = nll(a, b)
    for _ in range(iterations):
        p = sigmoid(a * z + b)
        w = np.maximum(p * (1 - p), 1e-12)
        g = np.array([np.sum((p - t) * z), np.sum(p - t)])
        h = np.array([[np.sum(w * z * z), np.sum(w * z)], [np.sum(w * z), np.sum(w)]]) + 1e-9 * np.eye(2)
        step = np.linalg.solve(h, g)
        scale = 1.0
        while scale > 1e-8 and nll(a - scale * step[0], b - scale * step[1]) > loss:
            scale /= 2
        if scale <= 1e-8:
            break
        a, b = a - scale * step[0], b - scale * step[1]
        new = nll(a, b)
        if loss - new < 1e-12 * max(1.0, abs(loss)) and np.abs(scale * step).max() < 1e-8:
            break
        loss = new
    bounded = _bounded_slope(a, smoothed)
    if bounded != a:  # the slope stops at its bound: refit b alone
        a = bounded
        for _ in range(iterations):
            p = sigmoid(a * z + b)
            step = np.sum(p - t) / max(np.sum(p * (1 - p)), 1e-12)
            b -= step
            if abs(step) < 1e-12:
                break
    return float(a), float(b)


def softmax(z) -> np.ndarray:
    z = np.asarray(z, float)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def fit_vector_scaling(y, logp, iterations: int = 100, smoothed: bool = True) -> tuple[float, list[float]]:
    """(a, b) so that softmax(a·log p + b) is calibrated on (y, log p), y the class index: vector scaling, one slope
    and a bias per class (the first 0: only differences count). Platt's smoothed targets, generalised: the true
    class (N_c+1)/(N_c+2), the rest shared by the other classes, so a perfectly separated sample still gives finite
    numbers; `smoothed=False` fits the plain likelihood, as `fit_platt`. Newton's method with step halving on this
    convex loss, as `fit_platt`."""
    y, L = np.asarray(y, int).ravel(), np.asarray(logp, float)
    n, k = L.shape
    counts = np.bincount(y, minlength=k)
    true = (counts[y] + 1) / (counts[y] + 2) if smoothed else np.ones(n)
    T = np.repeat(((1 - true) / (k - 1))[:, None], k, axis=1)
    T[np.arange(n), y] = true
    J = np.zeros((n, k, k))  # d z_ik / d (a, b_1 .. b_{k-1})
    J[:, :, 0] = L
    J[:, np.arange(1, k), np.arange(1, k)] = 1.0

    def z_of(theta):
        return theta[0] * L + np.concatenate([[0.0], theta[1:]])

    def nll(theta):
        z = z_of(theta)
        m = z.max(axis=1, keepdims=True)
        return float(np.sum(m[:, 0] + np.log(np.exp(z - m).sum(axis=1)) - (T * z).sum(axis=1)))

    def newton(theta, free):
        loss = nll(theta)
        for _ in range(iterations):
            q = softmax(z_of(theta))
            g = np.einsum("nkp,nk->p", J, q - T)[free]
            cov = q[:, :, None] * np.eye(k)[None] - q[:, :, None] * q[:, None, :]
            h = np.einsum("nkp,nkl,nlq->pq", J, cov, J)[np.ix_(free, free)] + 1e-9 * np.eye(len(free))
            step = np.zeros_like(theta)
            step[free] = np.linalg.solve(h, g)
            scale = 1.0
            while scale > 1e-8 and nll(theta - scale * step) > loss:
                scale /= 2
            if scale <= 1e-8:
                break
            theta = theta - scale * step
            new = nll(theta)
            if loss - new < 1e-12 * max(1.0, abs(loss)) and np.abs(scale * step).max() < 1e-8:
                break
            loss = new
        return theta

    theta = newton(np.concatenate([[1.0], np.zeros(k - 1)]), np.arange(k))
    bounded = _bounded_slope(theta[0], smoothed)
    if bounded != theta[0]:  # the slope stops at its bound: refit the biases alone
        theta = newton(np.concatenate([[bounded], theta[1:]]), np.arange(1, k))
    return float(theta[0]), [0.0, *(float(b) for b in theta[1:])]


def multiclass_summary(y, prob, classes) -> dict:
    """Accuracy of the most probable class, each class's recall and one-vs-rest AUC, their macro mean, the
    top-label calibration error and the confusion matrix (rows: true class, columns: predicted)."""
    y, prob = np.asarray(y, int).ravel(), np.asarray(prob, float)
    pred = prob.argmax(axis=1)
    k = len(classes)
    matrix = np.zeros((k, k), int)
    np.add.at(matrix, (y, pred), 1)
    recall = {c: _ratio(matrix[i, i], matrix[i].sum()) for i, c in enumerate(classes)}
    auc = dict(zip(classes, one_vs_rest_auc(y, prob)))
    return {"accuracy": float((pred == y).mean()), "recall": recall, "auc": auc, "macro_auc": macro_auc(y, prob),
            "ece": expected_calibration_error(pred == y, prob.max(axis=1))[0], "confusion": matrix.tolist()}


def one_vs_rest_auc(y, prob) -> list[float]:
    """Each class's AUC against all the others (nan for a class that is absent, or all there is)."""
    y, prob = np.asarray(y, int).ravel(), np.asarray(prob, float)
    return [roc_auc((y == i).astype(int), prob[:, i]) if 0 < (y == i).sum() < len(y) else float("nan")
            for i in range(prob.shape[1])]


def macro_auc(y, prob) -> float:
    """The mean one-vs-rest AUC over the classes it is defined for (nan if none)."""
    known = [v for v in one_vs_rest_auc(y, prob) if not np.isnan(v)]
    return float(np.mean(known)) if known else float("nan")


def wilson_ci(successes: float, total: float, z: float = 1.96) -> list[float]:
    """95% Wilson score interval of a proportion ([nan, nan] when total is 0)."""
    if total <= 0:
        return [float("nan"), float("nan")]
    p = successes / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * np.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return [float(max(0.0, centre - half)), float(min(1.0, centre + half))]
