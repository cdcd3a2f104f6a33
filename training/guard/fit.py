"""The guard's two classifiers, fitted in numpy: a PCA of the 32×32 thumbnail, and a one-hidden-layer tanh network
trained by full-batch Adam on a class-balanced cross-entropy, keeping the weights with the best val loss.

The features themselves (image_stats, thumbnail, cxr_vector, population_features) live in model/core/guard.py, which
serving runs: training imports them so the two cannot drift.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from model.core import guard as G

CXR_PCA_K = 24
POP_PCA_K = 48
TARGET_FALSE_ALARM_VAL = 0.005  # not_chest_xray threshold: this share of val radiographs (as they are and
                                # altered, pooled) lie below it
COLOUR_QUANTILE = 0.10          # colour uploads must score like the middle 90% of val radiographs to pass
POP_FALSE_ALARM_VAL = 0.02      # outside_intended_population threshold: 2% of val children lie above it


# --------------------------------------------------------------------------------------------------------------------
# Features of many images at once
# --------------------------------------------------------------------------------------------------------------------
@dataclass
class Described:
    """Images as the guard sees them: image_stats rows and flattened 32×32 thumbnails."""

    stats: np.ndarray   # (n, 18)
    thumbs: np.ndarray  # (n, 1024)

    @classmethod
    def of(cls, works: list[np.ndarray]) -> Described:
        """From working copies (model.core.guard.working_copy)."""
        stats = np.stack([G.image_stats(w) for w in works])
        thumbs = np.stack([G.thumbnail(w) for w in works]).reshape(len(works), -1)
        return cls(stats, thumbs)

    def cxr_vectors(self, params: dict) -> np.ndarray:
        """The radiograph classifier's inputs (needs the cxr_pca_ parameters)."""
        return np.stack([G.cxr_vector(s, t.reshape(G.THUMB, G.THUMB), params)
                         for s, t in zip(self.stats, self.thumbs)])

    def population_vectors(self, params: dict) -> np.ndarray:
        """The population classifier's inputs (needs the pop_pca_ parameters)."""
        return np.stack([G.population_features(t.reshape(G.THUMB, G.THUMB), params) for t in self.thumbs])

    def ruled_out(self) -> np.ndarray:
        """Pictures the exposure rules (blank, saturated) settle before any classifier looks at them."""
        return np.array([G.exposure_problem(s) is not None for s in self.stats])


# --------------------------------------------------------------------------------------------------------------------
# PCA and the small network
# --------------------------------------------------------------------------------------------------------------------
def fit_pca(z: np.ndarray, k: int) -> dict:
    mean = z.mean(axis=0)
    _, s, vt = np.linalg.svd(z - mean, full_matrices=False)
    var = (s[:k] ** 2) / (len(z) - 1)
    return {"mean": mean.astype(np.float32), "components": vt[:k].astype(np.float32),
            "variance": np.maximum(var, 1e-6).astype(np.float32)}


def prefixed(model: dict, prefix: str) -> dict:
    """Parameter names as guard.npz stores them: "cxr_w1", "pop_pca_mean", ..."""
    return {prefix + k: v for k, v in model.items()}


def _balanced_weights(y: np.ndarray) -> np.ndarray:
    """Per-example weights giving both classes the same total weight."""
    return np.where(y == 1, 0.5 / max(y.mean(), 1e-9), 0.5 / max(1 - y.mean(), 1e-9))


