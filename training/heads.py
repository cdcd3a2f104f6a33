"""Cut a multitask run into one run per head, so each can be evaluated and exported as an ordinary bundle.

A multitask member is one network with two heads on the same pooled features: `prediction` (pneumonia vs normal)
and `subtype` (normal / bacterial / viral). Each head becomes a plain single-output Keras model over the same
layers (a flat graph whose last layer is the head's Dense, as serving and Grad-CAM expect), saved into its own
run folder next to a copy of the split, config and histories. Both bundles therefore share one patient split.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import keras

from model.core.types import TrainingTask
from training.train import MULTITASK_CLASSES

HEAD_TASKS = {"prediction": TrainingTask.BINARY, "subtype": TrainingTask.MULTICLASS}


def split_heads(run: str | Path) -> dict[str, Path]:
    """Write `<run>-binary` and `<run>-multiclass`; returns {task: run folder}."""
    run = Path(run)
    config = json.loads((run / "config.json").read_text())
    if config["task"] != TrainingTask.MULTITASK:
        raise ValueError(f"{run} is a {config['task']} run; only multitask runs have heads to split")
    members = json.loads((run / "members.json").read_text())
    outputs = {}
    for head, task in HEAD_TASKS.items():
        out = run.with_name(f"{run.name}-{task}")
        (out / "members").mkdir(parents=True, exist_ok=True)
        for name in ("split.csv", "hardware.json", "timing.json", *(f"history-{m['name']}.csv" for m in members)):
            if (run / name).exists():
                shutil.copy2(run / name, out / name)
        (out / "config.json").write_text(json.dumps(
            {**config, "task": task, "classes": MULTITASK_CLASSES[head], "multitask_run": str(run),
             "head": head}, indent=2))
        kept = []
        for m in members:
            model = keras.saving.load_model(run / m["file"], compile=False, safe_mode=True)
            single = keras.Model(model.inputs, model.get_layer(head).output, name=model.name)
            single.save(out / m["file"])
            kept.append({**m, "head": head, "params": int(single.count_params())})
            keras.backend.clear_session()
        (out / "members.json").write_text(json.dumps(kept, indent=2))
        outputs[task] = out
    return outputs


def compare_decisions(binary_run: str | Path, multiclass_run: str | Path) -> dict:
    """Three-way softmax vs a two-stage decision (pneumonia first, at the binary bundle's val-chosen balanced
    threshold; then bacterial or viral by the subtype head), on val only: the two runs' `scores-val.json`, same
    split. Returns accuracy and per-class recall for each, so the choice is made on val and never on test."""
    import numpy as np

    binary_run, multiclass_run = Path(binary_run), Path(multiclass_run)
    pb = json.loads((binary_run / "scores-val.json").read_text())
    pm = json.loads((multiclass_run / "scores-val.json").read_text())
    threshold = next(o["threshold"] for o in json.loads((binary_run / "evaluation.json").read_text())
                     ["operating_points"] if o["name"] == "balanced")
    y = np.asarray(pm["y"]).argmax(1)
    prob = np.asarray(pm["ensemble"])
    softmax = prob.argmax(1)
    pneumonia = np.asarray(pb["ensemble"])[:, 0] >= threshold
    two_stage = np.where(pneumonia, 1 + prob[:, 1:].argmax(1), 0)

    def report(pred):
        return {"accuracy": float((pred == y).mean()),
                "recall": {c: float((pred[y == k] == k).mean()) for k, c in enumerate(pm["classes"])}}
    return {"split": "val", "n": int(len(y)), "binary_run": binary_run.name, "multiclass_run": multiclass_run.name,
            "binary_threshold": threshold,
            "softmax": report(softmax), "two_stage": report(two_stage)}
