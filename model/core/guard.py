"""Is an upload a frontal chest radiograph, and does it come from the population the bundle learned from?

    check(decoded, population=None) -> [{"code": ..., "message": ...}, ...]

The list is appended to an analysis result's warnings: ``analyse(..., guard=for_bundle(bundle))``. Codes:
``not_chest_xray`` (always present when the image is not a frontal chest radiograph, with one or more of
``too_small``, ``blank_image``, ``saturated_image``, ``lateral_view`` saying why where they can) and
``outside_intended_population`` (an adult radiograph given to a bundle that learned from young children).

It is cheap (a few milliseconds per image, whatever its size) and never raises: DICOM header fields, image
statistics, and two tiny numpy classifiers on a 32×32 thumbnail whose parameters live in ``model/guard_params/``
(written by ``python -m training guard``, sha256-checked when first used). Method and measured rates:
docs/GUARD.md. Never imports training/.
"""
from __future__ import annotations

import hashlib
import json
import logging
import threading
from pathlib import Path

import cv2
import numpy as np

from model.core.preprocess import shrink
from model.core.types import WarningCode

__all__ = ["check", "for_bundle", "features", "population_features", "load_params", "Checked", "GuardError",
           "PARAMS_DIR"]

log = logging.getLogger(__name__)

PARAMS_DIR = Path(__file__).parent.parent / "guard_params"
FEATURE_VERSION = 1

WORK_SIZE = 256
"""Longest side of the working copy every statistic is computed on (so cost does not grow with the upload)."""
THUMB = 32
BLANK_STD = 4.0
"""Standard deviation (0–255 scale) below which an image counts as blank."""
MIN_SIDE = 64
"""Below this many pixels on the short side there is too little to tell what the image shows."""

# DICOM header values that settle the question without looking at pixels.
NOT_RADIOGRAPHY_MODALITIES = {
    "CT": "a CT image", "MR": "an MRI image", "US": "an ultrasound image", "NM": "a nuclear medicine image",
    "PT": "a PET image", "MG": "a mammogram", "XA": "an angiography image", "RF": "a fluoroscopy image",
    "OP": "an eye photograph", "OPT": "an eye scan", "XC": "a photograph", "ES": "an endoscopy image",
    "SM": "a microscopy slide", "IO": "a dental X-ray", "PX": "a dental X-ray", "DG": "a photograph",
    "ECG": "an ECG", "SR": "a report", "DOC": "a document", "RTIMAGE": "a radiotherapy image",
}
NOT_CHEST_BODY_PARTS = (
    "SKULL", "HEAD", "BRAIN", "FACE", "SINUS", "JAW", "TMJ", "NECK", "CSPINE", "LSPINE", "SSPINE", "SPINE",
    "ABDOMEN", "PELVIS", "HIP", "SHOULDER", "HUMERUS", "ARM", "ELBOW", "FOREARM", "WRIST", "HAND", "FINGER",
    "THUMB", "FEMUR", "LEG", "KNEE", "TIBIA", "ANKLE", "FOOT", "TOE", "HEEL", "BREAST", "EXTREMITY", "KIDNEY",
)
CHEST_BODY_PARTS = ("CHEST", "THORAX", "LUNG", "TORSO")
LATERAL_VIEWS = {"LL", "RL", "LAT", "LATERAL", "LLD", "RLD", "XTABLE", "LATERAL DECUBITUS"}


class GuardError(RuntimeError):
    """The guard's parameter files are missing, altered or from another version."""


def _warning(code: WarningCode, message: str) -> dict:
    return {"code": code, "message": message}


class Checked(list):
    """The check's warnings (a plain list to every caller) with the scores behind them: `scores["chest_xray"]`,
    P(frontal chest radiograph), and `scores["adult"]`, P(adult), each present only when that classifier ran.
    `analyse` keeps them as `Result.guard_scores`, so the record can show how close a call was."""

    def __init__(self, warnings=(), scores: dict | None = None):
        super().__init__(warnings)
        self.scores = dict(scores or {})


