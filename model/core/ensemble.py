"""Ensemble inference: per-member probabilities, their calibrated mean, member disagreement, and the decision
at a threshold. All members run inside one compiled `tf.function` with a fixed input signature (no retracing)."""
from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from model.core import metrics as M
from model.core.preprocess import to_model_input
from model.core.types import Task

_EPS = 1e-7
_compiled: dict[tuple, object] = {}  # (member model ids, input shape) → the compiled forward, kept per process
_compiled_lock = threading.Lock()


class FeatureMemo:
    """The last few single-image forward passes' CAM-layer feature maps, one entry per (loaded models, model input).
    `Ensemble.predict` leaves them here and `Explainer.cams` takes them, so explaining an image just analysed runs
    only each member's head backwards instead of every member's whole network again. Holds model inputs' digests,
    never pixels."""

    def __init__(self, entries: int = 8):
        self.entries = entries
        self._store: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def key(bundle, model_input: np.ndarray) -> tuple:
        """The bundle's loaded models (by identity) and a digest of one model input."""
        return (tuple(id(m.model) for m in bundle.members),
                hashlib.blake2b(np.ascontiguousarray(model_input).tobytes(), digest_size=16).digest())

    def put(self, key: tuple, features: list[np.ndarray]) -> None:
        with self._lock:
            self._store[key] = features
            self._store.move_to_end(key)
            while len(self._store) > self.entries:
                self._store.popitem(last=False)

    def get(self, key: tuple) -> list[np.ndarray] | None:
        with self._lock:
            return self._store.get(key)

    def clear(self) -> None:
        with self._lock:
            self._store.clear()


features_memo = FeatureMemo()


def apply_temperature(prob: np.ndarray, temperature: float, task: Task | str,
                      bias: float | list[float] | np.ndarray = 0.0) -> np.ndarray:
    """Calibrate probabilities: sigmoid(logit / T + bias) per output (bias > 0 undoes the shift that class
    weighting puts into a binary model), or softmax(log p / T + bias) for multiclass, with a bias per class (vector
    scaling; a single number shifts every class alike, i.e. changes nothing)."""
    p = np.clip(np.asarray(prob, dtype="float64"), _EPS, 1 - _EPS)
    if task == Task.MULTICLASS:
        return M.softmax(np.log(p) / temperature + np.asarray(bias, dtype="float64"))
    return 1.0 / (1.0 + np.exp(-(np.log(p / (1 - p)) / temperature + bias)))


@dataclass
class Prediction:
    classes: list[str]
    task: Task
    probabilities: dict[str, float]            # ensemble, calibrated
    members: dict[str, dict[str, float]]       # member → class → calibrated probability

    @property
    def probability(self) -> float | None:
        """The positive class's probability (binary bundles)."""
        return self.probabilities[self.classes[-1]] if self.task == Task.BINARY else None

    @property
    def spread(self) -> float:
        """Member disagreement: the largest range of member probabilities over the classes scored."""
        classes = self.classes[-1:] if self.task == Task.BINARY else self.classes
        return max(max(m[c] for m in self.members.values()) - min(m[c] for m in self.members.values())
                   for c in classes)

    def label(self, threshold: float | dict | None = None) -> str | list[str]:
        """Binary: the positive class when p >= threshold. Multiclass: the most probable class.
        Multilabel: every class at or above its threshold (a dict per class, or one number)."""
        if self.task == Task.BINARY:
            return self.classes[-1] if self.probability >= float(threshold) else self.classes[0]
        if self.task == Task.MULTICLASS:
            return max(self.probabilities, key=self.probabilities.get)
        thresholds = threshold if isinstance(threshold, dict) else {c: threshold or 0.5 for c in self.classes}
        return [c for c in self.classes if self.probabilities[c] >= thresholds[c]]


