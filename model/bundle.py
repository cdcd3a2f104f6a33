"""Find, verify and load model bundles (`model/bundles/<name>/manifest.json` + member `.keras` files).

Every member's sha256 is checked before Keras sees the file, and models are loaded with `safe_mode=True`
(no Lambda layers or arbitrary code). A bundle that fails any check is refused whole, with a message that says
which file; the other bundles still load.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

BUNDLES_DIR = Path(__file__).parent / "bundles"


def bundles_dir() -> Path:
    """Where bundles live: $TORAX_BUNDLES if set (tests point it at temporary folders), else model/bundles."""
    return Path(os.environ.get("TORAX_BUNDLES") or BUNDLES_DIR)
DEFAULT_BUNDLE = "pneumonia-kermany"
TASKS = ("binary", "multiclass", "multilabel")


class BundleError(Exception):
    code = "bundle_error"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class InvalidManifest(BundleError):
    code = "invalid_manifest"


class MissingMember(BundleError):
    code = "missing_member"


class ChecksumMismatch(BundleError):
    code = "checksum_mismatch"


class UnsafeModel(BundleError):
    code = "unsafe_model"


@dataclass
class Member:
    name: str
    path: Path
    info: dict
    model: object = None  # keras.Model once loaded

    @property
    def temperature(self) -> float:
        return float(self.info.get("temperature", 1.0))

    @property
    def bias(self) -> float:
        return float(self.info.get("bias", 0.0))

    @property
    def cam_layer(self) -> str:
        return self.info["cam_layer"]


@dataclass
class Bundle:
    path: Path
    manifest: dict
    members: list[Member] = field(default_factory=list)

    name = property(lambda self: self.manifest["name"])
    title = property(lambda self: self.manifest.get("title", self.manifest["name"]))
    task = property(lambda self: self.manifest["task"])
    classes = property(lambda self: list(self.manifest["classes"]))
    input_spec = property(lambda self: self.manifest["input"])
    operating_points = property(lambda self: self.manifest.get("operating_points", []))

    def operating_point(self, name: str | None = None) -> dict:
        name = name or self.manifest.get("default_operating_point")
        for point in self.operating_points:
            if point["name"] == name:
                return point
        known = ", ".join(p["name"] for p in self.operating_points) or "none"
        raise KeyError(f"Bundle {self.name} has no operating point {name!r} (it has: {known}).")

    def report(self, name: str) -> dict | None:
        """A bundle report (`reports/<name>.json`), or None when the bundle has none."""
        path = self.path / "reports" / f"{name}.json"
        return json.loads(path.read_text()) if path.exists() else None

    @cached_property
    def version(self) -> str:
        return self.manifest.get("version") or self.manifest.get("training", {}).get("created", "unknown")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_manifest(path: Path) -> dict:
    try:
        manifest = json.loads((path / "manifest.json").read_text())
    except FileNotFoundError:
        raise InvalidManifest(f"Model bundle '{path.name}' has no manifest.json.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InvalidManifest(f"Model bundle '{path.name}' has an unreadable manifest.json ({e}).") from None
    missing = [k for k in ("name", "task", "classes", "input", "members") if k not in manifest]
    if missing or manifest.get("task") not in TASKS or not manifest.get("members"):
        raise InvalidManifest(f"Model bundle '{path.name}' has an incomplete manifest "
                              f"(missing or invalid: {', '.join(missing) or 'task/members'}).")
    return manifest


def verify(path: Path, manifest: dict) -> list[Member]:
    """Check that every member file exists and matches its recorded sha256."""
    members = []
    for info in manifest["members"]:
        file = path / info["file"]
        if not file.is_file():
            raise MissingMember(f"Model bundle '{manifest['name']}' is missing its member file {info['file']}.")
        if sha256_file(file) != info.get("sha256"):
            raise ChecksumMismatch(f"Model bundle '{manifest['name']}' was refused: {info['file']} does not match "
                                   "its recorded checksum (the file was changed or damaged).")
        members.append(Member(info["name"], file, info))
    return members


def load_bundle(path: str | Path) -> Bundle:
    """Verify and load one bundle. Raises a BundleError with a human message on any problem."""
    import keras

    path = Path(path)
    manifest = read_manifest(path)
    bundle = Bundle(path, manifest, verify(path, manifest))
    for member in bundle.members:
        try:
            member.model = keras.saving.load_model(member.path, compile=False, safe_mode=True)
        except ValueError as e:
            if "safe_mode" in str(e) or "lambda" in str(e).lower():
                raise UnsafeModel(f"Model bundle '{bundle.name}' was refused: {member.path.name} contains code "
                                  "that is not allowed to run (a Lambda layer).") from None
            raise BundleError(f"Model bundle '{bundle.name}': {member.path.name} could not be loaded ({e}).") from None
        except Exception as e:  # noqa: BLE001 - keras raises many types for a corrupt archive
            raise BundleError(f"Model bundle '{bundle.name}': {member.path.name} could not be loaded ({e}).") from None
    return bundle


def discover(root: str | Path | None = None) -> list[Path]:
    return sorted(p.parent for p in Path(root or bundles_dir()).glob("*/manifest.json"))


def load_all(root: str | Path | None = None) -> tuple[dict[str, Bundle], dict[str, str]]:
    """Load every bundle under `root`. Returns ({name: Bundle}, {folder name: error message})."""
    bundles, errors = {}, {}
    for path in discover(root):
        try:
            bundle = load_bundle(path)
            bundles[bundle.name] = bundle
        except BundleError as e:
            errors[path.name] = e.message
    return bundles, errors


def default_bundle_name(names) -> str | None:
    names = list(names)
    return DEFAULT_BUNDLE if DEFAULT_BUNDLE in names else (names[0] if names else None)
