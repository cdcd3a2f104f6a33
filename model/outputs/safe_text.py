"""Untrusted text (uploaded file names, values read from a file, request paths) made safe for where it goes:
Streamlit Markdown, spreadsheet cells, log lines. docs/SECURITY.md says where each is used."""
from __future__ import annotations

import re

_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()<>#|~:$=&\"'^%@!])")
_MD_LINE_START = re.compile(r"^(\s*)(?:([-+])|(\d+)([.)]))")
_AUTOLINK = re.compile(r"(www)(\\\.)|(\\:)(//)|(\\@)", re.IGNORECASE)
_ZWSP = "\u200b"


def md_escape(text: object) -> str:
    """`text` as literal Markdown: the characters Markdown, GitHub-flavoured Markdown or Streamlit's directives
    (`:color[...]`, `:material/icon:`, `$math$`) act on are backslash-escaped (a leading list marker too), GFM's
    bare autolinks (www., scheme://, a@b) are broken by a zero-width space, control characters and line breaks
    become spaces. A file named `[Session expired](https:evil.example).jpeg` or `![x](https:host).jpeg` is
    shown as those characters: no link, no image fetched."""
    flat = "".join(" " if ord(c) < 0x20 or ord(c) == 0x7F or c in "\u2028\u2029" else c for c in str(text))
    text = _MD_SPECIAL.sub(r"\\\1", flat)
    text = re.sub(r"(www)\.", r"\1\\.", text, flags=re.IGNORECASE)
    # GFM links www.host, scheme://host and a@b.c even in plain text: a zero-width space breaks each pattern.
    text = _AUTOLINK.sub(lambda m: _ZWSP.join(g for g in m.groups() if g) + (_ZWSP if m.group(5) else ""), text)
    return _MD_LINE_START.sub(  # no list item or rule at the start
        lambda m: m.group(1) + ("\\" + m.group(2) if m.group(2) else m.group(3) + "\\" + m.group(4)), text)


FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
"""A cell starting with one of these is read as a formula by Excel, LibreOffice or Google Sheets (OWASP CSV
injection)."""


def csv_cell(value):
    """A spreadsheet-safe cell: text starting with a formula character gets a leading single quote (OWASP); other
    values are returned unchanged (numbers stay numbers)."""
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value


def csv_frame(frame):
    """A pandas DataFrame with every text cell (and column name) passed through csv_cell, for `to_csv`."""
    out = frame.copy()
    out.columns = [csv_cell(c) for c in out.columns]
    for column in out.columns:
        if out[column].dtype == object or str(out[column].dtype).startswith("str"):
            out[column] = out[column].map(csv_cell)
    return out


def csv_text(frame) -> str:
    """`frame` as CSV text for a spreadsheet: formula cells neutralised (csv_frame) and every text cell quoted, so
    that a carriage return inside a file name can't start a row of its own."""
    import csv

    return csv_frame(frame).to_csv(index=False, quoting=csv.QUOTE_NONNUMERIC)


def log_safe(text: object, limit: int = 200) -> str:
    """`text` with every control character escaped (a %0A in a request path can't start a forged log line),
    cut to `limit` characters."""
    out = []
    for ch in str(text)[:limit]:
        code = ord(ch)
        if code < 0x20 or code == 0x7F or 0x80 <= code < 0xA0 or ch in "\u2028\u2029":
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        elif ch == "\\":
            out.append("\\\\")
        else:
            out.append(ch)
    return "".join(out)
