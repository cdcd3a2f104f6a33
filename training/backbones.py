"""ImageNet backbones that ship inside registry packages: fetched once, at training time, never at serving time.

Nothing can be downloaded from the weights hosts here, but two permissively licensed packages carry ImageNet
backbones inside them (`python -m training backbones fetch`):

- **MobileNetV2 (alpha 1.0, 224)** from the npm package `nsfwjs@4.3.0` (MIT): a TensorFlow.js layers model whose
  weights are a base64 string inside a JS file, quantised to uint8 (value = min + scale·q). They are ImageNet
  weights fine-tuned by nsfwjs on (non-medical) photographs, fed as pixels / 255. All 260 tensors map by name
  onto `keras.applications.MobileNetV2(weights=None, include_top=False)`; TF.js calls the depthwise kernel
  `depthwise_kernel` where Keras 3 says `kernel`.
- **Xception** from the PyPI wheel `pneumonia-model-package==0.3.0` (MIT): a Keras 3 model whose backbone was
  frozen (`base_model.trainable = False`), so its weights are the Keras team's ImageNet weights unchanged. Only the
  backbone is kept: that package chose its checkpoint on the official Kermany test split, so its head is thrown
  away. About 4.6 GFLOPs at 224 (15× MobileNetV2): extracted, but too slow to fine-tune on a 2-core CPU.

Each backbone is written as `<name>.weights.h5` beside `<name>.json` (sha256, source package and version,
licence, how the weights were mapped). Members load them with `load_backbone()`, which checks the sha256 first.
"""
from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from model.core.bundle import sha256_file

DEFAULT_DIR = Path("backbones")
SOURCES = {
    "mobilenet_v2_nsfwjs": {
        "registry": "npm", "package": "nsfwjs", "version": "4.3.0", "licence": "MIT",
        "member": "package/dist/models/mobilenet_v2/",
        "weights": "ImageNet, fine-tuned by nsfwjs on non-medical photographs; uint8-quantised in the package",
        "input": "pixels / 255, RGB",
    },
    "xception_imagenet": {
        "registry": "pypi", "package": "pneumonia-model-package", "version": "0.3.0", "licence": "MIT",
        "member": "pneumonia_model_package/trained_models/pneumonia_xception_model_val-acc_0.861.keras",
        "weights": "Keras team's ImageNet weights (the package froze its backbone); the package's head is discarded",
        "input": "keras.applications.xception.preprocess_input (pixels / 127.5 - 1), RGB",
    },
}


def _download(source: dict, folder: Path) -> Path:
    """The package archive, fetched by its own registry client into `folder`."""
    if source["registry"] == "npm":
        subprocess.run(["npm", "pack", f"{source['package']}@{source['version']}", "--silent"], cwd=folder,
                       check=True, capture_output=True)
    else:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(folder),
                        f"{source['package']}=={source['version']}"], check=True, capture_output=True)
    found = [p for p in folder.iterdir() if p.suffix in (".tgz", ".whl")]
    if len(found) != 1:
        raise RuntimeError(f"expected one archive for {source['package']}, found {[p.name for p in found]}")
    return found[0]


# --- nsfwjs: a TF.js layers model inside two JS files ------------------------------------------------------------

_ENTRY = re.compile(r'\{name:"([^"]+)",shape:\[([\d,]*)\],dtype:"float32",'
                    r'quantization:\{min:([-\d.e+]+),scale:([-\d.e+]+),dtype:"uint8"\}\}')


def tfjs_weights(model_js: str, shard_js: str) -> dict[str, np.ndarray]:
    """Dequantised tensors by TF.js name, in the manifest's order (the order of the bytes in the shard)."""
    entries = _ENTRY.findall(model_js)
    blob = re.search(r'"([A-Za-z0-9+/=]{1000,})"', shard_js)
    if not entries or blob is None:
        raise ValueError("the nsfwjs model files do not hold a uint8-quantised weights manifest")
    data = np.frombuffer(base64.b64decode(blob.group(1)), dtype=np.uint8)
    out, offset = {}, 0
    for name, shape, lo, scale in entries:
        dims = tuple(int(d) for d in shape.split(",") if d)
        n = int(np.prod(dims)) if dims else 1
        q = data[offset:offset + n].astype(np.float32)
        offset += n
        out[name] = (float(lo) + float(scale) * q).reshape(dims)
    if offset != data.size:
        raise ValueError(f"weights manifest covers {offset} bytes of a {data.size}-byte shard")
    return out


