"""Model builders: every member takes raw uint8 pixels and holds its own scaling and standardisation.

Backbones from `keras.applications` are built with `input_tensor=` so the saved graph is flat (Grad-CAM needs
the convolutional layers reachable from the model's own input). `weights=None` by default; a local weights file
may be given, since nothing can be downloaded at run time.
"""
from __future__ import annotations

import keras
from keras import layers

from model.core.types import TrainingTask

# BatchNorm's moving statistics must catch up within an epoch of ~100 steps; Keras' 0.99/0.999 leave validation
# scored with stale statistics (constant outputs, val AUC 0.5) for several epochs.
BN_MOMENTUM = 0.9
HEADS = {TrainingTask.BINARY: "sigmoid", TrainingTask.MULTILABEL: "sigmoid", TrainingTask.MULTICLASS: "softmax"}


def _stem(input_spec: dict):
    """Raw pixel values (0–255) → a per-image standardised float map.

    Each radiograph is z-scored over its own pixels (a LayerNormalization over height, width and channels, with no
    learned scale or shift), so a darker or flatter exposure from another collection reaches the first convolution
    looking like the training images. Augmentation happens on the training batches (training.augment), not in the
    graph, so the saved model is exactly what serving runs. The input tensor is float32 holding uint8 values: a
    uint8 graph input would cut Grad-CAM's gradient tape."""
    inputs = keras.Input((input_spec["height"], input_spec["width"], input_spec.get("channels", 1)),
                         dtype="float32", name="image")
    x = layers.Rescaling(1 / 127.5, offset=-1.0, name="scale")(inputs)
    x = layers.LayerNormalization(axis=[1, 2, 3], center=False, scale=False, epsilon=1e-3, name="standardize")(x)
    return inputs, x


def _head(x, n_outputs: int, task: str, dropout: float = 0.3):
    """Pooled features → class probabilities. "multitask" has two heads on the same features: `prediction`
    (pneumonia, sigmoid) and `subtype` (normal / bacterial / viral, softmax)."""
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    x = layers.Dropout(dropout, name="head_dropout")(x)
    if task == TrainingTask.MULTITASK:
        return {"prediction": layers.Dense(1, activation="sigmoid", name="prediction", dtype="float32")(x),
                "subtype": layers.Dense(3, activation="softmax", name="subtype", dtype="float32")(x)}
    return layers.Dense(n_outputs, activation=HEADS[task], name="prediction", dtype="float32")(x)


def compact_cnn(input_spec: dict, n_outputs: int = 1, task: str = TrainingTask.BINARY,
                weights: str | None = None) -> keras.Model:
    """A compact VGG-style CNN in the spirit of the origin documents: conv-BN-ReLU blocks, max-pooling, GAP."""
    inputs, x = _stem(input_spec)
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
                 weights: str | None, **kwargs) -> keras.Model:
    inputs, x = _stem(input_spec)
    if input_spec.get("channels", 1) == 1:  # backbones (and ImageNet weights) expect three channels
        x = layers.Concatenate(name="gray_to_rgb")([x, x, x])
    backbone = builder(input_tensor=x, include_top=False, weights=weights, **kwargs)
    for layer in backbone.layers:
        if isinstance(layer, layers.BatchNormalization):
            layer.momentum = BN_MOMENTUM
    model = keras.Model(inputs, _head(backbone.output, n_outputs, task), name=name)
    return model


def mobilenet_v2(input_spec: dict, n_outputs: int = 1, task: str = TrainingTask.BINARY,
                 weights: str | None = None) -> keras.Model:
    """MobileNetV2 (width 0.35): inverted residuals, cheap enough for a 2-core CPU."""
    return _application(keras.applications.MobileNetV2, "mobilenet_v2", "out_relu", input_spec, n_outputs,
                        task, weights, alpha=0.35)


def mobilenet_v3_small(input_spec: dict, n_outputs: int = 1, task: str = TrainingTask.BINARY,
                       weights: str | None = None) -> keras.Model:
    """MobileNetV3-Small: squeeze-excite and hard-swish, a different inductive bias from the other two."""
    return _application(keras.applications.MobileNetV3Small, "mobilenet_v3_small", None, input_spec, n_outputs,
                        task, weights, include_preprocessing=False, minimalistic=False)


# The range each fetched ImageNet backbone was fed, as (scale, offset) of the stem's standardised map: MobileNetV2
# (nsfwjs) pixels / 255, mean 0.5 and spread 0.25; Xception pixels / 127.5 − 1, mean 0 and spread about 0.5.
IMAGENET_RANGE = {"mobilenet_v2_nsfwjs": (0.25, 0.5, "to_unit_range"),
                  "xception_imagenet": (0.5, 0.0, "to_xception_range")}


def imagenet_input(input_spec: dict, backbone: str):
    """(inputs, x): the stem's per-image standardised map brought to the range `backbone`'s ImageNet weights were
    fed (fixed and parameter-free, so exposure still never reaches the first convolution), grey repeated to three
    channels. Shared by the pretrained members and `training.probe`."""
    inputs, x = _stem(input_spec)
    scale, offset, name = IMAGENET_RANGE[backbone]
    x = layers.Rescaling(scale, offset=offset, name=name)(x)
    if input_spec.get("channels", 1) == 1:
        x = layers.Concatenate(name="gray_to_rgb")([x, x, x])
    return inputs, x


