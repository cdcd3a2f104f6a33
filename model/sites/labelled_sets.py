"""Labelled sets for site checks: class folders, a CSV with `path,label`, uploaded files plus a CSV, or a ZIP of
either, read safely (no path escape, no ZIP bomb) into items with their class. Used by `model.sites.profiles`.

Never imports training/ or Streamlit; reads only what it is given.
"""
from __future__ import annotations

import csv
import io
import re
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

MAX_ZIP_BYTES = 512 << 20   # uncompressed bytes an uploaded ZIP may expand to
MAX_ZIP_MEMBERS = 10_000
MAX_ZIP_RATIO = 1000        # uncompressed / compressed size of one member; above it looks like a ZIP bomb
IGNORED_NAMES = {"thumbs.db", "desktop.ini"}
KERMANY_PERSON = re.compile(r"^(person\d+)_(bacteria|virus)_\d+", re.IGNORECASE)
"""Kermany's public release names pneumonia files person<patient>_<bacteria|virus>_<n>.jpeg (training reads the
patient and subtype from it too)."""
SUBTYPE_CLASSES = {"bacteria": "BACTERIAL", "virus": "VIRAL"}


class SiteError(Exception):
    """A labelled set or a site profile that cannot be used; `message` says why in words a reader can act on."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


# ---------------------------------------------------------------------------------------------------------------
# Labelled sets: class folders, a CSV with path,label, or a ZIP of either
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class Item:
    name: str      # path inside the set, as the reader sees it
    label: str     # one of the bundle's classes
    read: object   # () -> bytes


@dataclass
class LabelledSet:
    items: list[Item]
    classes: list[str]
    source: str
    skipped: list[dict] = field(default_factory=list)  # named but not usable: {"file", "code", "message"}
    keep: object = None  # whatever must stay open while items are read (a ZipFile)

    @property
    def per_class(self) -> dict[str, int]:
        counts = Counter(i.label for i in self.items)
        return {c: counts.get(c, 0) for c in self.classes}


def _hidden(parts) -> bool:
    return any(p.startswith(".") or p == "__MACOSX" for p in parts) or parts[-1].lower() in IGNORED_NAMES


def _class_lookup(classes) -> dict[str, str]:
    return {c.casefold(): c for c in classes}


def _expected(classes) -> str:
    return ", ".join(classes)


def _check_classes(items: list[Item], classes, source: str):
    if not items:
        raise SiteError("no_images", f"No images were found in {source}: put them in folders named after the "
                                     f"classes ({_expected(classes)}), or list them in a CSV with path,label columns.")
    present = sorted({i.label for i in items})
    if len(present) < 2:
        raise SiteError("one_class", f"All {len(items)} images in {source} are labelled {present[0]}. A site check "
                                     f"needs images of every class ({_expected(classes)}): sensitivity is measured "
                                     "on the positive images and specificity on the negative ones.")


def _subtype_class(folder: str, name: str, classes) -> str | None:
    """For a bundle whose classes include BACTERIAL and VIRAL: a file in a PNEUMONIA folder, as Kermany's public
    layout has them, gets its class from its name (person12_bacteria_34.jpeg → BACTERIAL); "" when the name says
    neither; None for any other folder or bundle."""
    if folder.casefold() != "pneumonia" or not set(SUBTYPE_CLASSES.values()) <= set(classes):
        return None
    m = KERMANY_PERSON.match(PurePosixPath(name).stem)
    return SUBTYPE_CLASSES[m.group(2).lower()] if m else ""


def _from_class_folders(entries: dict, classes, source: str) -> LabelledSet:
    """entries: {posix relative path: reader}. Files directly at the top (README.md, manifest.csv) are ignored;
    one wrapping folder (a ZIP of "sample/NORMAL/...") is looked through. For a normal / bacterial / viral bundle,
    Kermany's NORMAL/ and PNEUMONIA/ folders are read too, the type taken from each pneumonia file's name."""
    lookup = _class_lookup(classes)
    paths = {p: PurePosixPath(p).parts for p in entries if not _hidden(PurePosixPath(p).parts)}
    for _ in range(2):
        tops = {parts[0] for parts in paths.values() if len(parts) > 1}
        if len(tops) == 1 and next(iter(tops)).casefold() not in lookup:
            paths = {p: parts[1:] for p, parts in paths.items() if len(parts) > 1}
    items, unknown, skipped = [], set(), []
    for path, parts in sorted(paths.items()):
        if len(parts) < 2:
            continue
        label = lookup.get(parts[0].casefold())
        subtype = _subtype_class(parts[0], parts[-1], classes) if label is None else None
        if subtype == "":
            skipped.append({"file": path, "code": "unknown_subtype",
                            "message": "In a PNEUMONIA folder, but its name does not say bacteria or virus "
                                       "(person<N>_bacteria_<K> or person<N>_virus_<K>, as in Kermany's release)."})
        elif label or subtype:
            items.append(Item(path, label or subtype, entries[path]))
        else:
            unknown.add(parts[0])
    if unknown:
        raise SiteError("unknown_class", f"Unknown class folder(s) in {source}: {', '.join(sorted(unknown))}. This "
                                         f"bundle's classes are {_expected(classes)} (folder names are not "
                                         "case-sensitive).")
    _check_classes(items, classes, source)
    return LabelledSet(items, list(classes), source, skipped)


def _from_csv(text: str, resolve, classes, source: str) -> LabelledSet:
    """Rows of path,label; `resolve(path)` gives (name, reader) or None when the file is not there."""
    rows = list(csv.DictReader(io.StringIO(text)))
    header = {(k or "").strip().lower(): k for k in (rows[0].keys() if rows else [])}
    if "path" not in header or "label" not in header:
        raise SiteError("bad_csv", f"The CSV needs 'path' and 'label' columns (it has: "
                                   f"{', '.join(h for h in header if h) or 'none'}).")
    lookup = _class_lookup(classes)
    items, skipped, unknown = [], [], set()
    for row in rows:
        path, raw = (row[header["path"]] or "").strip(), (row[header["label"]] or "").strip()
        if not path:
            continue
        label = lookup.get(raw.casefold())
        if label is None:
            unknown.add(raw or "(empty)")
            continue
        found = resolve(path)
        if found is None:
            skipped.append({"file": path, "code": "missing_file", "message": "The CSV lists this file, but it is "
                                                                              "not there."})
        else:
            items.append(Item(found[0], label, found[1]))
    if unknown:
        raise SiteError("unknown_class", f"Unknown label(s) in the CSV: {', '.join(sorted(unknown))}. This bundle's "
                                         f"classes are {_expected(classes)} (not case-sensitive).")
    _check_classes(items, classes, source)
    return LabelledSet(items, list(classes), source, skipped)


def _file_reader(path: Path):
    return lambda: path.read_bytes()


def labelled_from_path(path: str | Path, classes) -> LabelledSet:
    """A folder of class-named subfolders, or a CSV file with path,label columns (paths relative to the CSV)."""
    path = Path(path)
    if path.is_dir():
        entries = {p.relative_to(path).as_posix(): _file_reader(p) for p in sorted(path.rglob("*")) if p.is_file()}
        return _from_class_folders(entries, classes, f"'{path.name}'")
    if path.is_file() and path.suffix.lower() == ".csv":
        def resolve(name):
            file = Path(name) if Path(name).is_absolute() else path.parent / name
            return (name, _file_reader(file)) if file.is_file() else None
        return _from_csv(path.read_text(encoding="utf-8-sig"), resolve, classes, f"'{path.name}'")
    if path.is_file() and zipfile.is_zipfile(path):
        return labelled_from_zip(path.read_bytes(), classes, source=f"'{path.name}'")
    raise SiteError("not_found", f"{path} is neither a folder of class folders, a CSV with path,label columns, nor "
                                 "a ZIP.")


def labelled_from_zip(data: bytes, classes, max_bytes: int = MAX_ZIP_BYTES, max_members: int = MAX_ZIP_MEMBERS,
                      source: str = "the ZIP") -> LabelledSet:
    """A ZIP of class folders (or of images plus a CSV). Refused whole, before anything is read, when an entry
    would land outside the archive (absolute, `..`, a drive letter, a symlink) or when it would expand past
    `max_bytes` / `max_members` or by more than MAX_ZIP_RATIO in one member."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        infos = archive.infolist()
    except (zipfile.BadZipFile, ValueError, OSError):
        raise SiteError("bad_zip", "This is not a ZIP file that can be opened.") from None
    if len(infos) > max_members:
        raise SiteError("zip_too_large", f"Refused: the ZIP holds {len(infos):,} entries; at most {max_members:,} "
                                         "are accepted.")
    total = sum(i.file_size for i in infos)
    if total > max_bytes:
        raise SiteError("zip_too_large", f"Refused: the ZIP would expand to {total / 2**20:,.0f} MiB; at most "
                                         f"{max_bytes / 2**20:,.0f} MiB are accepted.")
    entries, csvs = {}, []
    for info in infos:
        name = info.filename
        parts = PurePosixPath(name).parts
        if (name.startswith(("/", "\\")) or "\\" in name or ".." in parts or re.match(r"^[A-Za-z]:", name)
                or (info.external_attr >> 16) & 0o170000 == 0o120000):
            raise SiteError("unsafe_zip", f"Refused: the ZIP entry {name!r} points outside the archive (absolute "
                                          "path, '..', drive letter or link). Nothing was extracted.")
        if info.file_size > MAX_ZIP_RATIO * max(info.compress_size, 1) and info.file_size > 1 << 20:
            ratio = info.file_size // max(info.compress_size, 1)
            raise SiteError("zip_bomb", f"Refused: the ZIP entry {name!r} expands {ratio:,} times; this looks like "
                                        "a ZIP bomb.")
        if info.is_dir() or _hidden(parts):
            continue
        entries[name] = (lambda i=info: _read_member(archive, i))
        if name.lower().endswith(".csv") and len(parts) == 1:
            csvs.append(name)
    lookup = _class_lookup(classes)
    has_class_folders = any(len(PurePosixPath(p).parts) > 1 and any(q.casefold() in lookup for q in
                                                                    PurePosixPath(p).parts[:-1]) for p in entries)
    if csvs and not has_class_folders:
        text = entries.pop(csvs[0])().decode("utf-8-sig", errors="replace")
        labelled = _from_csv(text, _name_resolver(entries), classes, source)
    else:
        labelled = _from_class_folders(entries, classes, source)
    labelled.keep = archive
    return labelled


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    with archive.open(info) as f:
        data = f.read(info.file_size + 1)
    if len(data) > info.file_size:  # the header lied about the size
        raise SiteError("zip_bomb", f"Refused: the ZIP entry {info.filename!r} is larger than it says.")
    return data


def _name_resolver(entries: dict):
    """Find a CSV's path among named files: exactly, else by file name alone when that is unique."""
    by_base: dict[str, list[str]] = {}
    for name in entries:
        by_base.setdefault(PurePosixPath(name).name, []).append(name)

    def resolve(path):
        path = path.replace("\\", "/")
        if path in entries:
            return path, entries[path]
        found = by_base.get(PurePosixPath(path).name, [])
        return (found[0], entries[found[0]]) if len(found) == 1 else None
    return resolve


def labelled_from_uploads(files, csv_data: bytes, classes) -> LabelledSet:
    """Many uploaded files [(name, bytes)] plus a CSV (path,label) naming them; files the CSV does not list are
    skipped and counted."""
    entries = {name: (lambda d=data: d) for name, data in files}
    labelled = _from_csv(csv_data.decode("utf-8-sig", errors="replace"), _name_resolver(entries), classes,
                         "the uploaded files")
    listed = {i.name for i in labelled.items}
    labelled.skipped += [{"file": n, "code": "not_in_csv", "message": "The CSV does not list this file."}
                         for n in entries if n not in listed]
    return labelled