class Ensemble:
    """Serves one loaded bundle. Thread-safe for concurrent `predict` calls (the compiled function is pure)."""

    DISAGREEMENT = 0.25  # member spread at or above this is shown to the user as disagreement

    def __init__(self, bundle):
        import tensorflow as tf

        self.bundle = bundle
        self.classes, self.task = bundle.classes, bundle.task
        self.spec = bundle.input_spec
        models = [m.model for m in bundle.members]
        shape = (None, self.spec["height"], self.spec["width"], self.spec.get("channels", 1))
        # One compiled function per set of loaded models: a bundle loaded again shares its models (load_bundle), so
        # a second Ensemble on it traces nothing. The function holds the models, so their ids stay theirs.
        key = (tuple(id(m) for m in models), shape)
        with _compiled_lock:
            self._forward = _compiled.get(key)
        if self._forward is None:
            @tf.function(input_signature=[tf.TensorSpec(shape, tf.uint8)])
            def forward(x):
                x = tf.cast(x, tf.float32)
                return tf.stack([tf.cast(m(x, training=False), tf.float32) for m in models])

            with _compiled_lock:
                self._forward = _compiled.setdefault(key, forward)
        self._one = self._one_with_features()

    def _one_with_features(self):
        """One image's forward pass that also returns each member's CAM-layer feature map (compiled once per set of
        loaded models, like the batch forward); None when a member names no CAM layer."""
        import keras
        import tensorflow as tf

        members = self.bundle.members
        shape = (1, self.spec["height"], self.spec["width"], self.spec.get("channels", 1))
        key = ("features",) + tuple(id(m.model) for m in members) + (shape,)
        with _compiled_lock:
            if key in _compiled:
                return _compiled[key]
        try:
            parts = [keras.Model(m.model.inputs, [m.model.output, m.model.get_layer(m.cam_layer).output])
                     for m in members]
        except (ValueError, AttributeError, TypeError):
            return None

        @tf.function(input_signature=[tf.TensorSpec(shape, tf.uint8)])
        def one(x):
            outs = [part(tf.cast(x, tf.float32), training=False) for part in parts]
            return tf.stack([tf.cast(o, tf.float32) for o, _ in outs]), tuple(tf.cast(f, tf.float32) for _, f in outs)

        with _compiled_lock:
            return _compiled.setdefault(key, one)

    def raw(self, batch: np.ndarray) -> np.ndarray:
        """(members, N, outputs) uncalibrated member outputs for a uint8 batch."""
        return self._forward(np.ascontiguousarray(batch, dtype=np.uint8)).numpy()

    def predict_batch(self, batch: np.ndarray) -> list[Prediction]:
        return self._predictions(self.raw(batch))

    def _predictions(self, out: np.ndarray) -> list[Prediction]:
        per_member = [apply_temperature(out[i], m.temperature, self.task, m.bias)
                      for i, m in enumerate(self.bundle.members)]
        mean = np.mean(per_member, axis=0)
        names = [m.name for m in self.bundle.members]
        return [Prediction(self.classes, self.task, self._named(mean[n]),
                           {name: self._named(p[n]) for name, p in zip(names, per_member)})
                for n in range(out.shape[1])]

    def predict(self, gray: np.ndarray) -> Prediction:
        """One decoded uint8 grayscale image (any size) → Prediction. Its members' CAM-layer features are kept in
        `features_memo`, for a Grad-CAM of the same image that follows."""
        x = to_model_input(gray, self.spec)
        if self._one is None:
            return self.predict_batch(x[None])[0]
        out, features = self._one(np.ascontiguousarray(x[None], dtype=np.uint8))
        features_memo.put(FeatureMemo.key(self.bundle, x), [f.numpy() for f in features])
        return self._predictions(out.numpy())[0]

    def _named(self, row: np.ndarray) -> dict[str, float]:
        if self.task == Task.BINARY:
            return {self.classes[0]: float(1 - row[0]), self.classes[1]: float(row[0])}
        return {c: float(v) for c, v in zip(self.classes, row)}
