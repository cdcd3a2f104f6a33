"""The department's record without running a model: a shipped bundle's manifest, checksummed members and reports
(no Keras), results made from a probability, and a synthetic department (children's scores drawn from the
bundle's own external set, adults' from elsewhere) written straight into a store."""
from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import numpy as np

from model.core.types import Result, Task, WarningCode

ROOT = Path(__file__).resolve().parents[2]
START = datetime(2025, 3, 3, 8, 0)


def shipped_bundle(name: str = "pneumonia-kermany"):
    """The committed bundle as serving sees it, without loading its Keras members (the record only needs its
    identity, operating points and reports)."""
    from model.core.bundle import load_bundle

    return load_bundle(ROOT / "model" / "bundles" / name, models=False)


def result(bundle, p: float, threshold: float | None = None, warnings=(), site=None) -> Result:
    """A binary result at probability `p` (as decided, i.e. site-calibrated when `site` is given), decided at
    `threshold` (default: the bundle's default point)."""
    neg, pos = bundle.classes
    t = threshold if threshold is not None else bundle.operating_point()["threshold"]
    codes = [WarningCode(w) for w in warnings]
    label = None if WarningCode.NOT_CHEST_XRAY in codes else (pos if p >= t else neg)
    return Result("image.png", bundle.name, Task.BINARY, probability=float(p),
                  probabilities={neg: 1 - float(p), pos: float(p)}, members={}, spread=0.0, threshold=t,
                  operating_point=bundle.manifest.get("default_operating_point"), label=label,
                  site=site.name if site else None, warnings=[{"code": c, "message": c} for c in codes],
                  meta={"format": "png", "width": 1024, "height": 880}, guard_scores={"chest_xray": 0.99})


def reference(bundle) -> tuple[np.ndarray, np.ndarray]:
    """(y, p): the bundle's external scores."""
    scores = bundle.read_report("scores-external")
    return (np.asarray(scores["y"], int).reshape(len(scores["y"]), -1)[:, 0],
            np.asarray(scores["ensemble"], float).reshape(len(scores["ensemble"]), -1)[:, 0])


def children(bundle, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(y, p) like the bundle's external children: drawn from them, each logit moved a little."""
    from model.core.metrics import logit, sigmoid

    rng = np.random.default_rng(seed)
    y, p = reference(bundle)
    pick = rng.integers(0, len(y), n)
    return y[pick], sigmoid(logit(p[pick]) + rng.normal(0, 0.15, n))


def write(store, bundle, p, y=None, *, warnings=None, start: datetime = START, every=timedelta(minutes=20),
          channel: str = "cli", sha_prefix: str = "c", confirm_at=None) -> list[str]:
    """Record one result per score (times `every` apart from `start`), with a confirmation (the true label `y`)
    when given; returns the record ids. Rows go straight into the store: no spool, no model."""
    from model.store import confirmations as C
    from model.store.recorder import result_row

    rows, confirmed = [], []
    for i, score in enumerate(np.asarray(p, float)):
        codes = (warnings[i] if warnings is not None else ()) or ()
        row = result_row(result(bundle, score, warnings=codes), bundle, channel=channel,
                         sha256=f"{sha_prefix}{i:063x}"[-64:], now=start + i * every)
        rows.append(row)
        if y is not None and y[i] is not None:
            label = bundle.classes[int(y[i])] if not isinstance(y[i], str) else y[i]
            confirmed.append(C.row(row["id"], label, None, "reader", C.Source.IMPORT, confirm_at or row["created_at"]))
    store.add(store_results(), rows)
    store.add_confirmations(confirmed)
    return [r["id"] for r in rows]


def store_results():
    from model.store.schema import results

    return results
