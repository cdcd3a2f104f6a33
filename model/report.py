"""What Tórax hands to people: a result re-decided at another threshold, a batch of results for the worklist, and
the downloads (overlay PNG, JSON and printable HTML reports).

Pure functions over the result dict of `model.analysis` (no Streamlit, no disk). Reports carry no patient
identifiers: of the upload they keep only the decoder's non-identifying metadata, never the file's name.
"""
from __future__ import annotations

import base64
import html
import json
from datetime import datetime, timezone

import cv2
import numpy as np

from model.analysis import describe, empty_result, resolve_threshold
from model.ensemble import Ensemble, Prediction
from model.io import DecodeError, decode
from model.preprocess import to_model_input

BATCH = 32  # images per forward pass in a batch: enough to keep the CPU busy, small enough for memory

INTENDED_USE = {
    "en": "Decision support for trained readers of chest radiographs. Not a diagnosis: it must not be used alone "
          "to make clinical decisions. Always read the image yourself.",
    "es": "Apoyo a la decisión para lectores capacitados de radiografías de tórax. No es un diagnóstico: no debe "
          "usarse por sí solo para tomar decisiones clínicas. Lea siempre la imagen usted mismo.",
}


# ---------------------------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------------------------
def point_at(bundle, threshold) -> dict | None:
    """The operating point whose threshold this is, if any (a slider left on a preset still names it)."""
    for point in bundle.operating_points:
        if "threshold" in point and threshold is not None and not isinstance(threshold, dict) \
                and abs(float(point["threshold"]) - float(threshold)) < 1e-9:
            return point
        if isinstance(threshold, dict) and point.get("thresholds") == threshold:
            return point
    return None


def decide(result: dict, bundle, threshold=None) -> dict:
    """The same result decided at `threshold` (binary: a number; multilabel: {class: number}; None: the bundle's
    default operating point). No inference runs: the stored probabilities are re-read."""
    if result.get("error") or result.get("probabilities") is None:
        return dict(result)
    if isinstance(threshold, dict):
        t = threshold
    elif threshold is None or bundle.task == "multiclass":
        t, _ = resolve_threshold(bundle)
    else:
        t, _ = resolve_threshold(bundle, threshold)
    prediction = Prediction(bundle.classes, bundle.task, result["probabilities"], {})
    point = point_at(bundle, t)
    return {**result, "threshold": t, "operating_point": point["name"] if point else None,
            "label": prediction.label(t)}


def disagree(result: dict) -> bool:
    return result.get("spread") is not None and result["spread"] >= Ensemble.DISAGREEMENT


def analyse_batch(files, ensemble, threshold=None, progress=None, batch: int = BATCH,
                  guard=None) -> list[dict]:
    """Results for many uploads [(name, bytes)], in order. Every file is decoded first (a bad file becomes an
    error result, never an exception), then the good ones go through the ensemble `batch` at a time.
    `progress(done, total)` is called after each decode and each forward pass; `guard(decoded)` adds its warnings
    as in `model.analysis.analyse`."""
    bundle = ensemble.bundle
    files = list(files)
    total = len(files) * 2
    results, inputs = [], []
    for i, (name, data) in enumerate(files):
        result = empty_result(name, bundle)
        try:
            decoded = decode(data, name)
        except DecodeError as e:
            result["error"] = {"code": e.code, "message": e.message}
        else:
            result["warnings"] = list(decoded.warnings) + (guard(decoded) if guard else [])
            result["meta"] = decoded.meta
            inputs.append((i, to_model_input(decoded.pixels, bundle.input_spec)))
        results.append(result)
        if progress:
            progress(i + 1, total)
    done = len(files) + (len(files) - len(inputs))
    for start in range(0, len(inputs), batch):
        chunk = inputs[start:start + batch]
        for (i, _), prediction in zip(chunk, ensemble.predict_batch(np.stack([x for _, x in chunk]))):
            results[i].update(describe(prediction, bundle, threshold))
        done += len(chunk)
        if progress:
            progress(done, total)
    return results


