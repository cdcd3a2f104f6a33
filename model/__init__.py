"""Tórax's model side: chest radiographs in, one `Result` per upload out.

    from model import Ensemble, analyse, load_chosen
    ensemble = Ensemble(load_chosen())
    result, _ = analyse(open("xray.dcm", "rb").read(), "xray.dcm", ensemble)
    print(result.label, result.probability, [w["code"] for w in result.warnings])

The packages show the architecture: `io/` (decode any upload) and `core/` (check, preprocess, ensemble, explain,
decide) are the pipeline; `channels/` are the ways in besides the pages (REST API, PACS, site commands, bench;
the CLI is `python -m model`); `outputs/` what a result becomes (reports, PDF, DICOM SR/SC); `sites/` a hospital's
own profiles. Never imports Streamlit or training/.

The names below load on first use, so `import model.io` (or `import model`) stays light: no TensorFlow until an
ensemble is built.
"""
from __future__ import annotations

import importlib

# name → module that defines it: the few names a newcomer needs.
_PUBLIC = {
    "analyse": "model.core.analysis",
    "analyse_batch": "model.core.analysis",
    "decide": "model.core.analysis",
    "default_threshold": "model.core.analysis",
    "Result": "model.core.types",
    "Task": "model.core.types",
    "CamMethod": "model.core.types",
    "WarningCode": "model.core.types",
    "Finding": "model.core.types",
    "load_chosen": "model.core.bundle",
    "load_all": "model.core.bundle",
    "Ensemble": "model.core.ensemble",
    "Explainer": "model.core.explain",
    "for_bundle": "model.core.guard",
    "decode": "model.io",
    "DecodeError": "model.io",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'model' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value  # looked up once
    return value


def __dir__():
    return sorted(set(globals()) | set(_PUBLIC))