def _forward(p: dict, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(hidden activations, logits); without a hidden layer the inputs are the activations."""
    h = np.tanh(x @ p["w1"] + p["b1"]) if "w1" in p else x
    return h, h @ p["w2"] + p["b2"]


def _loss(p: dict, x: np.ndarray, y: np.ndarray, weight: np.ndarray) -> float:
    _, z = _forward(p, x)
    return float((weight * (np.logaddexp(0, z) - y * z)).mean())


def _gradients(p: dict, x: np.ndarray, y: np.ndarray, weight: np.ndarray, l2: float) -> dict:
    h, z = _forward(p, x)
    dz = weight * (1 / (1 + np.exp(-z)) - y) / len(y)  # d loss / d logit
    grads = {"w2": h.T @ dz + l2 * p["w2"], "b2": np.asarray(dz.sum())}
    if "w1" in p:
        dh = np.outer(dz, p["w2"]) * (1 - h * h)
        grads["w1"] = x.T @ dh + l2 * p["w1"]
        grads["b1"] = dh.sum(0)
    return grads


class _Adam:
    """Adam (β1 0.9, β2 0.999, ε 1e-8) over a dict of arrays."""

    def __init__(self, params: dict, lr: float):
        self.lr, self.t = lr, 0
        self.m = {k: np.zeros_like(v) for k, v in params.items()}
        self.v = {k: np.zeros_like(v) for k, v in params.items()}

    def step(self, params: dict, grads: dict) -> None:
        self.t += 1
        for k in params:
            self.m[k] = 0.9 * self.m[k] + 0.1 * grads[k]
            self.v[k] = 0.999 * self.v[k] + 0.001 * grads[k] ** 2
            m_hat = self.m[k] / (1 - 0.9 ** self.t)
            v_hat = self.v[k] / (1 - 0.999 ** self.t)
            params[k] = params[k] - self.lr * m_hat / (np.sqrt(v_hat) + 1e-8)


def train_mlp(x, y, xv, yv, hidden: int = 32, l2: float = 1e-3, steps: int = 1500, lr: float = 0.01,
              seed: int = 0) -> dict:
    """One tanh hidden layer (hidden=0: logistic regression) on standardised inputs; balanced classes; the weights
    with the lowest val loss (checked every 25 steps) win. Returns what model.core.guard.mlp reads (w1, b1, w2, b2,
    mu, sigma), as float32."""
    rng = np.random.default_rng(seed)
    mu, sigma = x.mean(0), x.std(0) + 1e-6
    xs, xvs = (x - mu) / sigma, (xv - mu) / sigma
    weight, weight_val = _balanced_weights(y), _balanced_weights(yv)
    d = x.shape[1]
    p = {}
    if hidden:
        p["w1"] = rng.normal(0, 1 / np.sqrt(d), (d, hidden))
        p["b1"] = np.zeros(hidden)
        p["w2"] = rng.normal(0, 1 / np.sqrt(hidden), (hidden,))
    else:
        p["w2"] = np.zeros(d)
    p["b2"] = np.zeros(())
    adam = _Adam(p, lr)
    best_loss, best = np.inf, None
    for step in range(1, steps + 1):
        adam.step(p, _gradients(p, xs, y, weight, l2))
        if step % 25 == 0:
            val = _loss(p, xvs, yv, weight_val)
            if val < best_loss:
                best_loss, best = val, {k: v.copy() for k, v in p.items()}
    out = {k: v.astype(np.float32) for k, v in best.items()}
    out["mu"], out["sigma"] = mu.astype(np.float32), sigma.astype(np.float32)
    return out


# --------------------------------------------------------------------------------------------------------------------
# The two classifiers, thresholds chosen on val
# --------------------------------------------------------------------------------------------------------------------
@dataclass
class RadiographSet:
    """Everything the radiograph classifier learns from, as its input vectors, with each row's split."""

    real: np.ndarray          # the radiographs as they are
    altered: np.ndarray       # the same radiographs altered as uploads are (augment_radiograph)
    real_split: np.ndarray
    negatives: np.ndarray
    neg_split: np.ndarray
    neg_family: np.ndarray
    neg_ruled: np.ndarray     # settled by the exposure rules: the classifier never sees these


def fit_radiograph_classifier(data: RadiographSet, seed: int,
                              exclude_family: str | None = None) -> tuple[dict, float, float]:
    """(cxr_ parameters, threshold, colour threshold). The threshold is the highest (most pictures caught) that
    flags at most TARGET_FALSE_ALARM_VAL of val radiographs, as they are and altered; colour uploads must also
    score above COLOUR_QUANTILE of val radiographs. `exclude_family` leaves one family of negatives out."""
    train_neg = (data.neg_split == "train") & ~data.neg_ruled
    val_neg = (data.neg_split == "val") & ~data.neg_ruled
    if exclude_family:
        train_neg &= data.neg_family != exclude_family
        val_neg &= data.neg_family != exclude_family
    train_real, val_real = data.real_split == "train", data.real_split == "val"
    x = np.concatenate([data.real[train_real], data.altered[train_real], data.negatives[train_neg]])
    y = np.concatenate([np.ones(2 * train_real.sum()), np.zeros(train_neg.sum())])
    xv = np.concatenate([data.real[val_real], data.altered[val_real], data.negatives[val_neg]])
    yv = np.concatenate([np.ones(2 * val_real.sum()), np.zeros(val_neg.sum())])
    model = prefixed(train_mlp(x, y, xv, yv, hidden=32, seed=seed), "cxr_")
    threshold = float(np.quantile(G.mlp(xv[yv == 1], model, "cxr_"), TARGET_FALSE_ALARM_VAL))
    colour_threshold = float(np.quantile(G.mlp(data.real[val_real], model, "cxr_"), COLOUR_QUANTILE))
    return model, threshold, colour_threshold


def fit_population_classifier(x: np.ndarray, adult: np.ndarray, train: np.ndarray, val: np.ndarray,
                              seed: int) -> tuple[dict, float]:
    """(pop_ parameters, threshold): P(adult) above the threshold flags POP_FALSE_ALARM_VAL of val children."""
    model = prefixed(train_mlp(x[train], adult[train], x[val], adult[val], hidden=16, l2=3e-3, seed=seed), "pop_")
    children_val = val & (adult == 0)
    return model, float(np.quantile(G.mlp(x[children_val], model, "pop_"), 1 - POP_FALSE_ALARM_VAL))
