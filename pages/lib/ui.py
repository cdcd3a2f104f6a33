"""What the pages share for drawing: the UI strings (`tr`), numbers in the reader's language, and the dataset-folder
input. No models and no cached bundles here (those are in pages/lib/common.py); nothing writes to disk."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import streamlit as st

from model.core.types import Result
from model.outputs import formatting

ASSETS = Path(__file__).resolve().parents[2] / "assets"
LANGUAGES = {"en": "English", "es": "Español"}
UPLOAD_TYPES = ["png", "jpg", "jpeg", "tif", "tiff", "bmp", "webp", "gif", "dcm", "dicom"]


def lang() -> str:
    """The UI language: the session's choice; at a session's start the URL's `?lang=` (so a reload keeps the
    reader's choice), else the browser's preferred language, else English."""
    if st.session_state.get("lang") not in LANGUAGES:
        asked = st.query_params.get("lang")
        browser = (st.context.locale or "").split("-")[0].lower()
        st.session_state["lang"] = asked if asked in LANGUAGES else browser if browser in LANGUAGES else "en"
    return st.session_state["lang"]


@st.cache_data(show_spinner=False)
def _strings(page: str) -> dict:
    return json.loads((ASSETS / "strings" / f"{page}.json").read_text(encoding="utf-8"))


class Translator:
    """One page's strings file (`assets/strings/<page>.json`) in the current language: `t("title", n=3)`. A key
    missing in the language falls back to English, then to `default`, then to the key itself, so a missing
    translation never breaks a page."""

    def __init__(self, page: str):
        self.strings = _strings(page)
        self.lang = lang()

    def __call__(self, key: str, default: str | None = None, **kwargs) -> str:
        text = self.strings.get(self.lang, {}).get(key) or self.strings.get("en", {}).get(key)
        if not text:
            return key if default is None else default
        return text.format(**kwargs) if kwargs else text

    def name(self, prefix: str, value) -> str:
        """The display name of a value (`op_screening`, `class_PNEUMONIA`, `split_val`...), or the value itself."""
        return self(f"{prefix}_{value}", default=str(value))

    def class_label(self, name: str) -> str:
        return self.name("class", name)

    def message(self, item: dict) -> str:
        """A decoder or guard {"code", "message"} in the UI language: by its code where the page has a string for
        it, else the (English, more specific) message itself."""
        return self(f"msg_{item.get('code')}", default=item["message"])

    def localised(self, result: Result) -> Result:
        """The result with its warnings and error in the UI language (for the table and the printable report)."""
        return replace(result, warnings=[{**w, "message": self.message(w)} for w in result.warnings],
                       error=result.error and {**result.error, "message": self.message(result.error)})


def tr(page: str) -> Translator:
    return Translator(page)


def fmt_int(x) -> str:
    """An integer with the current language's thousands separator."""
    return formatting.fmt_int(x, lang())


def data_dir_input(t: Translator, key: str) -> str:
    """The dataset folder text input, shared by the Dataset and Evaluation pages under session key "data_dir"
    (`key` is this page's own widget key). Returns the folder."""
    from model.outputs.data_folder import default_data_dir

    st.session_state.setdefault("data_dir", default_data_dir())
    st.session_state[key] = st.session_state["data_dir"]
    st.text_input(t("data_dir"), key=key, help=t("data_dir_help"),
                  on_change=lambda: st.session_state.update(data_dir=st.session_state[key].strip()))
    return st.session_state["data_dir"]


def show_outcome(key: str) -> None:
    """Show, once, the (kind, text, lines) that a button's callback left in session state under `key`: a success or
    an error, and any lines (e.g. per-fold problems) as a block."""
    message = st.session_state.pop(key, None)
    if message:
        kind, text, lines = message
        (st.success if kind == "ok" else st.error)(text)
        if lines:
            st.code("\n".join(lines), language=None)
