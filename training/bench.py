"""`python -m training bench`: images/s of the input pipeline alone and of a training step, per architecture,
so a run on a GPU shows whether input or compute bounds it."""
from __future__ import annotations

import time

import keras
import numpy as np

from training.architectures import ARCHITECTURES
from training.train import hardware


def bench(size: int = 160, batch_size: int = 32, steps: int = 5) -> dict:
    spec = {"height": size, "width": size, "channels": 1, "resize": "squash", "dtype": "uint8"}
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (batch_size * 8, size, size, 1), dtype=np.uint8)
    y = rng.integers(0, 2, (len(images), 1)).astype("float32")

    start, seen = time.perf_counter(), 0
    while seen < batch_size * steps * 4:  # what fit() does per step: index a shuffled batch, make it float
        idx = rng.choice(len(images), batch_size, replace=False)
        batch = images[idx].astype("float32")
        seen += len(batch)
    pipeline = seen / (time.perf_counter() - start)

    results = {}
    for name, build in ARCHITECTURES.items():
        model = build(spec)
        model.compile(optimizer="adam", loss="binary_crossentropy")
        model.train_on_batch(images[:batch_size], y[:batch_size])  # compile the step
        start = time.perf_counter()
        for i in range(steps):
            sl = slice((i % 8) * batch_size, (i % 8 + 1) * batch_size)
            model.train_on_batch(images[sl], y[sl])
        results[name] = {"params": int(model.count_params()),
                         "train_images_per_s": round(batch_size * steps / (time.perf_counter() - start), 1)}
        keras.backend.clear_session()
    return {"input_size": size, "batch_size": batch_size, "pipeline_images_per_s": round(pipeline, 1),
            "architectures": results, "hardware": hardware()}
