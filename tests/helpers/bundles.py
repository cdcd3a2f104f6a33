"""Bundles for the tests, made in temporary folders: a Kermany-style data folder of `toy_chest` images, a tiny
really-trained bundle (two members, a couple of steps), and hand-set Keras bundles that need no training."""
from __future__ import annotations

import json
from pathlib import Path

import cv2

from helpers.images import toy_chest


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
                cv2.imwrite(str(folder / name), toy_chest(size, label == "PNEUMONIA", seed=k))
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
                batch_size=8, cache_dir=str(Path(tmp) / "cache"), eager=True)
    evaluate_run(run)
    root = Path(tmp) / "bundles"
    export_bundle(run, root / name)
    return root


SPEC = {"height": 48, "width": 48, "channels": 1, "resize": "squash", "dtype": "uint8"}


def write_bundle(root, name, models: dict, temperatures=None, task="binary", classes=("NORMAL", "PNEUMONIA")):
    """A bundle folder from in-memory Keras models, with correct checksums."""
    from model.core.bundle import sha256_file

    folder = root / name
    (folder / "members").mkdir(parents=True)
    members = []
    for member, model in models.items():
        path = folder / "members" / f"{member}.keras"
        model.save(path)
        members.append({"name": member, "file": f"members/{member}.keras", "sha256": sha256_file(path),
                        "arch": model.name, "params": model.count_params(), "cam_layer": "features",
                        "temperature": (temperatures or {}).get(member, 1.0)})
    manifest = {"schema": 1, "name": name, "task": task, "classes": list(classes), "input": SPEC,
                "members": members, "operating_points": [{"name": "balanced", "threshold": 0.5}],
                "default_operating_point": "balanced"}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def brightness_model(name="bright", bias=0.0):
    """A hand-set CNN whose 'features' respond to bright pixels: its CAM must peak on a planted bright spot."""
    import keras

    inputs = keras.Input((48, 48, 1), name="image")
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.Conv2D(4, 3, padding="same", name="features", activation="relu",
                            kernel_initializer=keras.initializers.Constant(1 / 9),
                            bias_initializer=keras.initializers.Constant(-0.5))(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(1, activation="sigmoid", kernel_initializer=keras.initializers.Constant(5.0),
                             bias_initializer=keras.initializers.Constant(bias), name="prediction")(x)
    return keras.Model(inputs, out, name=name)
