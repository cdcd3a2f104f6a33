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

from model.core.types import TrainingTask
from training import data as data_lib
from training.architectures import ARCHITECTURES, PRETRAINED, last_conv_layer
from training.augment import Batches, EpochSeed

LABEL_COLUMNS = {TrainingTask.BINARY: "label", TrainingTask.MULTICLASS: "subtype",
                 TrainingTask.MULTILABEL: "finding_labels"}
# "multitask" trains one network with two heads on one split: `prediction` (pneumonia vs normal, sigmoid) and
# `subtype` (normal / bacterial / viral, softmax). `training.heads` cuts it into a binary and a multiclass run.
MULTITASK_CLASSES = {"prediction": ["NORMAL", "PNEUMONIA"], "subtype": ["NORMAL", "BACTERIAL", "VIRAL"]}


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
    if task == TrainingTask.BINARY:
        return (df["label"].to_numpy() == classes[-1]).astype("float32")[:, None]
    if task == TrainingTask.MULTITASK:
        return {"prediction": encode_targets(df, TrainingTask.BINARY, MULTITASK_CLASSES["prediction"]),
                "subtype": encode_targets(df, TrainingTask.MULTICLASS, MULTITASK_CLASSES["subtype"])}
    if task == TrainingTask.MULTICLASS:
        col = df["class"].to_numpy()
        return np.stack([(col == c) for c in classes], axis=1).astype("float32")
    found = df["finding_labels"].fillna("").str.split("|")
    return np.array([[c in f for c in classes] for f in found], dtype="float32")


def class_weights(y: np.ndarray, task: str) -> dict | None:
    """Inverse-frequency weights so each class contributes equally (binary and multiclass)."""
    if task == TrainingTask.MULTILABEL:
        return None
    idx = y[:, 0].astype(int) if task == TrainingTask.BINARY else y.argmax(1)
    counts = np.bincount(idx, minlength=2 if task == TrainingTask.BINARY else y.shape[1])
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
    if task in (TrainingTask.MULTICLASS, TrainingTask.MULTITASK):
        df["class"] = df["subtype"].map({"normal": "NORMAL", "bacteria": "BACTERIAL", "virus": "VIRAL"})
    cols = [c for c in ("path", "label", "subtype", "class", "finding_labels", "patient_id", "source_split",
                        "source_kind", "dup_group", "split") if c in df]
    df[cols].assign(path=[os.path.relpath(p, data_dir) for p in df["path"]]).to_csv(out / "split.csv", index=False)
    return df, images


def sample_weights(y, task: str) -> np.ndarray | None:
    """Per-image weights that give each class equal total weight (the subtype's classes for multitask)."""
    if task == TrainingTask.MULTITASK:
        y, task = y["subtype"], TrainingTask.MULTICLASS
    weights = class_weights(y, task)
    if weights is None:
        return None
    idx = y[:, 0].astype(int) if task == TrainingTask.BINARY else y.argmax(1)
    return np.array([weights[i] for i in idx], dtype="float32")


def losses_and_metrics(task: str, y_train, label_smoothing: float):
    """Loss and AUC metric per output, and the name of the validation AUC that the run reports per epoch."""
    def auc(task_, n):
        return keras.metrics.AUC(name="auc", multi_label=task_ == TrainingTask.MULTILABEL,
                                 num_labels=n if task_ == TrainingTask.MULTILABEL else None)
    if task == TrainingTask.MULTITASK:
        loss = {"prediction": keras.losses.BinaryCrossentropy(label_smoothing=label_smoothing),
                "subtype": keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing)}
        metrics = {"prediction": [auc(TrainingTask.BINARY, 1)], "subtype": [auc(TrainingTask.MULTICLASS, 3)]}
        return loss, metrics, "val_prediction_auc"
    loss = {TrainingTask.BINARY: keras.losses.BinaryCrossentropy(label_smoothing=label_smoothing),
            TrainingTask.MULTICLASS: keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing),
            TrainingTask.MULTILABEL: WeightedBinaryCrossentropy(positive_weights(y_train))}[task]
    return loss, [auc(task, y_train.shape[1])], "val_auc"


