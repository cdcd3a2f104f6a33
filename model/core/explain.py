"""Where the models looked: Grad-CAM, Grad-CAM++ and Score-CAM (tf-keras-vis) per member and their ensemble
average, and the colour overlay drawn at the upload's own resolution."""
from __future__ import annotations

import threading

import cv2
import numpy as np

from model.core.ensemble import FeatureMemo, features_memo
from model.core.preprocess import to_model_input
from model.core.types import CamMethod, Task, look_up_option

SCORECAM_MAX_N = 32  # Score-CAM masks with the 32 strongest channels: close to the full method, ~10× cheaper
_compiled: dict[tuple, object] = {}  # (member model ids, CAM layers, input shape) → compiled Grad-CAM, per process
_compiled_lock = threading.Lock()


class Explainer:
    """Builds each member's CAM objects once and reuses them. One lock per explainer: tf-keras-vis swaps layer
    activations while it works, so two threads must not share one CAM object at once."""

    def __init__(self, bundle):
        self.bundle = bundle
        self.spec = bundle.input_spec
        self._cams: dict[tuple[str, str], object] = {}
        self._lock = threading.Lock()

    def _cam(self, member, method: CamMethod):
        from tf_keras_vis.gradcam import Gradcam
        from tf_keras_vis.gradcam_plus_plus import GradcamPlusPlus
        from tf_keras_vis.scorecam import Scorecam
        from tf_keras_vis.utils.model_modifiers import ReplaceToLinear

        key = (member.name, method)
        if key not in self._cams:
            cls = {CamMethod.GRADCAM: Gradcam, CamMethod.GRADCAM_PLUS_PLUS: GradcamPlusPlus,
                   CamMethod.SCORECAM: Scorecam}[method]
            # Score-CAM reads the output probability itself; the gradient methods use the pre-activation score.
            modifier = None if method == CamMethod.SCORECAM else ReplaceToLinear()
            self._cams[key] = cls(member.model, model_modifier=modifier, clone=True)
        return self._cams[key]

    def score_fn(self, class_name: str):
        """The scalar each CAM explains: the class's output (for a binary bundle's negative class, its negation)."""
        classes, task = self.bundle.classes, self.bundle.task
        if task == Task.BINARY:
            sign = 1.0 if class_name == classes[-1] else -1.0
            return lambda out: sign * out[:, 0]
        k = classes.index(class_name)
        return lambda out: out[:, k]

    def member_cam(self, model_input: np.ndarray, member, method: CamMethod | str, class_name: str) -> np.ndarray:
        """One member's CAM at model-input resolution, float32 in [0, 1]."""
        method = look_up_option(method, CamMethod)
        channels = member.model.get_layer(member.cam_layer).output.shape[-1]
        kwargs = {"max_N": min(SCORECAM_MAX_N, channels)} if method == CamMethod.SCORECAM else {}
        seed = model_input[None].astype(np.float32)  # a float seed keeps the gradient tape recording
        with self._lock:
            cam = self._cam(member, method)(self.score_fn(class_name), seed, penultimate_layer=member.cam_layer,
                                            seek_penultimate_conv_layer=False, **kwargs)
        cam = np.nan_to_num(np.asarray(cam[0], dtype=np.float32))
        return cam

    def _compiled_gradcam(self):
        """Grad-CAM for every member in one compiled graph: the same maths as tf-keras-vis's Gradcam with
        ReplaceToLinear (gradient of the pre-activation score, channel weights = spatial mean of the gradient,
        ReLU, min-max normalised, bilinear to input size), ~5× faster than its eager path. Two entry points: `full`
        runs each member from the image; `from_features` starts at the CAM-layer feature maps that
        `Ensemble.predict` left in `features_memo`, and so runs only the layers after them. Needs each member to
        end in a chain of single-input layers from its CAM layer to a Dense head, as training.architectures
        builds; otherwise returns None."""
        if "compiled" in self._cams:
            return self._cams["compiled"]
        h, w = self.spec["height"], self.spec["width"]
        members = self.bundle.members
        # Shared like Ensemble's forward: a bundle loaded again shares its models, so nothing is traced again.
        key = (tuple(id(m.model) for m in members), tuple(m.cam_layer for m in members), h, w,
               self.spec.get("channels", 1))
        with _compiled_lock:
            if key in _compiled:
                self._cams["compiled"] = _compiled[key]
                return _compiled[key]
        run = self._build_compiled_gradcam()
        with _compiled_lock:
            self._cams["compiled"] = _compiled.setdefault(key, run)
        return self._cams["compiled"]

    def _build_compiled_gradcam(self):
        import keras
        import tensorflow as tf

        parts = []  # per member: (image → CAM-layer features, the layers from there to the head's input, the head)
        for m in self.bundle.members:
            layers = m.model.layers
            names = [layer.name for layer in layers]
            if m.cam_layer not in names or not isinstance(layers[-1], keras.layers.Dense):
                return None
            chain, previous = layers[names.index(m.cam_layer) + 1:-1], layers[names.index(m.cam_layer)]
            for layer in chain + [layers[-1]]:
                if layer.input is not previous.output:  # a branch after the CAM layer: no fast path
                    return None
                previous = layer
            parts.append((keras.Model(m.model.inputs, m.model.get_layer(m.cam_layer).output), chain, layers[-1]))
        h, w = self.spec["height"], self.spec["width"]

        def cams_from(features, k, sign):
            cams = []
            for f, (_, chain, head) in zip(features, parts):
                with tf.GradientTape() as tape:
                    tape.watch(f)
                    pooled = f
                    for layer in chain:
                        pooled = layer(pooled, training=False)
                    score = sign * (tf.matmul(pooled, head.kernel) + head.bias)[:, k]
                grads = tape.gradient(score, f)
                weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
                cam = tf.nn.relu(tf.reduce_sum(weights * f, axis=-1))[..., None]
                # Corner-aligned, as scipy.ndimage.zoom(order=1) upsamples in tf-keras-vis.
                cam = tf.compat.v1.image.resize_bilinear(cam, (h, w), align_corners=True)[0, ..., 0]
                lo, hi = tf.reduce_min(cam), tf.reduce_max(cam)
                cams.append(tf.math.divide_no_nan(cam - lo, hi - lo))
            return tf.stack(cams)

        scalars = [tf.TensorSpec((), tf.int32), tf.TensorSpec((), tf.float32)]

        @tf.function(input_signature=[tf.TensorSpec((1, h, w, self.spec.get("channels", 1)), tf.float32)] + scalars)
        def full(x, k, sign):
            return cams_from([tf.cast(sub(x, training=False), tf.float32) for sub, _, _ in parts], k, sign)

        shapes = tuple(tf.TensorSpec((1,) + tuple(sub.output.shape[1:]), tf.float32) for sub, _, _ in parts)

        @tf.function(input_signature=[shapes] + scalars)
        def from_features(features, k, sign):
            return cams_from(list(features), k, sign)

        return full, from_features

    def cams(self, gray: np.ndarray, method: CamMethod | str = CamMethod.GRADCAM,
             class_name: str | None = None) -> dict[str, np.ndarray]:
        """{member name: CAM, "ensemble": mean of member CAMs}, each at model-input resolution in [0, 1]. A
        Grad-CAM of an image `Ensemble.predict` has just seen reuses that forward pass's feature maps."""
        method = look_up_option(method, CamMethod)
        class_name = class_name or self.bundle.classes[-1]
        x = to_model_input(gray, self.spec)
        fast = self._compiled_gradcam() if method == CamMethod.GRADCAM else None
        if fast is not None:
            full, from_features = fast
            binary = self.bundle.task == Task.BINARY
            k = np.int32(0 if binary else self.bundle.classes.index(class_name))
            sign = np.float32(-1.0 if binary and class_name == self.bundle.classes[0] else 1.0)
            features = features_memo.get(FeatureMemo.key(self.bundle, x))
            stacked = (from_features(tuple(features), k, sign) if features is not None
                       else full(x[None].astype(np.float32), k, sign)).numpy()
            out = {m.name: stacked[i] for i, m in enumerate(self.bundle.members)}
        else:
            out = {m.name: self.member_cam(x, m, method, class_name) for m in self.bundle.members}
        out["ensemble"] = normalise(np.mean(list(out.values()), axis=0))
        return out


def normalise(cam: np.ndarray) -> np.ndarray:
    lo, hi = float(cam.min()), float(cam.max())
    return ((cam - lo) / (hi - lo)).astype(np.float32) if hi > lo else np.zeros_like(cam, dtype=np.float32)


def overlay(gray: np.ndarray, cam: np.ndarray, opacity: float = 0.4,
            colormap: int = cv2.COLORMAP_JET) -> np.ndarray:
    """Blend a CAM over the radiograph. Returns RGB uint8 at the radiograph's own size and aspect ratio."""
    h, w = gray.shape[:2]
    heat = cv2.resize(np.clip(cam, 0, 1).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    colour = cv2.applyColorMap(np.clip(heat * 255, 0, 255).astype(np.uint8), colormap)
    colour = cv2.cvtColor(colour, cv2.COLOR_BGR2RGB)
    base = cv2.cvtColor(gray, cv2.COLOR_GRAY2RGB)
    return cv2.addWeighted(colour, float(opacity), base, 1.0 - float(opacity), 0.0)
