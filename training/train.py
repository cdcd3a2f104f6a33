"""Train ensemble members on a patient-level split and save them, with everything needed to repeat the run.

A run folder holds: config.json, split.csv, hardware.json, members/<name>.keras, history-<name>.csv, and
timing.json. Evaluation (training.evaluate) and export (training.export) read only that folder.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from training import data as data_lib
from training.architectures import ARCHITECTURES, last_conv_layer

LABEL_COLUMNS = {"binary": "label", "multiclass": "subtype", "multilabel": "finding_labels"}


def code_commit() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                             cwd=Path(__file__).parent).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, cwd=Path(__file__).parent).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def hardware() -> dict:
    devices = [str(d) for d in keras.distribution.list_devices()] if hasattr(keras, "distribution") else []
    return {"backend": keras.backend.backend(), "keras": keras.__version__, "devices": devices,
            "cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}


def encode_targets(df: pd.DataFrame, task: str, classes: list[str]) -> np.ndarray:
    """Target matrix: binary (N, 1) with the positive class last in `classes`; multiclass one-hot; multilabel
    multi-hot from a pipe-separated column."""
    if task == "binary":
        return (df["label"].to_numpy() == classes[-1]).astype("float32")[:, None]
    if task == "multiclass":
        col = df["class"].to_numpy()
        return np.stack([(col == c) for c in classes], axis=1).astype("float32")
    found = df["finding_labels"].fillna("").str.split("|")
    return np.array([[c in f for c in classes] for f in found], dtype="float32")


def class_weights(y: np.ndarray, task: str) -> dict | None:
    """Inverse-frequency weights so each class contributes equally (binary and multiclass)."""
    if task == "multilabel":
        return None
    idx = y[:, 0].astype(int) if task == "binary" else y.argmax(1)
    counts = np.bincount(idx, minlength=2 if task == "binary" else y.shape[1])
    return {i: float(len(idx) / (len(counts) * max(c, 1))) for i, c in enumerate(counts)}


@keras.saving.register_keras_serializable(package="torax")
class WeightedBinaryCrossentropy(keras.losses.Loss):
    """Multi-label BCE with a per-label positive weight (negatives/positives on train, capped), so rare findings
    are not drowned out. Used only for training: bundles are loaded with compile=False."""

    def __init__(self, pos_weight, name="weighted_bce", **kwargs):
        super().__init__(name=name, **kwargs)
        self.pos_weight = [float(w) for w in pos_weight]

    def call(self, y_true, y_pred):
        ops = keras.ops
        p = ops.clip(y_pred, 1e-7, 1 - 1e-7)
        w = ops.convert_to_tensor(self.pos_weight, dtype=p.dtype)
        y = ops.cast(y_true, p.dtype)
        return -ops.mean(w * y * ops.log(p) + (1 - y) * ops.log(1 - p), axis=-1)

    def get_config(self):
        return {**super().get_config(), "pos_weight": self.pos_weight}


def positive_weights(y: np.ndarray, cap: float = 20.0) -> list[float]:
    positives = y.sum(0)
    return np.clip((len(y) - positives) / np.maximum(positives, 1), 1.0, cap).tolist()


class TimeBudget(keras.callbacks.Callback):
    """Stop after the epoch that crosses a wall-clock budget, so a CPU run ends when planned."""

    def __init__(self, minutes: float):
        super().__init__()
        self.seconds, self.stopped_early = minutes * 60, False

    def on_train_begin(self, logs=None):
        self.start = time.time()

    def on_epoch_end(self, epoch, logs=None):
        if time.time() - self.start > self.seconds:
            self.model.stop_training, self.stopped_early = True, True


def prepare(data_dir: str, out: Path, task: str, input_spec: dict, seed: int, cache_dir: str | None,
            one_per_patient: bool = False, keep_official_test: bool = False) -> tuple[pd.DataFrame, np.ndarray]:
    """Read, decode (cached), de-duplicate and split; writes split.csv. Returns the table and the images."""
    df = data_lib.read_dataset(data_dir)
    if one_per_patient:
        df = data_lib.one_image_per_patient(df, seed)
    images = data_lib.load_images(df, input_spec, cache_dir)
    df["dup_group"] = data_lib.duplicate_groups(images)
    df["split"] = data_lib.split_by_patient(df, seed=seed, dup_groups=df["dup_group"].to_numpy(),
                                            keep_official_test=keep_official_test)
    if task == "multiclass":
        df["class"] = df["subtype"].map({"normal": "NORMAL", "bacteria": "BACTERIAL", "virus": "VIRAL"})
    cols = [c for c in ("path", "label", "subtype", "class", "finding_labels", "patient_id", "source_split",
                        "source_kind", "dup_group", "split") if c in df]
    df[cols].assign(path=[os.path.relpath(p, data_dir) for p in df["path"]]).to_csv(out / "split.csv", index=False)
    return df, images


def train_member(arch: str, x_train, y_train, x_val, y_val, task: str, input_spec: dict, out: Path, *,
                 epochs: int, batch_size: int, lr: float, patience: int, minutes: float, weights: str | None,
                 steps: int | None = None) -> dict:
    model = ARCHITECTURES[arch](input_spec, n_outputs=y_train.shape[1], task=task, weights=weights)
    loss = {"binary": "binary_crossentropy", "multiclass": "categorical_crossentropy",
            "multilabel": WeightedBinaryCrossentropy(positive_weights(y_train))}[task]
    auc = keras.metrics.AUC(name="auc", multi_label=task == "multilabel", num_labels=y_train.shape[1]
                            if task == "multilabel" else None)
    model.compile(optimizer=keras.optimizers.Adam(lr), loss=loss, metrics=[auc])
    budget = TimeBudget(minutes)
    callbacks = [
        keras.callbacks.EarlyStopping("val_auc", mode="max", patience=patience, restore_best_weights=True),
        keras.callbacks.ReduceLROnPlateau("val_auc", mode="max", factor=0.5, patience=max(1, patience // 2),
                                          min_lr=1e-5),
        keras.callbacks.CSVLogger(str(out / f"history-{arch}.csv")),
        budget,
    ]
    started = time.time()
    history = model.fit(x_train, y_train, validation_data=(x_val, y_val), epochs=epochs, batch_size=batch_size,
                        class_weight=class_weights(y_train, task), callbacks=callbacks, shuffle=True,
                        steps_per_epoch=steps, verbose=0 if steps else (1 if sys.stdout.isatty() else 2))
    (out / "members").mkdir(exist_ok=True)
    path = out / "members" / f"{arch}.keras"
    model.save(path)
    val_auc = history.history.get("val_auc", [float("nan")])
    return {"name": arch, "file": f"members/{arch}.keras", "arch": model.name, "params": int(model.count_params()),
            "cam_layer": last_conv_layer(model), "epochs_run": len(val_auc),
            "best_val_auc": float(np.nanmax(val_auc)), "stopped_by_time_budget": budget.stopped_early,
            "train_seconds": round(time.time() - started, 1)}


def train(data_dir: str, out: str, *, task: str = "binary", members=("cnn", "mobilenetv2", "mobilenetv3s"),
          size: int = 160, seed: int = 42, epochs: int = 20, batch_size: int = 32, lr: float = 1e-3,
          patience: int = 5, minutes_per_member: float = 15.0, cache_dir: str | None = "cache",
          weights: dict | None = None, one_per_patient: bool = False, keep_official_test: bool = False,
          steps: int | None = None, classes: list[str] | None = None) -> Path:
    """Prepare the data, train each member, and write the run folder. Returns its path."""
    started = time.time()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(seed)
    if keras.backend.backend() == "jax" and any("gpu" in str(d).lower() for d in keras.distribution.list_devices()):
        keras.mixed_precision.set_global_policy("mixed_float16")
        if len(keras.distribution.list_devices()) > 1:
            keras.distribution.set_distribution(keras.distribution.DataParallel())
    input_spec = {"height": size, "width": size, "channels": 1, "resize": "squash", "dtype": "uint8"}
    df, images = prepare(data_dir, out, task, input_spec, seed, cache_dir, one_per_patient, keep_official_test)
    empty = [s for s in data_lib.SPLITS if not (df["split"] == s).any()]
    if empty:
        raise ValueError(f"Too few patients to split: the {' and '.join(empty)} split would be empty.")
    classes = classes or default_classes(df, task)
    y = encode_targets(df, task, classes)
    tr, va = (df["split"] == "train").to_numpy(), (df["split"] == "val").to_numpy()
    config = {"data": str(data_dir), "task": task, "classes": classes, "input": input_spec, "members": list(members),
              "seed": seed, "epochs": epochs, "batch_size": batch_size, "lr": lr, "patience": patience,
              "minutes_per_member": minutes_per_member, "one_per_patient": one_per_patient,
              "keep_official_test": keep_official_test, "cache_dir": cache_dir, "code_commit": code_commit(),
              "counts": {s: int((df["split"] == s).sum()) for s in data_lib.SPLITS},
              "patients": {s: int(df.loc[df["split"] == s, "patient_id"].nunique()) for s in data_lib.SPLITS},
              "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    (out / "config.json").write_text(json.dumps(config, indent=2))
    (out / "hardware.json").write_text(json.dumps(hardware(), indent=2))
    results = []
    for arch in members:
        print(f"== training {arch} on {tr.sum()} images, validating on {va.sum()}", flush=True)
        results.append(train_member(arch, images[tr], y[tr], images[va], y[va], task, input_spec, out,
                                    epochs=epochs, batch_size=batch_size, lr=lr, patience=patience,
                                    minutes=minutes_per_member, weights=(weights or {}).get(arch), steps=steps))
        (out / "members.json").write_text(json.dumps(results, indent=2))
    (out / "timing.json").write_text(json.dumps({"wall_seconds": round(time.time() - started, 1)}))
    return out


def default_classes(df: pd.DataFrame, task: str) -> list[str]:
    if task == "binary":
        labels = sorted(df["label"].unique())
        return ["NORMAL", "PNEUMONIA"] if set(labels) <= {"NORMAL", "PNEUMONIA"} else labels
    if task == "multiclass":
        return ["NORMAL", "BACTERIAL", "VIRAL"]
    found = sorted({f for s in df["finding_labels"].fillna("") for f in s.split("|") if f and f != "No Finding"})
    return found
