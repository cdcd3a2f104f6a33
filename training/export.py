"""Write a model bundle from an evaluated run: manifest.json (the bundle contract), member files with sha256,
and the reports the app's pages plot (`reports/evaluation.json`, `reports/scores.json`, `reports/eda.json`), whose
sha256s the manifest lists too, so that its signature covers what the app shows."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import cv2
import keras
import numpy as np
import pandas as pd
from PIL import Image

from model.core.bundle import sha256_file
from model.core.types import TrainingTask
from training import data as data_lib
from training.evaluate import summary

TITLES = {TrainingTask.BINARY: "Pediatric pneumonia (normal vs pneumonia)",
          TrainingTask.MULTICLASS: "Pediatric pneumonia type (normal / bacterial / viral)",
          TrainingTask.MULTILABEL: "Chest X-ray findings (multi-label)"}


def export_bundle(run: str | Path, bundle: str | Path, title: str | None = None,
                  population: str | None = None, research_use_only: bool = False,
                  sign_key: str | Path | None = None) -> Path:
    """`sign_key`: an Ed25519 private key (PEM) to sign the manifest with (sign_bundle), for servers that set
    TORAX_TRUSTED_KEYS."""
    run, bundle = Path(run), Path(bundle)
    config = json.loads((run / "config.json").read_text())
    members = json.loads((run / "members.json").read_text())
    evaluation = json.loads((run / "evaluation.json").read_text())
    hardware = json.loads((run / "hardware.json").read_text())
    member_entries = []
    with tempfile.TemporaryDirectory() as previous:  # the members a re-export may keep byte for byte (_same_model)
        if (bundle / "members").is_dir():
            shutil.copytree(bundle / "members", previous, dirs_exist_ok=True)
        if bundle.exists():
            shutil.rmtree(bundle)
        (bundle / "members").mkdir(parents=True)
        (bundle / "reports").mkdir()
        for m in members:
            target = bundle / "members" / Path(m["file"]).name
            model = keras.saving.load_model(run / m["file"], compile=False, safe_mode=True)
            kept = Path(previous) / target.name
            if kept.exists() and _same_model(model, kept):
                # A re-export that changes only calibration, thresholds or reports keeps the member file as it was:
                # the same weights saved again differ in their bytes (a save date), and would add a binary to history.
                shutil.copy2(kept, target)
            else:
                # Re-saved uncompiled: the bundle carries weights and graph, not the optimizer's state (a third the
                # size).
                model.save(target)
            member_entries.append({"name": m["name"], "file": f"members/{target.name}", "sha256": sha256_file(target),
                                   "arch": m["arch"], "params": m["params"], "cam_layer": m["cam_layer"],
                                   "val_auc": evaluation.get("member_val_auc", {}).get(m["name"], m["best_val_auc"]),
                                   "epochs_run": m["epochs_run"],
                                   **({"recipe": m["recipe"]} if "recipe" in m else {}),
                                   "temperature": evaluation["temperatures"][m["name"]],
                                   "bias": evaluation.get("biases", {}).get(m["name"], 0.0),
                                   "train_seconds": m["train_seconds"],
                                   "code_commit": m.get("code_commit", config["code_commit"]),
                                   "hardware": m.get("hardware", hardware),
                                   **{k: m[k] for k in ("seed", "initial_weights", "from_bundle") if k in m}})
    timing = json.loads((run / "timing.json").read_text()) if (run / "timing.json").exists() else {}
    manifest = {
        "schema": 1, "name": bundle.name, "title": title or TITLES[config["task"]], "task": config["task"],
        "classes": config["classes"], "input": config["input"], "members": member_entries,
        "population": population or "unspecified",
        "research_use_only": bool(research_use_only),
        "ensemble": {"method": "mean", "of": "calibrated member probabilities"},
        "calibration": {"method": {TrainingTask.BINARY: "platt (temperature + bias)",
                                   TrainingTask.MULTICLASS: "vector scaling (temperature + a bias per class)"}
                        .get(config["task"], "temperature"),
                        "per_member": evaluation["temperatures"], "bias_per_member": evaluation.get("biases", {}),
                        "fitted_on": "val"},
        "operating_points": evaluation.get("operating_points", []),
        "default_operating_point": (evaluation.get("operating_points") or [{"name": None}])[0]["name"],
        "evaluation": summary(evaluation),
        "training": {"data": Path(config["data"]).name, "counts": config["counts"], "patients": config["patients"],
                     "split": "patient-level, duplicates grouped, stratified by subtype, 70/15/15",
                     "split_seed": config["seed"], "code_commit": config["code_commit"],
                     "created": config["created"], "hardware": hardware, "wall_seconds": timing.get("wall_seconds"),
                     "epochs_max": config["epochs"], "batch_size": config["batch_size"], "lr": config["lr"],
                     "minutes_per_member": config["minutes_per_member"]},
    }
    # The run's date and training commit, then what decides the outputs: a re-calibrated or re-thresholded export of
    # the same run is another version (records, monitoring and site profiles are kept per version).
    decides = json.dumps([[m["sha256"], m["temperature"], m["bias"]] for m in member_entries]
                         + [manifest["operating_points"]], sort_keys=True)
    manifest["version"] = (config["created"][:10] + "-" + config["code_commit"][:8] + "-"
                           + hashlib.sha256(decides.encode()).hexdigest()[:6])
    (bundle / "reports" / "evaluation.json").write_text((run / "evaluation.json").read_text())
    shutil.copyfile(run / "scores.json", bundle / "reports" / "scores.json")
    for optional in ("scores-external.json", "input-size.json", "decisions.json"):  # reports a run may carry
        if (run / optional).exists():
            shutil.copyfile(run / optional, bundle / "reports" / optional)
    (bundle / "reports" / "eda.json").write_text(json.dumps(eda_report(run, config)))
    for history in run.glob("history-*.csv"):
        shutil.copyfile(history, bundle / "reports" / history.name)
    manifest["reports"] = report_digests(bundle)
    (bundle / "manifest.json").write_text(json.dumps(manifest, indent=2))
    if sign_key is not None:
        sign_bundle(bundle, sign_key)
    return bundle


def _same_model(model, path: Path) -> bool:
    """Whether the .keras file at `path` holds the same graph and the same weights as `model`."""
    other = keras.saving.load_model(path, compile=False, safe_mode=True)
    return (json.dumps(model.get_config(), sort_keys=True, default=str)
            == json.dumps(other.get_config(), sort_keys=True, default=str)
            and len(model.weights) == len(other.weights)
            and all(np.array_equal(a.numpy(), b.numpy()) for a, b in zip(model.weights, other.weights)))


def report_digests(bundle: Path) -> dict[str, str]:
    """{file name: sha256} of every file in `bundle/reports/` (the manifest's `reports`)."""
    folder = Path(bundle) / "reports"
    return {p.name: sha256_file(p) for p in sorted(folder.iterdir()) if p.is_file()} if folder.is_dir() else {}


def attach_report(bundle: str | Path, file: str | Path) -> Path:
    """Add a report made after export (e.g. `size-study`'s input-size.json) to `bundle/reports/` and record its
    sha256 in the manifest, as export does. A signed bundle must be signed again (its manifest changed)."""
    bundle, file = Path(bundle), Path(file)
    target = bundle / "reports" / file.name
    shutil.copyfile(file, target)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["reports"] = report_digests(bundle)
    (bundle / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return target


def sign_bundle(bundle: str | Path, key: str | Path) -> Path:
    """Sign `bundle/manifest.json`'s exact bytes with the Ed25519 private key in PEM file `key`; writes the raw
    64-byte signature to `bundle/manifest.sig` and returns its path. The manifest carries every member's and
    report's sha256 (the reports' are recorded here first when they are missing or stale), so the signature covers
    them too. Re-sign after any change to the manifest."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    bundle = Path(bundle)
    private = load_pem_private_key(Path(key).read_bytes(), password=None)
    if not isinstance(private, Ed25519PrivateKey):
        raise ValueError("the signing key must be an Ed25519 private key (PEM)")
    manifest = json.loads((bundle / "manifest.json").read_text())
    reports = report_digests(bundle)
    if manifest.get("reports", {}) != reports:
        manifest["reports"] = reports
        (bundle / "manifest.json").write_text(json.dumps(manifest, indent=2))
    out = bundle / "manifest.sig"  # model.core.bundle.SIGNATURE_FILE
    out.write_bytes(private.sign((bundle / "manifest.json").read_bytes()))
    return out


def new_signing_key(private_path: str | Path, public_path: str | Path) -> None:
    """Write a new Ed25519 key pair as PEM files (the private one unencrypted: keep it off serving machines)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    private = Ed25519PrivateKey.generate()
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # readable by its owner only
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), 0o600)  # also when the file was there before with wider permissions
        f.write(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
    Path(public_path).write_bytes(private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))


