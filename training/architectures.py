"""Model builders: every member takes raw uint8 pixels and holds its own scaling and augmentation.

Backbones from `keras.applications` are built with `input_tensor=` so the saved graph is flat (Grad-CAM needs
the convolutional layers reachable from the model's own input). `weights=None` by default; a local weights file
may be given, since nothing can be downloaded at run time.
"""
from __future__ import annotations

import keras
from keras import layers

# BatchNorm's moving statistics must catch up within an epoch of ~100 steps; Keras' 0.99/0.999 leave validation
# scored with stale statistics (constant outputs, val AUC 0.5) for several epochs.
BN_MOMENTUM = 0.9
HEADS = {"binary": "sigmoid", "multilabel": "sigmoid", "multiclass": "softmax"}


def _stem(input_spec: dict, augment: bool):
    """Raw pixel values (0–255) → float in [-1, 1], with training-only augmentation (inactive at inference).

    The input tensor is float32 holding uint8 values: a uint8 graph input would cut Grad-CAM's gradient tape."""
    inputs = keras.Input((input_spec["height"], input_spec["width"], input_spec.get("channels", 1)),
                         dtype="float32", name="image")
    x = layers.Rescaling(1 / 127.5, offset=-1.0, name="scale")(inputs)
    if augment:
        x = layers.RandomRotation(0.03, fill_mode="constant", fill_value=-1.0, name="aug_rotate")(x)
        x = layers.RandomTranslation(0.05, 0.05, fill_mode="constant", fill_value=-1.0, name="aug_shift")(x)
        x = layers.RandomZoom(0.1, fill_mode="constant", fill_value=-1.0, name="aug_zoom")(x)
        x = layers.RandomContrast(0.2, value_range=(-1, 1), name="aug_contrast")(x)
        x = layers.RandomBrightness(0.1, value_range=(-1, 1), name="aug_brightness")(x)
    return inputs, x


def _head(x, n_outputs: int, task: str, dropout: float = 0.3):
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    x = layers.Dropout(dropout, name="head_dropout")(x)
    return layers.Dense(n_outputs, activation=HEADS[task], name="prediction", dtype="float32")(x)


def compact_cnn(input_spec: dict, n_outputs: int = 1, task: str = "binary", augment: bool = True,
                weights: str | None = None) -> keras.Model:
    """A compact VGG-style CNN in the spirit of the origin documents: conv-BN-ReLU blocks, max-pooling, GAP."""
    inputs, x = _stem(input_spec, augment)
    x = layers.Conv2D(24, 5, strides=2, padding="same", use_bias=False, name="stem_conv")(x)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, name="stem_bn")(x)
    x = layers.ReLU(name="stem_relu")(x)
    for i, filters in enumerate((32, 64, 128, 192)):
        for j in range(2):
            x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"b{i}_conv{j}")(x)
            x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"b{i}_bn{j}")(x)
            x = layers.ReLU(name=f"b{i}_relu{j}")(x)
        if i < 3:
            x = layers.MaxPooling2D(name=f"b{i}_pool")(x)
    model = keras.Model(inputs, _head(x, n_outputs, task), name="compact_cnn")
    if weights:
        model.load_weights(weights)
    return model


def _application(builder, name: str, cam_layer: str | None, input_spec: dict, n_outputs: int, task: str,
                 augment: bool, weights: str | None, **kwargs) -> keras.Model:
    inputs, x = _stem(input_spec, augment)
    if input_spec.get("channels", 1) == 1:  # backbones (and ImageNet weights) expect three channels
        x = layers.Concatenate(name="gray_to_rgb")([x, x, x])
    backbone = builder(input_tensor=x, include_top=False, weights=weights, **kwargs)
    for layer in backbone.layers:
        if isinstance(layer, layers.BatchNormalization):
            layer.momentum = BN_MOMENTUM
    model = keras.Model(inputs, _head(backbone.output, n_outputs, task), name=name)
    return model


def mobilenet_v2(input_spec: dict, n_outputs: int = 1, task: str = "binary", augment: bool = True,
                 weights: str | None = None) -> keras.Model:
    """MobileNetV2 (width 0.35): inverted residuals, cheap enough for a 2-core CPU."""
    return _application(keras.applications.MobileNetV2, "mobilenet_v2", "out_relu", input_spec, n_outputs,
                        task, augment, weights, alpha=0.35)


def mobilenet_v3_small(input_spec: dict, n_outputs: int = 1, task: str = "binary", augment: bool = True,
                       weights: str | None = None) -> keras.Model:
    """MobileNetV3-Small: squeeze-excite and hard-swish, a different inductive bias from the other two."""
    return _application(keras.applications.MobileNetV3Small, "mobilenet_v3_small", None, input_spec, n_outputs,
                        task, augment, weights, include_preprocessing=False, minimalistic=False)


ARCHITECTURES = {"cnn": compact_cnn, "mobilenetv2": mobilenet_v2, "mobilenetv3s": mobilenet_v3_small}


def last_conv_layer(model: keras.Model) -> str:
    """Name of the last layer with a 4-D output before global pooling: where Grad-CAM looks."""
    for layer in reversed(model.layers):
        shape = getattr(layer, "output", None)
        if shape is not None and len(layer.output.shape) == 4 and not layer.name.startswith(("scale", "aug_")):
            return layer.name
    raise ValueError(f"{model.name} has no convolutional feature map")