# --------------------------------------------------------------------------------------------------------------------
# Features (training imports these, so training and serving cannot drift)
# --------------------------------------------------------------------------------------------------------------------
def working_copy(pixels: np.ndarray) -> np.ndarray:
    """uint8 H×W → uint8 copy whose longest side is at most WORK_SIZE (area-averaged; big uploads are first
    strided down to ≤ 2×WORK_SIZE, which costs far less than averaging tens of megapixels)."""
    pixels = np.ascontiguousarray(pixels)
    h, w = pixels.shape
    step = max(1, max(h, w) // (2 * WORK_SIZE))
    if step > 1:
        pixels = np.ascontiguousarray(pixels[::step, ::step])
    return np.ascontiguousarray(shrink(pixels, WORK_SIZE))


def _resize(img: np.ndarray, n: int) -> np.ndarray:
    shrinking = img.shape[0] >= n and img.shape[1] >= n
    return cv2.resize(img, (n, n), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def thumbnail(work: np.ndarray) -> np.ndarray:
    """32×32 float32 thumbnail (squashed like the model input), standardised to mean 0, sd 1: exposure and
    contrast drop out, the layout stays."""
    t = _resize(work, THUMB).astype(np.float32)
    return (t - t.mean()) / max(float(t.std()), 1.0)


def image_stats(work: np.ndarray) -> np.ndarray:
    """Histogram, edge and symmetry statistics of the working copy (18 numbers, each roughly in [0, 1])."""
    n = work.size
    hist = np.bincount(work.ravel(), minlength=256).astype(np.float64) / n
    cdf = np.cumsum(hist)
    pct = np.searchsorted(cdf, [0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99]) / 255.0
    levels = np.arange(256)
    mean = float(hist @ levels)
    std = float(np.sqrt(max(hist @ (levels - mean) ** 2, 0.0)))
    nz = hist[hist > 0]
    entropy = float(-(nz * np.log2(nz)).sum()) / 8.0
    fixed = _resize(work, 128).astype(np.float32)
    gx = cv2.Sobel(fixed, cv2.CV_32F, 1, 0, ksize=3) / (4 * 255.0)
    gy = cv2.Sobel(fixed, cv2.CV_32F, 0, 1, ksize=3) / (4 * 255.0)
    mag = np.sqrt(gx * gx + gy * gy)
    lap = np.abs(cv2.Laplacian(fixed, cv2.CV_32F, ksize=1)) / 255.0
    t = thumbnail(work)
    lr = float((t * t[:, ::-1]).mean())  # correlation with its mirror image (t is standardised)
    ud = float((t * t[::-1, :]).mean())
    return np.array([
        mean / 255.0, std / 128.0, *pct,
        hist[:6].sum(), hist[250:].sum(), entropy, (hist > 0).sum() / 256.0, hist.max(),
        float(mag.mean()) * 4, float((mag > 0.25).mean()), float(lap.mean()) * 4, lr, ud,
    ], dtype=np.float32)


def features(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(stats, 32×32 standardised thumbnail) of a uint8 H×W image: everything both classifiers read."""
    work = working_copy(pixels)
    return image_stats(work), thumbnail(work)


def exposure_problem(stats: np.ndarray) -> str | None:
    """"blank" (almost no contrast) or "saturated" (almost all black and/or white), from image_stats()."""
    std, dark, bright = stats[1] * 128.0, stats[9], stats[10]
    if std < BLANK_STD:
        return "blank"
    if dark > 0.85 or bright > 0.6 or dark + bright > 0.9:
        return "saturated"
    return None


def _pca_scores(z: np.ndarray, mean, components, variance) -> tuple[np.ndarray, float, float]:
    """Coefficients in a PCA basis, log reconstruction error and log mean Mahalanobis energy."""
    centred = z - mean
    coef = components @ centred
    resid = centred - components.T @ coef
    recon = float(np.log(resid @ resid / z.size + 1e-6))
    mahal = float(np.log((coef * coef / variance).mean() + 1e-6))
    return coef, recon, mahal


def cxr_vector(stats: np.ndarray, thumb: np.ndarray, p: dict) -> np.ndarray:
    """The radiograph classifier's input: stats, a 16×16 layout, and how far the thumbnail lies from the
    space of real chest radiographs (PCA fitted on them: a novelty score that needs no negative examples)."""
    z = thumb.ravel()
    _, recon, mahal = _pca_scores(z, p["cxr_pca_mean"], p["cxr_pca_components"], p["cxr_pca_variance"])
    small = thumb.reshape(16, 2, 16, 2).mean(axis=(1, 3)).ravel()
    return np.concatenate([stats, small, [recon, mahal]]).astype(np.float32)


def population_features(thumb: np.ndarray, p: dict) -> np.ndarray:
    coef, recon, mahal = _pca_scores(thumb.ravel(), p["pop_pca_mean"], p["pop_pca_components"],
                                     p["pop_pca_variance"])
    return np.concatenate([coef / np.sqrt(p["pop_pca_variance"]), [recon, mahal]]).astype(np.float32)


def mlp(x: np.ndarray, p: dict, prefix: str) -> np.ndarray:
    """P(positive) from a one-hidden-layer tanh network (or logistic regression when it has no hidden layer)."""
    h = (np.atleast_2d(x) - p[prefix + "mu"]) / p[prefix + "sigma"]
    if prefix + "w1" in p:
        h = np.tanh(h @ p[prefix + "w1"] + p[prefix + "b1"])
    logit = h @ p[prefix + "w2"] + p[prefix + "b2"]
    return 1.0 / (1.0 + np.exp(-np.clip(logit.ravel(), -50, 50)))


# --------------------------------------------------------------------------------------------------------------------
# Parameters: loaded once, checked against the sha256 recorded next to them
# --------------------------------------------------------------------------------------------------------------------
_CACHE: dict = {}
_LOCK = threading.Lock()


def load_params(folder: str | Path | None = None) -> dict:
    """The classifiers' arrays and thresholds from ``guard.npz``, verified against ``metrics.json``'s sha256."""
    folder = Path(folder) if folder is not None else PARAMS_DIR
    key = str(folder.resolve())
    with _LOCK:
        if key in _CACHE:
            return _CACHE[key]
        try:
            info = json.loads((folder / "metrics.json").read_text())
            data = (folder / "guard.npz").read_bytes()
        except (OSError, ValueError) as e:
            raise GuardError(f"The input check's parameters could not be read from {folder}: {e}") from None
        if hashlib.sha256(data).hexdigest() != info.get("sha256"):
            raise GuardError(f"{folder / 'guard.npz'} does not match the sha256 in metrics.json; refusing to use it.")
        import io
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            params = {k: npz[k] for k in npz.files}
        if int(params.get("feature_version", -1)) != FEATURE_VERSION:
            raise GuardError(f"{folder / 'guard.npz'} was made for another version of the input check.")
        _CACHE[key] = params
        return params


# --------------------------------------------------------------------------------------------------------------------
# The check
# --------------------------------------------------------------------------------------------------------------------
def _header_reasons(meta: dict) -> tuple[list[str], list[dict]]:
    reasons, extra = [], []
    modality = str(meta.get("modality") or "").strip().upper()
    if modality in NOT_RADIOGRAPHY_MODALITIES:
        reasons.append(f"the file says it is {NOT_RADIOGRAPHY_MODALITIES[modality]} ({modality})")
    part = str(meta.get("body_part") or "").strip().upper()
    if part and not any(c in part for c in CHEST_BODY_PARTS) and any(b in part for b in NOT_CHEST_BODY_PARTS):
        reasons.append(f"the file says it shows the {part.lower()}")
    view = str(meta.get("view_position") or "").strip().upper()
    if view in LATERAL_VIEWS:
        reasons.append("it is a side (lateral) view")
        extra.append(_warning(
            WarningCode.LATERAL_VIEW,
            "The file says this is a lateral (side) view. The model reads frontal "
            "(PA or AP) chest X-rays only."))
    return reasons, extra


def for_bundle(bundle):
    """The guard to pass to ``analyse(..., guard=...)`` for this bundle: checks every upload, and judges the
    population when the bundle's manifest says it learned from a pediatric one."""
    population = (bundle.manifest or {}).get("population")
    return lambda decoded: check(decoded, population=population)


def check(decoded, population: str | None = None, params: dict | None = None) -> Checked:
    """Warnings for an upload that is not a frontal chest radiograph, or (for a bundle whose population string
    starts with "pediatric") one that looks like an adult's, with the classifiers' scores (`Checked.scores`).
    Never raises: if the check itself fails, it says so in a warning rather than hiding the prediction."""
    try:
        scores: dict = {}
        return Checked(_check(decoded, population, params, scores), scores)
    except Exception as e:  # the guard must never take a prediction down with it
        log.warning("input check failed: %s", type(e).__name__)
        return Checked([_warning(WarningCode.GUARD_UNAVAILABLE, "The check that this is a chest X-ray could not run, "
                                                                "so it was skipped. Make sure the image is a frontal "
                                                                "chest X-ray.")])


def _check(decoded, population, params, scores: dict) -> list[dict]:
    pixels = np.asarray(decoded.pixels)
    if pixels.ndim == 3:  # decode() always gives 2-D uint8; be lenient with other callers
        pixels = pixels.mean(axis=-1)
    if pixels.dtype != np.uint8:
        pixels = np.clip(np.nan_to_num(pixels.astype(np.float32)), 0, 255).astype(np.uint8)
    meta = decoded.meta or {}
    have = {w.get("code") for w in (decoded.warnings or [])}
    out: list[dict] = []
    reasons, extra = _header_reasons(meta)

    h, w = pixels.shape[:2] if pixels.ndim >= 2 else (0, 0)
    if pixels.ndim != 2 or min(h, w) < MIN_SIDE:
        reasons.append("it is too small to check")
        extra.append(_warning(
            WarningCode.TOO_SMALL,
            f"This image is only {w}×{h} pixels: too small to check what it shows, "
            f"or to read (at least {MIN_SIDE} pixels on each side are needed)."))
        return [_not_cxr(reasons)] + extra

    stats, thumb = features(pixels)
    exposure = exposure_problem(stats)
    if exposure == "blank":
        reasons.append("it is blank")
        if WarningCode.BLANK_IMAGE not in have:
            extra.append(_warning(
                WarningCode.BLANK_IMAGE,
                "This image is almost uniform: it shows nothing to analyse."))
    elif exposure == "saturated":
        reasons.append("it is almost entirely black or white")
        extra.append(_warning(
            WarningCode.SATURATED_IMAGE,
            "This image is almost entirely black or white (badly exposed, or "
            "not an X-ray)."))
    else:
        p = params if params is not None else load_params()
        score = scores["chest_xray"] = float(mlp(cxr_vector(stats, thumb, p), p, "cxr_")[0])
        colour = WarningCode.COLOR_IMAGE in have
        if score < float(p["cxr_threshold_colour" if colour else "cxr_threshold"]):
            reasons.append("it is a colour picture" if colour else
                           "it looks like a photo, document, screen or other picture, or another kind of scan")
        elif not reasons and _is_pediatric(population):
            adult = scores["adult"] = float(mlp(population_features(thumb, p), p, "pop_")[0])
            if adult >= float(p["pop_threshold"]):
                out.append(_warning(
                    WarningCode.OUTSIDE_INTENDED_POPULATION,
                    "This looks like an adult's chest X-ray, but this model learned from young children's "
                    f"X-rays only ({population.strip()}). Its result for adults has not been checked and may be "
                    "wrong."))
    if reasons:
        return [_not_cxr(reasons)] + extra + out
    return extra + out


def _is_pediatric(population) -> bool:
    return str(population or "").strip().lower().startswith(("pediatric", "paediatric"))


def _not_cxr(reasons: list[str]) -> dict:
    why = "; ".join(dict.fromkeys(reasons))
    return _warning(
        WarningCode.NOT_CHEST_XRAY,
        f"This does not look like a frontal chest X-ray ({why}). The model was trained "
        "on frontal chest X-rays only, so its result for this image cannot be relied on.")