def mobilenet_v2_from_nsfwjs(archive: Path):
    """keras.applications.MobileNetV2(alpha=1.0, include_top=False) with every weight set from the package."""
    import keras
    with tarfile.open(archive) as tar:
        def read(name):
            return tar.extractfile(SOURCES["mobilenet_v2_nsfwjs"]["member"] + name).read().decode()
        tensors = tfjs_weights(read("model.min.js"), read("group1-shard1of1.min.js"))
    model = keras.applications.MobileNetV2(input_shape=(224, 224, 3), alpha=1.0, include_top=False, weights=None)
    used = set()
    for layer in model.layers:
        for var in layer.weights:
            key = f"{layer.name}/{var.name}"
            if key not in tensors and var.name == "kernel":
                key = f"{layer.name}/depthwise_kernel"
            if key not in tensors:
                raise ValueError(f"no nsfwjs tensor for {layer.name}/{var.name}")
            if tuple(var.shape) != tensors[key].shape:
                raise ValueError(f"{key}: shape {tensors[key].shape} in nsfwjs, {tuple(var.shape)} in Keras")
            var.assign(tensors[key])
            used.add(key)
    backbone_tensors = {k for k in tensors if not k.startswith(("dense", "logits", "predictions"))}
    missing = backbone_tensors - used
    if missing:
        raise ValueError(f"nsfwjs tensors left unused: {sorted(missing)[:5]}")
    return model, len(used)


def xception_from_wheel(archive: Path):
    """The Xception backbone of the wheel's Keras 3 model, as a plain keras.applications.Xception."""
    import keras
    with zipfile.ZipFile(archive) as whl, tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.keras"
        path.write_bytes(whl.read(SOURCES["xception_imagenet"]["member"]))
        source = keras.saving.load_model(path, compile=False, safe_mode=True)
    inner = next(layer for layer in source.layers if isinstance(layer, keras.Model))
    model = keras.applications.Xception(input_shape=(224, 224, 3), include_top=False, weights=None)
    by_name = {layer.name: layer for layer in inner.layers}
    count = 0
    for layer in model.layers:
        if layer.weights:
            layer.set_weights(by_name[layer.name].get_weights())
            count += len(layer.weights)
    return model, count


EXTRACTORS = {"mobilenet_v2_nsfwjs": mobilenet_v2_from_nsfwjs, "xception_imagenet": xception_from_wheel}


def fetch(out: Path = DEFAULT_DIR, names=tuple(SOURCES)) -> list[dict]:
    """Download each package, extract its backbone, write weights + provenance. Returns the provenance records."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for name in names:
        source = SOURCES[name]
        with tempfile.TemporaryDirectory() as tmp:
            archive = _download(source, Path(tmp))
            archive_sha = sha256_file(archive)
            model, n_tensors = EXTRACTORS[name](archive)
        weights = out / f"{name}.weights.h5"
        model.save_weights(weights)
        record = {"name": name, "file": weights.name, "sha256": sha256_file(weights),
                  "keras_application": model.name, "tensors": n_tensors, "source_archive_sha256": archive_sha,
                  **{k: v for k, v in source.items() if k != "member"}, "source_path": source["member"]}
        (out / f"{name}.json").write_text(json.dumps(record, indent=2))
        records.append(record)
    return records


def load_backbone(model, name: str, folder: Path = DEFAULT_DIR) -> dict:
    """Copy a fetched backbone's weights into `model` (a member built around the same keras.applications network),
    every layer with weights, in order. The weights file's sha256 is checked against its provenance first.

    Layers are paired by position, not by name: Keras numbers the layers an application leaves unnamed (Xception's
    four 1×1 shortcut convolutions and their BatchNorms) per process, so the same layer is `conv2d` in the member
    and `conv2d_4` in a second copy built beside it, and matching names silently skipped them. The pairing starts
    at the source's first layer (named the same in both), and each pair must be the same kind of layer with the same
    weight shapes, or nothing is copied."""
    import keras
    folder = Path(folder)
    record = json.loads((folder / f"{name}.json").read_text())
    path = folder / record["file"]
    if sha256_file(path) != record["sha256"]:
        raise ValueError(f"{path} does not match the sha256 recorded when it was fetched")
    builder = {"mobilenet_v2_nsfwjs": lambda: keras.applications.MobileNetV2(
                   input_shape=(224, 224, 3), alpha=1.0, include_top=False, weights=None),
               "xception_imagenet": lambda: keras.applications.Xception(
                   input_shape=(224, 224, 3), include_top=False, weights=None)}[name]
    source = builder()
    source.load_weights(path)
    sources = [layer for layer in source.layers if layer.weights]
    targets = [layer for layer in model.layers if layer.weights]
    start = next((i for i, layer in enumerate(targets) if layer.name == sources[0].name), None)
    if start is None:
        raise ValueError(f"no layer of {model.name} matches the {name} backbone")
    pairs = list(zip(sources, targets[start:]))
    if len(pairs) < len(sources):
        raise ValueError(f"{model.name} holds {len(pairs)} of the {name} backbone's {len(sources)} layers with "
                         "weights")
    for theirs, ours in pairs:
        shapes = [tuple(w.shape) for w in theirs.weights], [tuple(w.shape) for w in ours.weights]
        if type(theirs) is not type(ours) or shapes[0] != shapes[1]:
            raise ValueError(f"{model.name} does not hold the {name} backbone in order: {theirs.name} "
                             f"{shapes[0]} against {ours.name} {shapes[1]}")
    for theirs, ours in pairs:
        ours.set_weights(theirs.get_weights())
    return {**record, "layers_copied": len(pairs)}
