"""Add an existing bundle's members to a run trained on the same patient split, so that `evaluate` and `export`
treat them like the run's own: one calibration and one set of operating points for the new ensemble, on val.

The split must be the same one: the bundle's internal-test images (reports/scores.json) must be exactly the run's
test split, or the members would be scored on images they trained on. Each member keeps its own record (recipe,
seed, initial weights, wall time, hardware, code commit), so the manifest still says how every member was made.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd

from model.core.bundle import sha256_file


def add_members(run: str | Path, bundle: str | Path, only: list[str] | None = None) -> list[str]:
    """Copy `bundle`'s members (those named in `only`, if given) into `run`; returns their names."""
    run, bundle = Path(run), Path(bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    config = json.loads((run / "config.json").read_text())
    if manifest["task"] != config["task"] or manifest["classes"] != config["classes"] \
            or manifest["input"] != config["input"]:
        raise ValueError(f"{bundle.name} ({manifest['task']}, {manifest['input']}) does not match the run "
                         f"({config['task']}, {config['input']})")
    split = pd.read_csv(run / "split.csv")
    scored = json.loads((bundle / "reports" / "scores.json").read_text())["path"]
    if set(scored) != set(split.loc[split["split"] == "test", "path"]):
        raise ValueError(f"{bundle.name} was tested on other images than this run's test split: not the same "
                         "patient split, so its members may have trained on this run's val or test images")
    members = json.loads((run / "members.json").read_text())
    training = manifest.get("training", {})
    added = []
    unknown = set(only or ()) - {m["name"] for m in manifest["members"]}
    if unknown:
        raise ValueError(f"{bundle.name} has no member named {', '.join(sorted(unknown))}")
    for m in manifest["members"]:
        if only and m["name"] not in only:
            continue
        if any(r["name"] == m["name"] for r in members):
            raise ValueError(f"the run already has a member named {m['name']}")
        source = bundle / m["file"]
        if sha256_file(source) != m["sha256"]:
            raise ValueError(f"{source} does not match its manifest's sha256")
        shutil.copy2(source, run / "members" / f"{m['name']}.keras")
        history = bundle / "reports" / f"history-{m['name']}.csv"
        if history.exists():
            shutil.copy2(history, run / history.name)
        members.append({
            "name": m["name"], "file": f"members/{m['name']}.keras", "arch": m["arch"], "params": m["params"],
            "cam_layer": m["cam_layer"], "epochs_run": m["epochs_run"], "best_val_auc": m["val_auc"],
            "recipe": m.get("recipe"), "train_seconds": m["train_seconds"],
            "code_commit": m.get("code_commit", training.get("code_commit")),
            "hardware": m.get("hardware", training.get("hardware")),
            "seed": m.get("seed", training.get("split_seed")),
            "initial_weights": m.get("initial_weights", {"kind": "random", "seed": training.get("split_seed")}),
            "from_bundle": f"{manifest['name']}@{manifest.get('version', '?')}"})
        added.append(m["name"])
    (run / "members.json").write_text(json.dumps(members, indent=2))
    return added


def member_run(bundle: str | Path, member: str, split_from: str | Path, out: str | Path) -> Path:
    """A run folder holding one member of `bundle` alone, on the patient split of the run `split_from` (checked as
    add_members checks it), ready for `evaluate`: the member calibrated and thresholded alone on val, tested once.
    The input-size study uses it for the size a bundle already ships (its recipe and split are the study's)."""
    bundle, split_from, out = Path(bundle), Path(split_from), Path(out)
    manifest = json.loads((bundle / "manifest.json").read_text())
    config = json.loads((split_from / "config.json").read_text())
    out.mkdir(parents=True, exist_ok=False)
    (out / "members").mkdir()
    shutil.copy2(split_from / "split.csv", out / "split.csv")
    config.update({"task": manifest["task"], "classes": manifest["classes"], "input": manifest["input"],
                   "members": [member], "from_bundle": manifest["name"]})
    (out / "config.json").write_text(json.dumps(config, indent=2))
    (out / "members.json").write_text("[]")
    add_members(out, bundle, only=[member])
    return out
