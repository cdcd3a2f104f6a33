"""Ensemble inference: per-member probabilities, their calibrated mean, member disagreement, and the decision
at a threshold. All members run inside one compiled `tf.function` with a fixed input signature (no retracing)."""
from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from model.core.preprocess import to_model_input
from model.core.types import Task

_EPS = 1e-7
_compiled: dict[tuple, object] = {}  # (member model ids, input shape) → the compiled forward, kept per process
_compiled_lock = threading.Lock()


def apply_temperature(prob: np.ndarray, temperature: float, task: Task | str, bias: float = 0.0) -> np.ndarray:
    """Calibrate probabilities: sigmoid(logit / T + bias) per output (bias > 0 undoes the shift that class
    weighting puts into a binary model), or softmax(log p / T) for multiclass."""
    p = np.clip(np.asarray(prob, dtype="float64"), _EPS, 1 - _EPS)
    if task == Task.MULTICLASS:
        z = np.log(p) / temperature
        z -= z.max(axis=-1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=-1, keepdims=True)
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

    def raw(self, batch: np.ndarray) -> np.ndarray:
        """(members, N, outputs) uncalibrated member outputs for a uint8 batch."""
        return self._forward(np.ascontiguousarray(batch, dtype=np.uint8)).numpy()

    def predict_batch(self, batch: np.ndarray) -> list[Prediction]:
        out = self.raw(batch)
        per_member = [apply_temperature(out[i], m.temperature, self.task, m.bias)
                      for i, m in enumerate(self.bundle.members)]
        mean = np.mean(per_member, axis=0)
        names = [m.name for m in self.bundle.members]
        return [Prediction(self.classes, self.task, self._named(mean[n]),
                           {name: self._named(p[n]) for name, p in zip(names, per_member)})
                for n in range(len(batch))]

    def predict(self, gray: np.ndarray) -> Prediction:
        """One decoded uint8 grayscale image (any size) → Prediction."""
        return self.predict_batch(to_model_input(gray, self.spec)[None])[0]

    def _named(self, row: np.ndarray) -> dict[str, float]:
        if self.task == Task.BINARY:
            return {self.classes[0]: float(1 - row[0]), self.classes[1]: float(row[0])}
        return {c: float(v) for c, v in zip(self.classes, row)}
