"""What input size costs: one member, one recipe, several input sizes (the ChestX-ray14 seed's downsampling study).

Each size is its own evaluated single-member run (`train --size S`, `heads`, `evaluate --external`), so every number
is chosen on val exactly as for a shipped bundle: calibration and the balanced threshold on val, the internal test
scored once, the external set reported only. Latency is the member alone, one image, compiled, on this machine.
`python -m training size-study --run 64=RUN --run 128=RUN --run 224=RUN --out FILE` writes the table the
Evaluation page draws (the bundle's `reports/input-size.json`). `--three-class SIZE=RUN` adds the same member's
three-class head at that size (the multitask run's other cut, evaluated the same way): accuracy and bacterial-vs-viral
AUC on val, the internal test and external, since the harder question may need more pixels than the binary one.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from model.core.types import TrainingTask


def latency_ms(model_path: Path, size: int, repeats: int = 30) -> float:
    """Median wall time of one compiled forward pass on one image (after a warm-up)."""
    import keras
    import tensorflow as tf

    model = keras.saving.load_model(model_path, compile=False, safe_mode=True)
    forward = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    x = tf.constant(np.random.default_rng(0).integers(0, 256, (1, size, size, 1)).astype("float32"))
    forward(x)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        np.asarray(forward(x))
        times.append((time.perf_counter() - started) * 1000)
    return float(np.median(times))


def row(size: int, run: Path) -> dict:
    run = Path(run)
    members = json.loads((run / "members.json").read_text())
    if len(members) != 1:
        raise ValueError(f"{run} has {len(members)} members; the study compares one member across sizes")
    member = members[0]
    evaluation = json.loads((run / "evaluation.json").read_text())
    ensemble = evaluation["ensemble"]  # one member: the "ensemble" is that member, calibrated
    balanced = ensemble["operating_points"]["balanced"]
    external = evaluation.get("external") or {}
    at_balanced = (external.get("operating_points") or {}).get("balanced") or {}  # the val-chosen threshold
    return {"size": size, "member": member["name"], "params": member["params"],
            "epochs": member["epochs_run"], "train_seconds": member["train_seconds"],
            "val_auc": evaluation["member_val_auc"][member["name"]],
            "test_auc": ensemble["auc"], "test_auc_ci95": ensemble["auc_ci95"],
            "test_accuracy": balanced["accuracy"], "test_sensitivity": balanced["sensitivity"],
            "test_specificity": balanced["specificity"], "balanced_threshold": balanced["threshold"],
            "external_auc": external.get("auc"), "external_accuracy": at_balanced.get("accuracy"),
            "external_sensitivity": at_balanced.get("sensitivity"),
            "external_specificity": at_balanced.get("specificity"),
            "external_dataset": (external.get("dataset") or None),
            "latency_ms": latency_ms(run / member["file"], size)}


def three_class(run: Path) -> dict:
    """The three-class head of one single-member run at one size: accuracy and bacterial-vs-viral AUC on val (where
    choices are made), the internal test (scored once) and external (reported only)."""
    run = Path(run)
    evaluation = json.loads((run / "evaluation.json").read_text())
    if len(evaluation["member_val_auc"]) != 1 or evaluation["task"] != TrainingTask.MULTICLASS:
        raise ValueError(f"{run} is not an evaluated single-member three-class run")
    val = evaluation["val_comparison"][0]
    external = evaluation.get("external") or {}
    return {"val_3class_accuracy": val["val_accuracy"], "val_bacterial_vs_viral_auc": val["val_bacterial_vs_viral_auc"],
            "test_3class_accuracy": evaluation["ensemble"]["accuracy"],
            "test_bacterial_vs_viral_auc": evaluation["ensemble"]["bacterial_vs_viral_auc"],
            "external_3class_accuracy": external.get("accuracy"),
            "external_bacterial_vs_viral_auc": external.get("bacterial_vs_viral_auc")}


def study(runs: dict[int, Path], three_class_runs: dict[int, Path] | None = None) -> dict:
    rows = [row(size, run) for size, run in sorted(runs.items())]
    for r in rows:
        if r["size"] in (three_class_runs or {}):
            r.update(three_class(three_class_runs[r["size"]]))
    return {"what": "one member (same recipe) trained at several square input sizes", "rows": rows,
            "chosen_on": "val (calibration, balanced threshold); internal test scored once; external reported only",
            "accuracy": "accuracy at each size's balanced point (Youden on val), on the internal test and on external",
            "three_class": "where given: the same member's three-class head, most probable class, at each size",
            "latency": "member alone, 1 image, tf.function, median of 30, on the machine that ran the study"}
