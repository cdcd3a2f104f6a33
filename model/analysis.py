"""One upload in, one result out: the JSON object shared by the CLI, the REST API and the worklist.

    {"file", "bundle", "task", "probability", "probabilities", "members", "spread", "threshold",
     "operating_point", "label", "warnings", "error", "meta"}

Bad input becomes an `error` object with a code and a human message; it never raises.
"""
from __future__ import annotations

from model.io import DecodeError, decode


def resolve_threshold(bundle, threshold: float | None = None, operating_point: str | None = None):
    """(threshold, operating point name) for a bundle: an explicit number wins; else the named (or default)
    operating point. Multiclass bundles decide by the most probable class and have no threshold."""
    if bundle.task == "multiclass":
        return None, None
    if threshold is not None:
        if not 0.0 <= float(threshold) <= 1.0:
            raise ValueError("The threshold must be between 0 and 1.")
        return float(threshold), None
    if not bundle.operating_points:
        return 0.5, None
    point = bundle.operating_point(operating_point)
    return (point.get("thresholds") or point["threshold"]), point["name"]


def empty_result(name: str | None, bundle) -> dict:
    return {"file": name, "bundle": bundle.name, "task": bundle.task, "probability": None, "probabilities": None,
            "members": None, "spread": None, "threshold": None, "operating_point": None, "label": None,
            "warnings": [], "error": None, "meta": None}


def analyse(data: bytes, name: str | None, ensemble, threshold: float | None = None,
            operating_point: str | None = None, guard=None) -> tuple[dict, object | None]:
    """Decode, check and predict one file. Returns (result dict, Decoded or None)."""
    bundle = ensemble.bundle
    result = empty_result(name, bundle)
    try:
        decoded = decode(data, name)
    except DecodeError as e:
        result["error"] = {"code": e.code, "message": e.message}
        return result, None
    prediction = ensemble.predict(decoded.pixels)
    result.update(describe(prediction, bundle, threshold, operating_point))
    result["warnings"] = list(decoded.warnings) + (guard(decoded) if guard else [])
    result["meta"] = decoded.meta
    return result, decoded


def describe(prediction, bundle, threshold=None, operating_point=None) -> dict:
    """The prediction part of a result, at a threshold or operating point."""
    t, point = resolve_threshold(bundle, threshold, operating_point)
    return {"probability": prediction.probability, "probabilities": prediction.probabilities,
            "members": ({n: p[bundle.classes[-1]] for n, p in prediction.members.items()} if bundle.task == "binary"
                        else prediction.members),
            "spread": prediction.spread, "threshold": t, "operating_point": point, "label": prediction.label(t)}
