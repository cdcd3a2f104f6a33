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