def worklist_rows(results: list[dict]) -> list[dict]:
    """One flat row per result (same order) for the worklist table and its CSV."""
    rows = []
    for r in results:
        p = r.get("probability")
        if p is None and r.get("probabilities"):
            p = max(r["probabilities"].values())
        label = r.get("label")
        rows.append({
            "file": r.get("file"),
            "decision": ", ".join(label) if isinstance(label, list) else label,
            "probability": p,
            "spread": r.get("spread"),
            "disagreement": disagree(r) if not r.get("error") else None,
            "warnings": "; ".join(w["message"] for w in r.get("warnings") or []),
            "error": (r.get("error") or {}).get("message", ""),
        })
    return rows


# ---------------------------------------------------------------------------------------------------------------
# Downloads
# ---------------------------------------------------------------------------------------------------------------
def png_bytes(rgb: np.ndarray) -> bytes:
    """An RGB (or grayscale) uint8 image as PNG bytes, made in memory."""
    image = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR) if rgb.ndim == 3 else rgb
    ok, buffer = cv2.imencode(".png", image)
    if not ok:
        raise ValueError("could not encode the image as PNG")
    return buffer.tobytes()


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def report_data(result: dict, bundle, generated: str | None = None) -> dict:
    """The report as a plain dict (what the JSON holds and the HTML shows). The file name is left out on purpose:
    names of clinical files often carry the patient's name."""
    point = next((p for p in bundle.operating_points if p["name"] == result.get("operating_point")), None)
    return {
        "product": "Tórax",
        "generated": generated or _now(),
        "intended_use": bundle.manifest.get("intended_use") or INTENDED_USE["en"],
        "model": {"bundle": bundle.name, "title": bundle.title, "version": bundle.version, "task": bundle.task,
                  "classes": bundle.classes},
        "result": {
            "decision": result.get("label"),
            "probability": result.get("probability"),
            "probabilities": result.get("probabilities"),
            "threshold": result.get("threshold"),
            "operating_point": ({k: point[k] for k in ("name", "threshold", "thresholds", "val_sensitivity",
                                                       "val_specificity", "chosen_on") if k in point}
                                if point else None),
            "members": result.get("members"),
            "member_spread": result.get("spread"),
            "members_disagree": disagree(result),
        },
        "warnings": [w["message"] for w in result.get("warnings") or []],
        "error": result.get("error"),
        "image": result.get("meta"),
    }


def _plain(value):
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def report_json(result: dict, bundle, generated: str | None = None) -> str:
    return json.dumps(_plain(report_data(result, bundle, generated)), indent=2, ensure_ascii=False)


_HTML_LABELS = {
    "en": {"title": "Tórax report", "generated": "Generated", "model": "Model", "version": "version",
           "decision": "Decision", "probability": "Probability", "threshold": "Threshold",
           "operating_point": "Operating point", "custom": "custom", "val": "validation sensitivity {sens}, "
           "specificity {spec}", "members": "Ensemble members", "member": "Member", "spread": "Member spread",
           "disagree": "The ensemble members disagree on this image: read it with particular care.",
           "warnings": "Warnings", "image": "Image", "overlay": "Where the models looked (class activation map)",
           "intended_use": "Intended use", "error": "This file could not be analysed"},
    "es": {"title": "Informe de Tórax", "generated": "Generado", "model": "Modelo", "version": "versión",
           "decision": "Decisión", "probability": "Probabilidad", "threshold": "Umbral",
           "operating_point": "Punto de operación", "custom": "personalizado", "val": "sensibilidad en validación "
           "{sens}, especificidad {spec}", "members": "Miembros del conjunto", "member": "Miembro",
           "spread": "Dispersión entre miembros",
           "disagree": "Los miembros del conjunto no coinciden en esta imagen: léala con especial cuidado.",
           "warnings": "Avisos", "image": "Imagen", "overlay": "Dónde miraron los modelos (mapa de activación)",
           "intended_use": "Uso previsto", "error": "No se pudo analizar este archivo"},
}


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, list):
        return ", ".join(_fmt(v) for v in value) or "—"
    if isinstance(value, dict):
        return ", ".join(f"{k} {_fmt(v)}" for k, v in value.items())
    return "—" if value is None else str(value)


