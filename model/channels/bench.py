"""`python -m model bench`: how fast the installed bundle answers, on generated images, with machine facts, and what
keeping each result in the record adds (record_ms).

Prints medians; nothing here asserts a target (benchmarks report, tests decide)."""
from __future__ import annotations

import os
import platform
import resource
import statistics
import subprocess
import sys
import time

import cv2
import numpy as np


def _png(seed: int, size=(1024, 880)) -> bytes:
    rng = np.random.default_rng(seed)
    h, w = size
    img = np.full((h, w), 40, np.float32)
    for cx in (0.3, 0.7):
        cv2.ellipse(img, (int(cx * w), h // 2), (int(0.15 * w), int(0.3 * h)), 0, 0, 360, 110, -1)
    img += cv2.resize(rng.normal(0, 20, (16, 16)).astype(np.float32), (w, h))
    return cv2.imencode(".png", np.clip(img, 0, 255).astype(np.uint8))[1].tobytes()


def _median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def cold_start_seconds(bundle_name: str) -> float:
    """A fresh Python process: import, load and verify the bundle, predict one image."""
    code = ("import time; t=time.perf_counter(); from model.core.bundle import load_bundle, bundles_dir; "
            "from model.core.ensemble import Ensemble; from model.io import decode; import sys; "
            f"e=Ensemble(load_bundle(bundles_dir() / {bundle_name!r})); "
            "e.predict(decode(sys.stdin.buffer.read()).pixels); "
            "print(time.perf_counter()-t)")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run([sys.executable, "-c", code], input=_png(99), capture_output=True, cwd=root,
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, check=True)
    return float(out.stdout.decode().strip().splitlines()[-1])


def record_ms(ensemble, data: bytes, repeats: int = 20) -> tuple[float, float]:
    """(added, work) in ms, medians: what keeping a result in the record adds to the reader's wait, as the channels
    do it (the upload's sha256 worked out on a thread while the analysis runs, then the row, one insert and commit
    into a fresh SQLite store in a temporary folder), and the same work done all at once, hash included."""
    import tempfile
    from pathlib import Path

    from model.core.analysis import analyse
    from model.core.guard import for_bundle
    from model.store.recorder import Channel, Recorder, input_facts, upload_facts

    bundle, guard = ensemble.bundle, for_bundle(ensemble.bundle)
    with tempfile.TemporaryDirectory() as folder:
        keeper = Recorder(f"sqlite:///{folder}/records.sqlite3", Path(folder) / "spool.jsonl")
        result, _ = analyse(data, "bench.png", ensemble, guard=guard)
        keeper.record(result, bundle, channel=Channel.CLI, data=data)  # creates the database once
        added = []
        for _ in range(repeats):
            facts = upload_facts(data) or input_facts(data)
            result, _ = analyse(data, "bench.png", ensemble, guard=guard)
            start = time.perf_counter()
            keeper.record(result, bundle, channel=Channel.CLI, facts=facts, latency_ms=1.0)
            added.append((time.perf_counter() - start) * 1000)
        work = _median_ms(lambda: keeper.record(result, bundle, channel=Channel.CLI, data=data, latency_ms=1.0),
                          repeats)
        keeper.close()
    return statistics.median(added), work


def bench(bundle, repeats: int = 20) -> dict:
    import tensorflow as tf

    from model.core.analysis import BATCH, analyse_batch
    from model.core.ensemble import Ensemble
    from model.core.explain import Explainer
    from model.core.preprocess import to_model_input
    from model.core.types import CamMethod
    from model.io import decode

    ensemble, explainer = Ensemble(bundle), Explainer(bundle)
    images = [_png(i) for i in range(8)]
    ensemble.predict(decode(images[0]).pixels)  # trace once
    explainer.cams(decode(images[0]).pixels)    # build CAM objects once

    counter = iter(range(10 ** 9))
    next_image = lambda: images[next(counter) % len(images)]
    predict_ms = _median_ms(lambda: ensemble.predict(decode(next_image()).pixels), repeats)

    def predict_and_cam():
        pixels = decode(next_image()).pixels
        ensemble.predict(pixels)
        explainer.cams(pixels, CamMethod.GRADCAM)
    predict_cam_ms = _median_ms(predict_and_cam, max(5, repeats // 2))

    def naive():  # the origin documents' way: model.predict once per member per image
        x = to_model_input(decode(next_image()).pixels, bundle.input_spec)[None].astype("float32")
        return [m.model.predict(x, verbose=0) for m in bundle.members]
    naive()
    naive_ms = _median_ms(naive, max(5, repeats // 2))

    from model.core.guard import for_bundle
    guard, big = for_bundle(bundle), decode(_png(99, size=(3000, 2500)))  # a large upload: the check must stay cheap
    guard(big)  # parameters load once
    guard_ms = _median_ms(lambda: guard(big), max(5, repeats // 2))
    keep_ms, keep_work_ms = record_ms(ensemble, images[0], repeats)

    def batch_seconds(n: int) -> float:  # the worklist's path: read and check each file, then the model, in batches
        files = [(f"bench-{i}.png", next_image()) for i in range(n)]
        start = time.perf_counter()
        analyse_batch(files, ensemble, guard=guard)
        return time.perf_counter() - start
    # The batch graph is traced on its first call, once per process (the single-image path above uses another
    # graph), so that first call is reported on its own and kept out of the throughput.
    first_batch_s = batch_seconds(BATCH)
    batch_per_s = 96 / batch_seconds(96)

    return {"bundle": bundle.name, "members": [m.name for m in bundle.members], "input": bundle.input_spec,
            "image_size": [1024, 880], "repeats": repeats,
            "cold_start_s": round(cold_start_seconds(bundle.name), 2), "predict_ms": round(predict_ms, 1),
            "predict_cam_ms": round(predict_cam_ms, 1), "guard_ms_3000x2500": round(guard_ms, 1),
            "batch_images_per_s": round(batch_per_s, 1), "first_batch_s": round(first_batch_s, 2),
            "naive_predict_ms": round(naive_ms, 1), "speedup_vs_naive": round(naive_ms / predict_ms, 1),
            "record_ms": round(keep_ms, 2), "record_work_ms": round(keep_work_ms, 2),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "machine": {"cores": os.cpu_count(), "tensorflow": tf.__version__, "python": platform.python_version(),
                        "device": "GPU" if tf.config.list_physical_devices("GPU") else "CPU",
                        "processor": platform.processor() or platform.machine()}}
