"""Training-time augmentation aimed at a change of collection, and the batch feeder that applies it.

A later collection from the same hospital differs in framing, exposure, JPEG history and the markers burned into
the corners; a network that reads those as evidence fails there. Each training image is therefore re-framed
(rotation, scale, shift), re-exposed (brightness, contrast, gamma), re-encoded (JPEG 50–95), blurred or noised,
and has its frame and corners randomly erased. All of it works on the uint8 model input, in numpy/OpenCV, so it
runs the same under every Keras backend; nothing here is part of a saved model or of serving.
"""
from __future__ import annotations

import math

import cv2
import keras
import numpy as np


def reframe(img: np.ndarray, rng: np.random.Generator, max_rotation: float = 10.0, scale=(0.88, 1.15),
            max_shift: float = 0.12) -> np.ndarray:
    """Random rotation (degrees), zoom and shift in one affine warp; the uncovered border is filled either by
    reflection or by a random flat grey, so a black frame is not a class cue."""
    h, w = img.shape
    m = cv2.getRotationMatrix2D((w / 2, h / 2), rng.uniform(-max_rotation, max_rotation), rng.uniform(*scale))
    m[:, 2] += rng.uniform(-max_shift, max_shift, 2) * (w, h)
    if rng.random() < 0.5:
        return cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    return cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                          borderValue=int(rng.integers(0, 256)))


def reexpose(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Gamma 0.7–1.4, contrast ×0.75–1.3 around the mean, brightness ±10% of full scale."""
    x = img.astype(np.float32) / 255.0
    x = np.power(x, rng.uniform(0.7, 1.4))
    x = (x - x.mean()) * rng.uniform(0.75, 1.3) + x.mean() + rng.uniform(-0.1, 0.1)
    return np.clip(x * 255.0 + 0.5, 0, 255).astype(np.uint8)


def reencode(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A JPEG round trip at quality 50–95, as images pass through other archives."""
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(50, 96))])
    return cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE) if ok else img


def degrade(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Either a Gaussian blur (sigma 0.3–1.2) or additive noise (sigma 2–8 grey levels)."""
    if rng.random() < 0.5:
        return cv2.GaussianBlur(img, (0, 0), rng.uniform(0.3, 1.2))
    noisy = img.astype(np.float32) + rng.normal(0, rng.uniform(2, 8), img.shape)
    return np.clip(noisy, 0, 255).astype(np.uint8)


def erase_frame(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Blank one to four edge strips (3–12% wide) and/or a corner box (10–25%): where "R" markers, labels and
    collimation edges sit. The fill is a flat random grey or noise."""
    out = img.copy()
    h, w = out.shape

    def fill(region):
        if rng.random() < 0.5:
            region[...] = int(rng.integers(0, 256))
        else:
            region[...] = rng.integers(0, 256, region.shape, dtype=np.uint8)

    for side in np.flatnonzero(rng.random(4) < 0.35):
        k = max(1, int(rng.uniform(0.03, 0.12) * (h if side < 2 else w)))
        fill([out[:k], out[-k:], out[:, :k], out[:, -k:]][side])
    if rng.random() < 0.5:
        bh, bw = (int(rng.uniform(0.10, 0.25) * s) for s in (h, w))
        top, left = rng.integers(0, 2) * (h - bh), rng.integers(0, 2) * (w - bw)
        fill(out[top:top + bh, left:left + bw])
    return out


def augment(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One random draw of the whole chain for a (H, W) or (H, W, 1) uint8 image; returns the same shape."""
    gray = img[..., 0] if img.ndim == 3 else img
    gray = reframe(gray, rng)
    gray = reexpose(gray, rng)
    if rng.random() < 0.5:
        gray = reencode(gray, rng)
    if rng.random() < 0.4:
        gray = degrade(gray, rng)
    if rng.random() < 0.6:
        gray = erase_frame(gray, rng)
    return gray[..., None] if img.ndim == 3 else gray


class Batches(keras.utils.PyDataset):
    """(images, targets[, sample weights]) in shuffled batches, augmented when `train` is true.

    `targets` is an array or a dict of arrays (one per model output). Images stay uint8 until the batch is cut,
    then become float32 pixel values, which is what the models take.

    Each epoch's order and each batch's augmentation are drawn from (seed, epoch, batch), not from one running
    generator: a run resumed at epoch k (`set_epoch(k)`, done by `EpochSeed`) sees the batches an uninterrupted run
    saw, and the batches do not depend on the order in which they are fetched.

    `mixup` > 0 (training only) blends each batch with a shuffled copy of itself, images, targets and sample weights
    alike, by a weight drawn from Beta(mixup, mixup) per batch (Zhang et al., 2018): a regulariser against labels
    that are sometimes wrong."""

    def __init__(self, images: np.ndarray, targets, batch_size: int = 32, *, train: bool = True,
                 sample_weight: np.ndarray | None = None, seed: int = 0, mixup: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.images, self.targets, self.batch_size = images, targets, batch_size
        self.train, self.sample_weight, self.seed, self.mixup = train, sample_weight, seed, mixup
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        n = len(self.images)
        self.order = np.random.default_rng([self.seed, epoch]).permutation(n) if self.train else np.arange(n)

    def __len__(self) -> int:
        return math.ceil(len(self.images) / self.batch_size)

    def __getitem__(self, i: int):
        idx = self.order[i * self.batch_size:(i + 1) * self.batch_size]
        x = self.images[idx]
        if self.train:
            rng = np.random.default_rng([self.seed, self.epoch, i])
            x = np.stack([augment(im, rng) for im in x])
        x = x.astype(np.float32)
        y = ({k: v[idx] for k, v in self.targets.items()} if isinstance(self.targets, dict)
             else self.targets[idx])
        w = None if self.sample_weight is None else self.sample_weight[idx]
        if self.train and self.mixup > 0:
            lam, other = np.float32(rng.beta(self.mixup, self.mixup)), rng.permutation(len(idx))

            def mix(a):
                return lam * a + (1 - lam) * a[other]
            x = mix(x)
            y = {k: mix(v.astype(np.float32)) for k, v in y.items()} if isinstance(y, dict) else mix(
                y.astype(np.float32))
            w = None if w is None else mix(w)
        return (x, y) if w is None else (x, y, w)


class EpochSeed(keras.callbacks.Callback):
    """Start every epoch's random draws from the epoch's number, so a resumed run draws what an uninterrupted one
    drew: the training batches' order and augmentation (`Batches.set_epoch`), and the model's own random layers
    (dropout), whose seed generators count draws from a state that the epoch backup does not restore."""

    STRIDE = 1 << 20  # draws a seed generator may make in one epoch before its next epoch's start

    def __init__(self, batches: Batches):
        super().__init__()
        self.batches = batches

    def on_epoch_begin(self, epoch, logs=None):
        self.batches.set_epoch(epoch)
        for v in self.model.non_trainable_variables:
            if v.path.endswith("seed_generator_state"):
                state = np.array(keras.ops.convert_to_numpy(v))
                state[1] = epoch * self.STRIDE
                v.assign(state)