def train_member(arch: str, x_train, y_train, x_val, y_val, task: str, input_spec: dict, out: Path, *,
                 epochs: int, batch_size: int, lr: float, patience: int, minutes: float, weights: str | None,
                 steps: int | None = None, seed: int = 42, label_smoothing: float = 0.05,
                 weight_decay: float = 0.05, ema: float | None = 0.99, backbones_dir: str = "backbones",
                 eager: bool = False, name: str | None = None, mixup: float = 0.0) -> dict:
    """One member: augmented batches (training.augment), AdamW with a one-epoch warm-up and cosine decay to zero,
    an exponential moving average of the weights (the saved model), label smoothing, and a per-epoch backup so an
    interrupted run resumes where it stopped. Early stopping on val AUC remains as a guard against divergence.
    `name` (default: the architecture) names the member's files, so two seeds of one architecture can share a run.
    `seed` decides the member's start, augmentation and dropout on its own: a member trains the same alone, after
    other members, or resumed after an interruption."""
    name = name or arch
    keras.utils.set_random_seed(seed)
    n_outputs = 3 if task == TrainingTask.MULTITASK else y_train.shape[1]
    model = ARCHITECTURES[arch](input_spec, n_outputs=n_outputs, task=task, weights=weights)
    initial_weights = {"kind": "file", "file": str(weights)} if weights else {"kind": "random", "seed": seed}
    if arch in PRETRAINED and not weights:
        from training.backbones import load_backbone
        initial_weights = {"kind": "pretrained backbone", **load_backbone(model, PRETRAINED[arch], backbones_dir)}
    loss, metrics, monitor = losses_and_metrics(task, y_train, label_smoothing)
    n_train = len(x_train)
    steps_per_epoch = steps or -(-n_train // batch_size)
    total = max(2, steps_per_epoch * epochs)
    schedule = keras.optimizers.schedules.CosineDecay(lr / 10, decay_steps=total - min(steps_per_epoch, total // 2),
                                                      warmup_target=lr, warmup_steps=min(steps_per_epoch, total // 2))
    model.compile(optimizer=keras.optimizers.AdamW(schedule, weight_decay=weight_decay, use_ema=ema is not None,
                                                   ema_momentum=ema or 0.99), loss=loss, metrics=metrics,
                  run_eagerly=eager)
    budget = TimeBudget(minutes)
    backup = out / f"backup-{name}"
    train_batches = Batches(x_train, y_train, batch_size, train=True, seed=seed,
                            sample_weight=sample_weights(y_train, task), mixup=mixup)
    callbacks = [
        keras.callbacks.BackupAndRestore(str(backup)),
        EpochSeed(train_batches),
        keras.callbacks.EarlyStopping(monitor, mode="max", patience=patience),
        keras.callbacks.CSVLogger(str(out / f"history-{name}.csv"), append=backup.exists()),
        budget,
    ]
    val_batches = Batches(x_val, y_val, 64, train=False)
    started = time.time()
    history = model.fit(train_batches, validation_data=val_batches, epochs=epochs, callbacks=callbacks,
                        steps_per_epoch=steps, shuffle=False,  # the batches shuffle themselves, by epoch
                        verbose=0 if steps else (1 if sys.stdout.isatty() else 2))
    (out / "members").mkdir(exist_ok=True)
    path = out / "members" / f"{name}.keras"
    model.optimizer = None  # the bundle keeps the (averaged) weights, not the optimizer state
    model.save(path)
    val_auc = history.history.get(monitor, [float("nan")])
    return {"name": name, "file": f"members/{name}.keras", "arch": model.name, "params": int(model.count_params()),
            "cam_layer": last_conv_layer(model), "epochs_run": len(val_auc),
            "last_val_auc": float(val_auc[-1]) if len(val_auc) else float("nan"),
            "best_val_auc": float(np.nanmax(val_auc)), "stopped_by_time_budget": budget.stopped_early,
            "recipe": {"augmentation": "training.augment (reframe, re-expose, JPEG, blur/noise, frame erasing)",
                       "optimizer": f"AdamW wd={weight_decay}",
                       "schedule": f"1-epoch warm-up + cosine to 0, peak lr={lr}",
                       "ema": ema, "label_smoothing": label_smoothing, "epochs": epochs, "batch_size": batch_size,
                       "class_balance": "sample weights", **({"mixup": mixup} if mixup else {})},
            "initial_weights": initial_weights, "seed": seed, "train_seconds": round(time.time() - started, 1)}


def train(data_dir: str, out: str, *, task: str = TrainingTask.BINARY, members=("cnn", "resnet", "mobilenetv2"),
          size: int = 224, seed: int = 42, epochs: int = 30, batch_size: int = 32, lr: float = 2e-3,
          patience: int = 10, minutes_per_member: float = 60.0, cache_dir: str | None = "cache",
          weights: dict | None = None, one_per_patient: bool = False, keep_official_test: bool = False,
          steps: int | None = None, classes: list[str] | None = None, eager: bool = False,
          mixup: float = 0.0) -> Path:
    """Prepare the data, train each member, and write the run folder. Returns its path.

    Run it again with the same `out` after an interruption: finished members are kept, and the member that was
    training resumes from its last epoch backup."""
    started = time.time()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
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

    def rows(mask):
        return {k: v[mask] for k, v in y.items()} if isinstance(y, dict) else y[mask]

    tr, va = (df["split"] == "train").to_numpy(), (df["split"] == "val").to_numpy()
    config = {"data": str(data_dir), "task": task, "classes": classes, "input": input_spec, "members": list(members),
              "seed": seed, "epochs": epochs, "batch_size": batch_size, "lr": lr, "patience": patience,
              "minutes_per_member": minutes_per_member, "one_per_patient": one_per_patient,
              "keep_official_test": keep_official_test, "cache_dir": cache_dir, "mixup": mixup,
              "code_commit": code_commit(),
              "counts": {s: int((df["split"] == s).sum()) for s in data_lib.SPLITS},
              "patients": {s: int(df.loc[df["split"] == s, "patient_id"].nunique()) for s in data_lib.SPLITS},
              "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    (out / "config.json").write_text(json.dumps(config, indent=2))
    (out / "hardware.json").write_text(json.dumps(hardware(), indent=2))
    done = json.loads((out / "members.json").read_text()) if (out / "members.json").exists() else []
    specs = [member_spec(spec, seed) for spec in members]
    results = [m for m in done if m["name"] in {name for _, name, _ in specs} and (out / m["file"]).exists()]
    for arch, name, member_seed in specs:
        if any(m["name"] == name for m in results):
            print(f"== {name} already trained in {out}", flush=True)
            continue
        print(f"== training {name} on {tr.sum()} images, validating on {va.sum()}", flush=True)
        results.append(train_member(arch, images[tr], rows(tr), images[va], rows(va), task, input_spec, out,
                                    epochs=epochs, batch_size=batch_size, lr=lr, patience=patience,
                                    minutes=minutes_per_member, weights=(weights or {}).get(arch), steps=steps,
                                    seed=member_seed, eager=eager, name=name, mixup=mixup))
        (out / "members.json").write_text(json.dumps(results, indent=2))
    (out / "timing.json").write_text(json.dumps({"wall_seconds": round(time.time() - started, 1)}))
    return out


def member_spec(spec: str, split_seed: int) -> tuple[str, str, int]:
    """`ARCH` or `ARCH@SEED` -> (architecture, member name, seed for its weights and augmentation). A member with its
    own seed is named `ARCH_sSEED` and trains on the run's split (chosen by the run's seed), so several seeds of one
    architecture can sit in one ensemble."""
    arch, _, seed = spec.partition("@")
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}: choose from {', '.join(sorted(ARCHITECTURES))}")
    if not seed:
        return arch, arch, split_seed
    if not seed.isdigit():
        raise ValueError(f"{spec!r}: the seed after @ must be a whole number")
    return arch, f"{arch}_s{int(seed)}", int(seed)


def default_classes(df: pd.DataFrame, task: str) -> list[str]:
    if task == TrainingTask.BINARY:
        labels = sorted(df["label"].unique())
        return ["NORMAL", "PNEUMONIA"] if set(labels) <= {"NORMAL", "PNEUMONIA"} else labels
    if task == TrainingTask.MULTICLASS:
        return ["NORMAL", "BACTERIAL", "VIRAL"]
    if task == TrainingTask.MULTITASK:
        return MULTITASK_CLASSES["prediction"]
    found = sorted({f for s in df["finding_labels"].fillna("") for f in s.split("|") if f and f != "No Finding"})
    return found