def mobilenet_v2_imagenet(input_spec: dict, n_outputs: int = 1, task: str = TrainingTask.BINARY,
                          weights: str | None = None) -> keras.Model:
    """MobileNetV2 (width 1.0) meant to start from ImageNet (`training.backbones`, loaded by `train_member`).

    The per-image standardised map is brought back to the range the pretrained weights were fed (pixels / 255:
    mean 0.5, standard deviation 0.25), fixed and parameter-free, so exposure still never reaches the first
    convolution. BatchNorm runs in inference mode (its ImageNet statistics are kept; only scale and shift learn),
    which fine-tuning a whole pretrained network with batches of 32 needs."""
    inputs, x = imagenet_input(input_spec, "mobilenet_v2_nsfwjs")
    backbone = keras.applications.MobileNetV2(input_tensor=x, include_top=False, weights=None, alpha=1.0)
    for layer in backbone.layers:
        if isinstance(layer, layers.BatchNormalization):
            layer.trainable = False
    model = keras.Model(inputs, _head(backbone.output, n_outputs, task), name="mobilenet_v2_imagenet")
    if weights:
        model.load_weights(weights)
    return model


def xception_imagenet(input_spec: dict, n_outputs: int = 1, task: str = TrainingTask.BINARY,
                      weights: str | None = None, train_from: int = 12) -> keras.Model:
    """Xception meant to start from ImageNet (`training.backbones`), fine-tuned from block `train_from` on.

    Xception costs about 15× MobileNetV2's multiply-adds, so on a 2-core CPU only the last blocks learn: the entry
    flow and most of the middle flow keep their ImageNet weights and get no gradient (a training step at 224 ran
    4.6 images/s here). The standardised map is scaled to the spread Xception was fed (pixels / 127.5 − 1: mean 0,
    about 0.5), and BatchNorm runs in inference mode, as for the ImageNet MobileNetV2."""
    inputs, x = imagenet_input(input_spec, "xception_imagenet")
    backbone = keras.applications.Xception(input_tensor=x, include_top=False, weights=None)
    # Learning starts at the first layer of block `train_from`, in graph order, so the exit flow's unnamed 1×1
    # shortcut convolution learns with its block.
    learning = False
    for layer in backbone.layers:
        learning = learning or layer.name.startswith(f"block{train_from}_")
        if isinstance(layer, layers.BatchNormalization) or not learning:
            layer.trainable = False
    model = keras.Model(inputs, _head(backbone.output, n_outputs, task), name="xception_imagenet")
    if weights:
        model.load_weights(weights)
    return model


def resnet_small(input_spec: dict, n_outputs: int = 1, task: str = TrainingTask.BINARY,
                 weights: str | None = None) -> keras.Model:
    """A ResNet-style member: a strided stem and max-pool to 1/4 size, then four stages of two basic residual
    blocks (32, 64, 128, 256 filters; stride 2 between stages), identity or 1×1 projection shortcuts."""
    inputs, x = _stem(input_spec)
    x = layers.Conv2D(32, 5, strides=2, padding="same", use_bias=False, name="stem_conv")(x)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, name="stem_bn")(x)
    x = layers.ReLU(name="stem_relu")(x)
    x = layers.MaxPooling2D(3, strides=2, padding="same", name="stem_pool")(x)
    for i, filters in enumerate((32, 64, 128, 256)):
        for j in range(2):
            stride = 2 if i > 0 and j == 0 else 1
            shortcut = x
            if stride > 1 or x.shape[-1] != filters:
                shortcut = layers.Conv2D(filters, 1, strides=stride, use_bias=False, name=f"s{i}b{j}_proj")(x)
                shortcut = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"s{i}b{j}_proj_bn")(shortcut)
            y = layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False, name=f"s{i}b{j}_conv0")(x)
            y = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"s{i}b{j}_bn0")(y)
            y = layers.ReLU(name=f"s{i}b{j}_relu0")(y)
            y = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"s{i}b{j}_conv1")(y)
            y = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"s{i}b{j}_bn1")(y)
            x = layers.ReLU(name=f"s{i}b{j}_out")(layers.Add(name=f"s{i}b{j}_add")([shortcut, y]))
    model = keras.Model(inputs, _head(x, n_outputs, task), name="resnet_small")
    if weights:
        model.load_weights(weights)
    return model


ARCHITECTURES = {"cnn": compact_cnn, "resnet": resnet_small, "mobilenetv2": mobilenet_v2,
                 "mobilenetv3s": mobilenet_v3_small, "mobilenetv2_imagenet": mobilenet_v2_imagenet,
                 "xception_imagenet": xception_imagenet}
# Members that start from a fetched ImageNet backbone (training.backbones), and which one.
PRETRAINED = {"mobilenetv2_imagenet": "mobilenet_v2_nsfwjs", "xception_imagenet": "xception_imagenet"}


def last_conv_layer(model: keras.Model) -> str:
    """Name of the last layer with a 4-D output before global pooling: where Grad-CAM looks."""
    for layer in reversed(model.layers):
        shape = getattr(layer, "output", None)
        skip = layer.name.startswith(("scale", "standardize", "to_unit_range", "gray_to_rgb", "aug_"))
        if shape is not None and len(layer.output.shape) == 4 and not skip:
            return layer.name
    raise ValueError(f"{model.name} has no convolutional feature map")
