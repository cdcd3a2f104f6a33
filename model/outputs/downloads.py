"""What Tórax hands to people: the overlay PNG, the JSON and printable HTML reports of one `Result`, and the rows of
the worklist table and its CSV.

Pure functions over `model.core.types.Result` (no Streamlit, no disk). Reports carry no patient identifiers: of the
upload they keep only the decoder's non-identifying metadata, never the file's name.
"""
from __future__ import annotations

import base64
import html
import json
from datetime import UTC, datetime

import cv2
import numpy as np

from model.core.analysis import disagree
from model.core.types import NOT_ASSESSED, Result, plain

INTENDED_USE = {
    "en": "Decision support for trained readers of chest radiographs. Not a diagnosis: it must not be used alone "
          "to make clinical decisions. Always read the image yourself.",
    "es": "Apoyo a la decisión para lectores capacitados de radiografías de tórax. No es un diagnóstico: no debe "
          "usarse por sí solo para tomar decisiones clínicas. Lea siempre la imagen usted mismo.",
}


def worklist_rows(results: list[Result]) -> list[dict]:
    """One flat row per result (same order) for the worklist table and its CSV: the same fields the JSON carries
    (`decision`: the label, NOT_ASSESSED, or None for an unreadable file)."""
    rows = []
    for result in results:
        p = result.probability
        if p is None and result.probabilities:
            p = max(result.probabilities.values())
        decision = result.decision
        rows.append(plain({
            "file": result.file,
            "decision": ", ".join(decision) if isinstance(decision, list) else decision,
            "site": result.site,
            "probability": p,
            "spread": result.spread,
            "disagreement": None if result.failed else disagree(result),
            "warnings": "; ".join(w["message"] for w in result.warnings),
            "error": (result.error or {}).get("message", ""),
        }))
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
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def report_data(result: Result, bundle, generated: str | None = None, site=None) -> dict:
    """The report as a plain dict (what the JSON holds and the HTML shows), built from `Result.to_json()`. The file
    name is left out on purpose: names of clinical files often carry the patient's name. `site`: the site profile
    the result was decided with (its operating points are the ones named)."""
    points = site.operating_points if site is not None else bundle.operating_points
    point = next((p for p in points if p["name"] == result.operating_point), None)
    return plain({
        "product": "Tórax",
        "generated": generated or _now(),
        "intended_use": bundle.manifest.get("intended_use") or INTENDED_USE["en"],
        "model": {"bundle": bundle.name, "title": bundle.title, "version": bundle.version, "task": bundle.task,
                  "classes": bundle.classes, "site_profile": result.site},
        "result": {
            "decision": result.decision,
            "probability": result.probability,
            "probabilities": result.probabilities,
            "threshold": result.threshold,
            "operating_point": ({k: point[k] for k in ("name", "threshold", "thresholds", "val_sensitivity",
                                                       "val_specificity", "site_sensitivity", "site_specificity",
                                                       "chosen_on") if k in point}
                                if point else None),
            "members": result.members,
            "member_spread": result.spread,
            "members_disagree": disagree(result),
        },
        "warnings": [w["message"] for w in result.warnings],
        "error": result.error,
        "image": result.meta,
    })


def report_json(result: Result, bundle, generated: str | None = None, site=None) -> str:
    return json.dumps(report_data(result, bundle, generated, site), indent=2, ensure_ascii=False)


_HTML_LABELS = {
    "en": {"title": "Tórax report", "generated": "Generated", "model": "Model", "version": "version",
           "decision": "Decision", "probability": "Probability", "threshold": "Threshold",
           "operating_point": "Operating point", "custom": "custom", "val": "validation sensitivity {sens}, "
           "specificity {spec}", "members": "Ensemble members", "member": "Member", "spread": "Member spread",
           "disagree": "The ensemble members disagree on this image: read it with particular care.",
           "warnings": "Warnings", "image": "Image", "overlay": "Where the models looked (class activation map)",
           "intended_use": "Intended use", "error": "This file could not be analysed",
           "site": "Site profile", "no_site": "none (as shipped)", "not_assessed": "not assessed (not a chest X-ray)"},
    "es": {"title": "Informe de Tórax", "generated": "Generado", "model": "Modelo", "version": "versión",
           "decision": "Decisión", "probability": "Probabilidad", "threshold": "Umbral",
           "operating_point": "Punto de operación", "custom": "personalizado", "val": "sensibilidad en validación "
           "{sens}, especificidad {spec}", "members": "Miembros del conjunto", "member": "Miembro",
           "spread": "Dispersión entre miembros",
           "disagree": "Los miembros del conjunto no coinciden en esta imagen: léala con especial cuidado.",
           "warnings": "Avisos", "image": "Imagen", "overlay": "Dónde miraron los modelos (mapa de activación)",
           "intended_use": "Uso previsto", "error": "No se pudo analizar este archivo",
           "site": "Perfil de centro", "no_site": "ninguno (tal como se entrega)",
           "not_assessed": "no evaluada (no es una radiografía de tórax)"},
}


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, list):
        return ", ".join(_fmt(v) for v in value) or "—"
    if isinstance(value, dict):
        return ", ".join(f"{k} {_fmt(v)}" for k, v in value.items())
    return "—" if value is None else str(value)


def report_html(result: Result, bundle, overlay_png: bytes | None = None, lang: str = "en",
                generated: str | None = None, site=None) -> str:
    """A self-contained printable page (the overlay embedded as base64). Every value is HTML-escaped."""
    data = report_data(result, bundle, generated, site)
    L = _HTML_LABELS.get(lang, _HTML_LABELS["en"])
    e = lambda v: html.escape(_fmt(v))  # noqa: E731
    r, m = data["result"], data["model"]
    rows = []
    if data["error"]:
        rows.append(f"<p class='error'><b>{e(L['error'])}:</b> {e(data['error'].get('message'))}</p>")
    else:
        point = r["operating_point"]
        if point:
            validation = L["val"].format(sens=_fmt(point.get("val_sensitivity", point.get("site_sensitivity"))),
                                         spec=_fmt(point.get("val_specificity", point.get("site_specificity"))))
            point_text = f"{e(point['name'])} ({e(validation)})"
        else:
            point_text = e(L["custom"])
        prob = r["probability"] if r["probability"] is not None else r["probabilities"]
        rows.append("<table>"
                    f"<tr><th>{e(L['decision'])}</th><td class='decision'>"
                    f"{e(L['not_assessed'] if r['decision'] == NOT_ASSESSED else r['decision'])}</td></tr>"
                    f"<tr><th>{e(L['probability'])}</th><td>{e(prob)}</td></tr>"
                    + (f"<tr><th>{e(L['threshold'])}</th><td>{e(r['threshold'])}</td></tr>"
                       f"<tr><th>{e(L['operating_point'])}</th><td>{point_text}</td></tr>"
                       if r["threshold"] is not None else "")
                    + f"<tr><th>{e(L['site'])}</th><td>{e(m['site_profile'] or L['no_site'])}</td></tr>"
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
