"""Small synthetic radiograph-like images and tiny trained bundles, made in temporary folders for tests.

A "phantom" is a dark background with two bright-ish lung fields and a spine; a PNEUMONIA phantom has an extra
bright blob (consolidation) planted in one lung, so a tiny model can learn it and a CAM should peak there.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


def phantom(size=(256, 224), pneumonia: bool = False, seed: int = 0, blob_at: tuple[float, float] | None = None):
    """A uint8 grayscale chest-like image (H, W). `blob_at` = (row, col) as fractions places the consolidation."""
    rng = np.random.default_rng(seed)
    h, w = size
    img = np.full((h, w), rng.uniform(20, 50), np.float32)
    for cx in (0.3, 0.7):  # lung fields of varying size, place and density, as between real patients
        centre = (int((cx + rng.uniform(-0.04, 0.04)) * w), int(rng.uniform(0.45, 0.55) * h))
        axes = (int(rng.uniform(0.12, 0.18) * w), int(rng.uniform(0.25, 0.35) * h))
        cv2.ellipse(img, centre, axes, rng.uniform(-10, 10), 0, 360, rng.uniform(70, 110), -1)
    cv2.rectangle(img, (int(0.47 * w), int(0.1 * h)), (int(0.53 * w), int(0.95 * h)), rng.uniform(170, 220), -1)
    texture = cv2.resize(rng.normal(0, 25, (8, 8)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    img += texture
    if pneumonia:
        r, c = blob_at or (rng.uniform(0.35, 0.65), rng.choice([0.3, 0.7]))
        cv2.circle(img, (int(c * w), int(r * h)), int(0.08 * min(h, w)), 230, -1)
    img = cv2.GaussianBlur(img, (0, 0), 3) + rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def radiograph(size=(256, 224), pneumonia: bool = False, seed: int = 0) -> np.ndarray:
    """A drawn frontal chest radiograph that the input guard accepts (tests/test_guard.py's `chest_phantom`), with a
    bright consolidation in one lung when `pneumonia`. Use it where a test needs a decision: a `phantom` is not a
    chest X-ray to the guard, so it is "not assessed" (no label)."""
    from test_guard import chest_phantom

    img = chest_phantom(size=size, seed=seed)
    if pneumonia:
        h, w = size
        cv2.circle(img, (int(0.3 * w), int(0.55 * h)), int(0.08 * min(h, w)), 235, -1)
    return img


def make_kermany_folder(root: Path, n_per_class: int = 12, size=(96, 80)) -> Path:
    """The public layout: chest_xray/{train,val,test}/{NORMAL,PNEUMONIA}/ with Kermany-style names; several
    images per patient and one byte-identical duplicate, so splitting and de-duplication have work to do."""
    root = Path(root) / "chest_xray"
    k = 0
    for split, n in (("train", n_per_class), ("val", 2), ("test", 2)):
        for label in ("NORMAL", "PNEUMONIA"):
            folder = root / split / label
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                k += 1
                patient = k // 2  # two images per patient
                if label == "NORMAL":
                    name = f"IM-{patient:04d}-{i % 2 + 1:04d}.jpeg"
                else:
                    name = f"person{patient}_{'bacteria' if i % 3 else 'virus'}_{k}.jpeg"
                cv2.imwrite(str(folder / name), phantom(size, label == "PNEUMONIA", seed=k))
    first = next((root / "train" / "PNEUMONIA").glob("*.jpeg"))
    (root / "train" / "PNEUMONIA" / (first.stem.rsplit("_", 1)[0] + "_9999.jpeg")).write_bytes(first.read_bytes())
    return root.parent


def make_tiny_bundle(tmp: Path, name: str = "pneumonia-kermany", members=("cnn", "mobilenetv2"),
                     size: int = 64) -> Path:
    """Train two members for a couple of steps on a synthetic folder and export a real bundle. Returns the
    bundles root folder (point TORAX_BUNDLES at it)."""
    from training.evaluate import evaluate_run
    from training.export import export_bundle
    from training.train import train

    data = make_kermany_folder(Path(tmp) / "data")
    run = train(str(data), str(Path(tmp) / "run"), members=members, size=size, epochs=1, steps=2,
                batch_size=8, cache_dir=str(Path(tmp) / "cache"))
    evaluate_run(run)
    root = Path(tmp) / "bundles"
    export_bundle(run, root / name)
    return root