def report_html(result: dict, bundle, overlay_png: bytes | None = None, lang: str = "en",
                generated: str | None = None) -> str:
    """A self-contained printable page (the overlay embedded as base64). Every value is HTML-escaped."""
    data = report_data(result, bundle, generated)
    L = _HTML_LABELS.get(lang, _HTML_LABELS["en"])
    e = lambda v: html.escape(_fmt(v))  # noqa: E731
    r, m = data["result"], data["model"]
    rows = []
    if data["error"]:
        rows.append(f"<p class='error'><b>{e(L['error'])}:</b> {e(data['error'].get('message'))}</p>")
    else:
        point = r["operating_point"]
        if point:
            validation = L["val"].format(sens=_fmt(point.get("val_sensitivity")),
                                         spec=_fmt(point.get("val_specificity")))
            point_text = f"{e(point['name'])} ({e(validation)})"
        else:
            point_text = e(L["custom"])
        prob = r["probability"] if r["probability"] is not None else r["probabilities"]
        rows.append("<table>"
                    f"<tr><th>{e(L['decision'])}</th><td class='decision'>{e(r['decision'])}</td></tr>"
                    f"<tr><th>{e(L['probability'])}</th><td>{e(prob)}</td></tr>"
                    + (f"<tr><th>{e(L['threshold'])}</th><td>{e(r['threshold'])}</td></tr>"
                       f"<tr><th>{e(L['operating_point'])}</th><td>{point_text}</td></tr>"
                       if r["threshold"] is not None else "")
                    + f"<tr><th>{e(L['spread'])}</th><td>{e(r['member_spread'])}</td></tr></table>")
        if r["members_disagree"]:
            rows.append(f"<p class='warn'>{e(L['disagree'])}</p>")
        members = "".join(f"<tr><td>{e(name)}</td><td>{e(p)}</td></tr>" for name, p in (r["members"] or {}).items())
        rows.append(f"<h2>{e(L['members'])}</h2><table><tr><th>{e(L['member'])}</th>"
                    f"<th>{e(L['probability'])}</th></tr>{members}</table>")
    if data["warnings"]:
        items = "".join(f"<li>{e(w)}</li>" for w in data["warnings"])
        rows.append(f"<h2>{e(L['warnings'])}</h2><ul class='warn'>{items}</ul>")
    if data["image"]:
        items = "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in data["image"].items())
        rows.append(f"<h2>{e(L['image'])}</h2><table>{items}</table>")
    if overlay_png:
        b64 = base64.b64encode(overlay_png).decode("ascii")
        rows.append(f"<h2>{e(L['overlay'])}</h2><img alt='{e(L['overlay'])}' src='data:image/png;base64,{b64}'>")
    intended = data["intended_use"] if lang == "en" or bundle.manifest.get("intended_use") else INTENDED_USE.get(
        lang, data["intended_use"])
    return f"""<!doctype html>
<html lang="{e(lang)}"><head><meta charset="utf-8"><title>{e(L['title'])}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 52rem; margin: 2rem auto; color: #111; line-height: 1.4; }}
table {{ border-collapse: collapse; margin: .5rem 0 1rem; }}
th, td {{ text-align: left; padding: .25rem .9rem .25rem 0; border-bottom: 1px solid #ddd; vertical-align: top; }}
.decision {{ font-weight: 700; font-size: 1.3rem; }}
.warn {{ color: #8a4b00; }} .error {{ color: #a00; }}
img {{ max-width: 100%; height: auto; border: 1px solid #ccc; }}
.use {{ border: 1px solid #999; padding: .6rem .8rem; margin: 1rem 0 1.5rem; font-size: .9rem; }}
@media print {{ body {{ margin: 0; }} }}
</style></head><body>
<h1>{e(L['title'])}</h1>
<p>{e(L['generated'])}: {e(data['generated'])} · {e(L['model'])}: {e(m['title'])}
({e(m['bundle'])}, {e(L['version'])} {e(m['version'])})</p>
<p class="use"><b>{e(L['intended_use'])}:</b> {e(intended)}</p>
{''.join(rows)}
</body></html>
"""
