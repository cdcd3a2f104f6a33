"""Linear heads on frozen features, compared on val: what a backbone's features are worth without fine-tuning it,
and whether a dedicated bacterial-vs-viral head beats the shipped subtype head.

`python -m training probe` takes a run's patient split (its `split.csv`) and one source of features:

- `--backbone NAME`: an ImageNet backbone fetched by `python -m training backbones fetch`, frozen, global-average
  pooled. Xception (about 4.6 GFLOPs at 224) is too slow to fine-tune on a 2-core CPU; its frozen features cost one
  forward pass per image, which the issue allows ("freezing early blocks, or caching features").
- `--bundle FOLDER`: the pooled features each of a bundle's members feeds its head (the layer under the last
  Dense), concatenated: a dedicated head re-fitted on the shipped networks.

Images go through the project's one preprocessing path (`model.core.preprocess.to_model_input` at the run's input
spec, then the stem every member uses: per-image standardisation). For each question (normal vs pneumonia on all
images; bacterial vs viral on the pneumonia images) an L2-penalised logistic regression is fitted on the train
split, its penalty chosen by patient-grouped 5-fold cross-validation inside train. It is then scored on val, where
every comparison is made. Because the shipped members were trained on the train images, their features fit those
images better than new ones; `val_cv` is therefore also given: out-of-fold predictions over val from heads fitted on
the other val patients (5 patient-grouped folds, the same penalty), so no val prediction comes from a head that saw
that patient. The internal test split and external sets are not scored here: nothing is chosen from a probe.
"""
from __future__ import annotations

import hashlib
import json
import time
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from model.core.metrics import roc_auc

PENALTIES = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)  # L2 strength on standardised features, per training example
FOLDS = 5


def fit_logistic(x: np.ndarray, y: np.ndarray, penalty: float, iterations: int = 500) -> np.ndarray:
    """Weights (bias last) of an L2-penalised logistic regression on standardised `x`, by L-BFGS (scipy) with the
    exact gradient: each step costs one pass over the features, so thousands of features stay cheap."""
    from scipy.optimize import minimize

    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)  # once: a float32 x would be cast at every step
    n, d = x.shape
    ridge = penalty * n

    def loss(w):
        z = x @ w[:-1] + w[-1]
        p = 1 / (1 + np.exp(-np.clip(z, -30, 30)))
        value = np.sum(np.logaddexp(0, z) - y * z) + 0.5 * ridge * (w[:-1] @ w[:-1])
        residual = p - y
        return value, np.append(x.T @ residual + ridge * w[:-1], residual.sum())  # the bias is not penalised

    return minimize(loss, np.zeros(d + 1), jac=True, method="L-BFGS-B", options={"maxiter": iterations}).x


def predict_logistic(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-np.clip(x @ w[:-1] + w[-1], -30, 30)))


def patient_folds(patients: np.ndarray, k: int = FOLDS, seed: int = 0) -> np.ndarray:
    """A fold index per row; every image of a patient falls in the same fold."""
    unique = np.unique(patients)
    order = np.random.default_rng(seed).permutation(len(unique))
    fold_of = dict(zip(unique[order], np.arange(len(unique)) % k))
    return np.array([fold_of[p] for p in patients])


def fit_and_predict(x_fit: np.ndarray, y_fit: np.ndarray, x_new: np.ndarray, penalty: float) -> np.ndarray:
    """Probabilities for `x_new` from a head fitted on `x_fit`, both standardised by `x_fit`'s mean and spread."""
    mu, sd = x_fit.mean(0), x_fit.std(0) + 1e-6
    return predict_logistic(fit_logistic((x_fit - mu) / sd, y_fit, penalty), (x_new - mu) / sd)


def out_of_fold(x: np.ndarray, y: np.ndarray, folds: np.ndarray, penalty: float) -> np.ndarray:
    """Each row's probability from a head fitted on the other folds."""
    p = np.empty(len(y))
    for f in np.unique(folds):
        p[folds == f] = fit_and_predict(x[folds != f], y[folds != f], x[folds == f], penalty)
    return p


def probe(x_train, y_train, patients_train, x_val, y_val, patients_val) -> dict:
    """Choose the penalty by grouped CV in train, fit on all of train, score val; plus out-of-fold val (see the
    module docstring)."""
    folds = patient_folds(patients_train)
    cv = {c: roc_auc(y_train, out_of_fold(x_train, y_train, folds, c)) for c in PENALTIES}
    chosen = max(PENALTIES, key=lambda c: -np.inf if np.isnan(cv[c]) else cv[c])  # NaN: a fold of one class
    val = fit_and_predict(x_train, y_train, x_val, chosen)
    val_cv = out_of_fold(x_val, y_val, patient_folds(patients_val), chosen)
    return {"penalty": chosen, "train_cv_auc": {str(c): round(a, 4) for c, a in cv.items()},
            "val_auc": roc_auc(y_val, val), "val_cv_auc": roc_auc(y_val, val_cv),
            "n_train": int(len(y_train)), "n_val": int(len(y_val))}