def eda_report(run: Path, config: dict) -> dict:
    """The numbers and small arrays the dataset page draws; computed once at export, never at page load."""
    split = pd.read_csv(run / "split.csv")
    split["path"] = [str(Path(config["data"]) / p) for p in split["path"]]
    images = data_lib.load_images(split, config["input"], config.get("cache_dir", "cache"))
    label = "class" if "class" in split else "label"
    counts = (split.groupby(["split", label, "subtype"]).size().rename("images").reset_index()
              .to_dict(orient="records"))
    dedup = split.drop_duplicates("dup_group")
    sizes = [_image_size(p) for p in split["path"]]
    per_patient = split.groupby("patient_id").size()
    report = {
        "dataset": Path(config["data"]).name, "n_images": len(split), "n_patients": int(split["patient_id"].nunique()),
        "label_column": label, "counts": counts,
        "patients_per_split": split.groupby("split")["patient_id"].nunique().to_dict(),
        "images_per_patient": per_patient.value_counts().sort_index().rename_axis("images")
        .reset_index(name="patients").to_dict(orient="records"),
        "balance_before_dedup": split[label].value_counts().to_dict(),
        "balance_after_dedup": dedup[label].value_counts().to_dict(),
        "duplicates_removed_if_deduplicated": int(len(split) - len(dedup)),
        "size": {"width": [s[0] for s in sizes], "height": [s[1] for s in sizes],
                 "label": split[label].tolist()},
        "source_kind": split["source_kind"].value_counts().to_dict() if "source_kind" in split else None,
        "intensity_histogram": {}, "mean_image": {}, "input": config["input"],
    }
    edges = np.linspace(0, 256, 33)
    for value, rows in split.groupby(label).groups.items():
        pix = images[np.asarray(rows)]
        hist = np.histogram(pix, bins=edges)[0]
        report["intensity_histogram"][value] = {"edges": edges.tolist(), "density": (hist / hist.sum()).tolist()}
        mean = cv2.resize(pix[..., 0].mean(axis=0).astype(np.float32), (64, 64), interpolation=cv2.INTER_AREA)
        report["mean_image"][value] = mean.round().astype(int).tolist()
    return report


def _image_size(path: str) -> tuple[int, int]:
    try:
        with Image.open(path) as im:  # reads the header only
            return im.size
    except OSError:  # e.g. DICOM: size unknown to Pillow
        return (None, None)