def backbone_model(name: str, folder: Path, spec: dict):
    """A fetched ImageNet backbone, frozen, with global-average pooling, on the same input as the pretrained members
    (`training.architectures.imagenet_input`)."""
    import keras

    from training.architectures import imagenet_input
    from training.backbones import load_backbone

    inputs, x = imagenet_input(spec, name)
    build = {"xception_imagenet": keras.applications.Xception,
             "mobilenet_v2_nsfwjs": keras.applications.MobileNetV2}[name]
    backbone = build(input_tensor=x, include_top=False, weights=None, pooling="avg")
    model = keras.Model(inputs, backbone.output)
    load_backbone(model, name, folder)
    return model


def weights_digest(model) -> str:
    """sha256 of every weight the model holds, in order: names the numbers that make the features, however they
    were loaded (a cache keyed only by the weight file would outlive a fix to the loader)."""
    digest = hashlib.sha256()
    for weight in model.weights:
        digest.update(np.ascontiguousarray(weight.numpy()).tobytes())
    return digest.hexdigest()


def bundle_features(images: np.ndarray, bundle_dir: Path, batch: int = 32) -> np.ndarray:
    """Each member's pooled features (the input of its last Dense), concatenated in manifest order."""
    import keras

    from model.core.bundle import load_bundle

    bundle = load_bundle(bundle_dir)
    parts = []
    for member in bundle.members:
        head = member.model.layers[-1]
        parts.append(_forward(keras.Model(member.model.inputs, head.input), images, batch))
    return np.hstack(parts)


def _forward(model, images: np.ndarray, batch: int) -> np.ndarray:
    import tensorflow as tf

    run = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    return np.concatenate([run(tf.constant(images[i:i + batch], tf.float32)).numpy()
                           for i in range(0, len(images), batch)])


def run_probe(run: str | Path, data: str | Path, backbone: str | None = None, bundle: str | Path | None = None,
              backbones_dir: str | Path = "backbones", cache: str | Path | None = None) -> dict:
    """Features for the run's train and val images, then both questions (see the module docstring)."""
    from training.data import cached_array, load_images

    run, data = Path(run), Path(data)
    config = json.loads((run / "config.json").read_text())
    split = pd.read_csv(run / "split.csv")
    split = split[split["split"].isin(["train", "val"])].reset_index(drop=True)
    spec = config["input"]
    table = split.assign(path=[str(data / p) for p in split["path"]])
    images = load_images(table, spec, cache)
    started = time.time()
    if backbone:
        record = json.loads((Path(backbones_dir) / f"{backbone}.json").read_text())
        model = backbone_model(backbone, Path(backbones_dir), spec)
        source = {"backbone": backbone, "sha256": record["sha256"], "weights_loaded": weights_digest(model)}
        features = partial(_forward, model, images, 32)
    else:
        manifest = json.loads((Path(bundle) / "manifest.json").read_text())
        source = {"bundle": Path(bundle).name, "members": [m["name"] for m in manifest["members"]],
                  "sha256": [m["sha256"] for m in manifest["members"]]}
        features = partial(bundle_features, images, Path(bundle))
    x = cached_array(cache, "features", {"paths": list(split["path"]), "spec": spec, **source}, features)
    seconds = time.time() - started
    tr, va = (split["split"] == "train").to_numpy(), (split["split"] == "val").to_numpy()
    patients = split["patient_id"].astype(str).to_numpy()
    pneumonia = (split["label"] == "PNEUMONIA").to_numpy()
    viral = (split["subtype"] == "virus").to_numpy()
    result = {**source, "run": run.name, "features": int(x.shape[1]), "feature_seconds": round(seconds, 1),
              "split_used": "train (fit, penalty by grouped CV) and val (comparison); test and external not scored"}
    result["normal_vs_pneumonia"] = probe(x[tr], pneumonia[tr].astype(float), patients[tr],
                                          x[va], pneumonia[va].astype(float), patients[va])
    bt, bv = tr & pneumonia, va & pneumonia
    result["bacterial_vs_viral"] = probe(x[bt], viral[bt].astype(float), patients[bt],
                                         x[bv], viral[bv].astype(float), patients[bv])
    return result
