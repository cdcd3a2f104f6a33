"""Find, verify and load model bundles (`model/bundles/<name>/manifest.json` + member `.keras` files).

Every member's sha256 is checked before Keras sees the file, and models are loaded with `safe_mode=True`
(no Lambda layers or arbitrary code). A bundle that fails any check is refused whole, with a message that says
which file; the other bundles still load.

Provenance (docs/SECURITY.md): member paths must stay inside their bundle folder (relative, no `..`, no symlink
that leads out). Where `$TORAX_TRUSTED_KEYS` names Ed25519 public keys (PEM files, separated by the OS path
separator or commas), a bundle loads only when `manifest.sig` is a valid signature of its exact `manifest.json`
bytes by one of them, so the member checksums can't be edited along with the members. The manifest's `reports`
lists the sha256 of every file in `reports/` (what the app's pages draw); each is checked at load and again when
read, and with keys set a report the manifest doesn't list is not shown. Messages name the bundle and
a code, never a server path. The default bundle fails closed: when it is refused or missing, nothing answers in its
place unless the operator names another (`--bundle`, `$TORAX_DEFAULT_BUNDLE`).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from model.core.types import Task

BUNDLES_DIR = Path(__file__).parent.parent / "bundles"


def bundles_dir() -> Path:
    """Where bundles live: $TORAX_BUNDLES if set (tests point it at temporary folders), else model/bundles."""
    return Path(os.environ.get("TORAX_BUNDLES") or BUNDLES_DIR)


DEFAULT_BUNDLE = "pneumonia-kermany"
SIGNATURE_FILE = "manifest.sig"

log = logging.getLogger(__name__)

_loaded: dict[str, object] = {}  # member sha256 → its keras.Model, loaded once per process (load_bundle)
_loaded_lock = threading.Lock()


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


class UnsafePath(BundleError):
    code = "unsafe_path"


class UnsignedBundle(BundleError):
    code = "unsigned_bundle"


class BadSignature(BundleError):
    code = "bad_signature"


class TrustedKeysUnreadable(BundleError):
    code = "trusted_keys_unreadable"


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
    def bias(self) -> float | tuple[float, ...]:
        """Platt bias (binary), or one bias per class (multiclass vector scaling)."""
        bias = self.info.get("bias", 0.0)
        return tuple(float(b) for b in bias) if isinstance(bias, list) else float(bias)

    @property
    def cam_layer(self) -> str:
        return self.info["cam_layer"]


@dataclass
class Bundle:
    path: Path
    manifest: dict
    members: list[Member] = field(default_factory=list)
    signed: bool = False  # its signature was checked ($TORAX_TRUSTED_KEYS): only reports it lists are shown

    name = property(lambda self: self.manifest["name"])
    title = property(lambda self: self.manifest.get("title", self.manifest["name"]))
    task = property(lambda self: Task(self.manifest["task"]))
    classes = property(lambda self: list(self.manifest["classes"]))
    input_spec = property(lambda self: self.manifest["input"])
    operating_points = property(lambda self: self.manifest.get("operating_points", []))
    members_loaded = property(lambda self: all(m.model is not None for m in self.members))  # see load_members

    def operating_point(self, name: str | None = None) -> dict:
        name = name or self.manifest.get("default_operating_point")
        for point in self.operating_points:
            if point["name"] == name:
                return point
        known = ", ".join(p["name"] for p in self.operating_points) or "none"
        raise KeyError(f"Bundle {self.name} has no operating point {name!r} (it has: {known}).")

    def read_report(self, name: str) -> dict | None:
        """A bundle report (`reports/<name>.json`), or None when the bundle has none (or none that can be shown:
        see report_bytes)."""
        data = self.report_bytes(f"{name}.json")
        return json.loads(data) if data is not None else None

    def report_bytes(self, filename: str) -> bytes | None:
        """The bytes of `reports/<filename>` when they may be shown: they match the sha256 the manifest lists, or
        the manifest lists none for it and the bundle is not signed. Else None (logged)."""
        listed = self.manifest.get("reports") or {}
        if "/" in filename or "\\" in filename or filename.startswith("."):
            return None
        path = self.path / "reports" / filename
        if filename not in listed:
            if self.signed and path.exists():
                log.warning("bundle %s: reports/%s is not covered by its signature: not shown", self.name,
                            filename)
                return None
            return path.read_bytes() if path.is_file() else None
        try:
            data = path.read_bytes()
        except OSError:
            return None
        if hashlib.sha256(data).hexdigest() != listed[filename]:
            log.warning("bundle %s: reports/%s does not match its recorded checksum: not shown", self.name, filename)
            return None
        return data

    @cached_property
    def version(self) -> str:
        return self.manifest.get("version") or self.manifest.get("training", {}).get("created", "unknown")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def trusted_keys() -> list | None:
    """The Ed25519 public keys named by $TORAX_TRUSTED_KEYS, or None when it is unset (unsigned bundles load).
    Raises TrustedKeysUnreadable when it is set but a key can't be read: then no bundle loads (fail closed)."""
    value = os.environ.get("TORAX_TRUSTED_KEYS", "").strip()
    if not value:
        return None
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    keys = []
    for i, item in enumerate(p for p in value.replace(",", os.pathsep).split(os.pathsep) if p.strip()):
        try:
            key = load_pem_public_key(Path(item.strip()).read_bytes())
        except (OSError, ValueError, TypeError):
            key = None
        if not isinstance(key, Ed25519PublicKey):
            log.error("trusted key %d in TORAX_TRUSTED_KEYS is not a readable Ed25519 PEM public key", i + 1)
            raise TrustedKeysUnreadable(f"Trusted key {i + 1} in TORAX_TRUSTED_KEYS is not a readable Ed25519 "
                                        "public key, so no bundle is trusted (code trusted_keys_unreadable).")
        keys.append(key)
    return keys


def check_signature(path: Path, raw: bytes, keys: list) -> None:
    """Refuse the bundle unless `manifest.sig` (raw 64-byte Ed25519 signature, or its base64) signs `raw`."""
    sig_file = path / SIGNATURE_FILE
    if not sig_file.is_file():
        raise UnsignedBundle(f"Model bundle '{path.name}' was refused: it is not signed, and this server only "
                             "loads bundles signed by a trusted key (code unsigned_bundle).")
    if not signature_valid(raw, sig_file.read_bytes(), keys):
        raise BadSignature(f"Model bundle '{path.name}' was refused: its signature does not match its manifest or "
                           "no trusted key made it (code bad_signature).")


def signature_valid(raw: bytes, signature: bytes | str, keys: list) -> bool:
    """Whether `signature` (raw 64-byte Ed25519, or its base64) signs `raw` by one of `keys`."""
    from cryptography.exceptions import InvalidSignature

    if isinstance(signature, str):
        signature = signature.encode("ascii", "replace")
    if len(signature) != 64:
        import base64
        import binascii

        try:
            signature = base64.b64decode(signature.strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
    for key in keys:
        try:
            key.verify(signature, raw)
            return True
        except (InvalidSignature, ValueError):
            continue
    return False


def read_manifest(path: Path) -> dict:
    try:
        raw = (path / "manifest.json").read_bytes()
    except FileNotFoundError:
        raise InvalidManifest(f"Model bundle '{path.name}' has no manifest.json.") from None
    except OSError:
        raise InvalidManifest(f"Model bundle '{path.name}' has an unreadable manifest.json.") from None
    keys = trusted_keys()
    if keys is not None:
        check_signature(path, raw, keys)
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InvalidManifest(f"Model bundle '{path.name}' has an unreadable manifest.json "
                              f"(line {getattr(e, 'lineno', '?')}).") from None
    if not isinstance(manifest, dict):
        raise InvalidManifest(f"Model bundle '{path.name}' has an incomplete manifest (not an object).")
    missing = [k for k in ("name", "task", "classes", "input", "members") if k not in manifest]
    if missing or manifest.get("task") not in {t.value for t in Task} or not manifest.get("members"):
        raise InvalidManifest(f"Model bundle '{path.name}' has an incomplete manifest "
                              f"(missing or invalid: {', '.join(missing) or 'task/members'}).")
    return manifest


def verify(path: Path, manifest: dict) -> list[Member]:
    """Check that every member file lies inside the bundle folder, exists and matches its recorded sha256."""
    members = []
    for info in manifest["members"]:
        file = member_path(path, manifest, info)
        if not file.is_file():
            raise MissingMember(f"Model bundle '{manifest['name']}' is missing its member file {info['file']}.")
        if sha256_file(file) != info.get("sha256"):
            raise ChecksumMismatch(f"Model bundle '{manifest['name']}' was refused: {info['file']} does not match "
                                   "its recorded checksum (the file was changed or damaged).")
        members.append(Member(info["name"], file, info))
    return members


def verify_reports(path: Path, manifest: dict) -> None:
    """Check every report the manifest lists: a plain file name in reports/, there, and matching its sha256."""
    listed = manifest.get("reports") or {}
    if not isinstance(listed, dict):
        raise InvalidManifest(f"Model bundle '{manifest['name']}' has an invalid list of reports.")
    for filename, digest in listed.items():
        if not isinstance(filename, str) or "/" in filename or "\\" in filename or filename.startswith("."):
            raise UnsafePath(f"Model bundle '{manifest['name']}' was refused: a report path is not inside its "
                             "reports folder (code unsafe_path).")
        file = path / "reports" / filename
        if not file.is_file() or file.is_symlink():
            raise MissingMember(f"Model bundle '{manifest['name']}' is missing its report reports/{filename}.")
        if sha256_file(file) != digest:
            raise ChecksumMismatch(f"Model bundle '{manifest['name']}' was refused: reports/{filename} does not "
                                   "match its recorded checksum (the file was changed or damaged).")


def member_path(path: Path, manifest: dict, info) -> Path:
    """`info["file"]` resolved inside the bundle folder; UnsafePath when it is absolute, has `..`, or leads out
    of the folder (symlinks included)."""
    rel = info.get("file") if isinstance(info, dict) else None
    refused = UnsafePath(f"Model bundle '{manifest.get('name', path.name)}' was refused: a member file path is not "
                         "inside the bundle folder (code unsafe_path).")
    if not isinstance(rel, str) or not rel or "\\" in rel or "\x00" in rel:
        raise refused
    parts = Path(rel).parts
    if Path(rel).is_absolute() or rel.startswith(("/", "~")) or ".." in parts or (parts and ":" in parts[0]):
        raise refused
    root = path.resolve()
    file = (path / rel).resolve()
    if not file.is_relative_to(root) or file == root:
        raise refused
    return file


def load_bundle(path: str | Path, models: bool = True) -> Bundle:
    """Verify and load one bundle. Raises a BundleError with a human message on any problem. With `models=False`
    everything is verified (manifest, signature, member and report sha256s) but the Keras members are not loaded
    and TensorFlow is not imported: what needs only the bundle's identity, points and reports (the record's
    commands) starts in a moment.

    Every call verifies every file again. A member whose just-verified sha256 this process has loaded before reuses
    that model (the bytes are the same), so loading a bundle again (each command run in one process, the API, a page
    going back to a bundle) costs the checksums only, and the compiled functions built on the model are kept
    (Ensemble, Explainer)."""
    path = Path(path)
    manifest = read_manifest(path)  # checks the signature when TORAX_TRUSTED_KEYS is set
    members = verify(path, manifest)
    verify_reports(path, manifest)
    bundle = Bundle(path, manifest, members, signed=bool(os.environ.get("TORAX_TRUSTED_KEYS", "").strip()))
    return load_members(bundle, recheck=False) if models else bundle  # just verified


def load_members(bundle: Bundle, recheck: bool = True) -> Bundle:
    """Load the Keras members of a bundle that `load_bundle(..., models=False)` verified, in place, and return it
    (members already loaded are kept). With `recheck`, every member file is checked against its sha256 again just
    before it is read, so a file changed since the bundle was verified is refused, not loaded. Raises a BundleError
    with a human message, as load_bundle does. The app verifies its bundles when it starts and loads members only
    for the pages that predict: the others open without importing TensorFlow."""
    if bundle.members_loaded:
        return bundle
    import keras

    if recheck:
        verify(bundle.path, bundle.manifest)  # the bytes about to be read are the ones the manifest names
    for member in bundle.members:
        digest = member.info["sha256"]  # verify() compared it with the file
        with _loaded_lock:
            member.model = _loaded.get(digest)
        if member.model is not None:
            continue
        try:
            member.model = keras.saving.load_model(member.path, compile=False, safe_mode=True)
        except ValueError as e:
            if "safe_mode" in str(e) or "lambda" in str(e).lower():
                raise UnsafeModel(f"Model bundle '{bundle.name}' was refused: {member.path.name} contains code "
                                  "that is not allowed to run (a Lambda layer).") from None
            log.warning("bundle %s member %s: %s", bundle.name, member.name, type(e).__name__)
            raise BundleError(f"Model bundle '{bundle.name}': {member.path.name} could not be loaded "
                              "(code bundle_error).") from None
        except Exception as e:  # noqa: BLE001 - keras raises many types for a corrupt archive
            # Keras messages quote absolute paths: only the type goes to the log, nothing to the user.
            log.warning("bundle %s member %s: %s", bundle.name, member.name, type(e).__name__)
            raise BundleError(f"Model bundle '{bundle.name}': {member.path.name} could not be loaded "
                              "(code bundle_error).") from None
        with _loaded_lock:
            member.model = _loaded.setdefault(digest, member.model)
    return bundle


def discover(root: str | Path | None = None) -> list[Path]:
    return sorted(p.parent for p in Path(root or bundles_dir()).glob("*/manifest.json"))


def load_all(root: str | Path | None = None, models: bool = True) -> tuple[dict[str, Bundle], dict[str, str]]:
    """Load every bundle under `root` (`models`: see load_bundle). Returns ({name: Bundle}, {folder name: error
    message})."""
    bundles, errors = {}, {}
    for path in discover(root):
        try:
            bundle = load_bundle(path, models)
        except BundleError as e:
            errors[path.name] = e.message
            continue
        if bundle.name != path.name or bundle.name in bundles:
            # A manifest may not take another bundle's name (e.g. stand in for a refused default).
            errors[path.name] = (f"Model bundle '{path.name}' was refused: its manifest names it "
                                 f"'{bundle.name}' (code name_mismatch).")
            continue
        bundles[bundle.name] = bundle
    return bundles, errors


def configured_default() -> str:
    """The bundle used when a request names none: $TORAX_DEFAULT_BUNDLE, else DEFAULT_BUNDLE."""
    return os.environ.get("TORAX_DEFAULT_BUNDLE", "").strip() or DEFAULT_BUNDLE


def default_bundle_name(names) -> str | None:
    """The configured default bundle when it loaded, else None: never another bundle in its place (fail closed)."""
    wanted = configured_default()
    return wanted if wanted in list(names) else None


class NoBundle(Exception):
    """No bundle to answer with: the one named is not usable, or the default was refused or is missing."""


def load_chosen(name: str | None = None, warn=None, models: bool = True) -> tuple[dict[str, Bundle], Bundle]:
    """Every usable bundle and the one to answer with: `name`, else the default. Fails closed: when the default
    is refused or missing, no other bundle is chosen in its place (NoBundle says why). `warn` hears each refusal.
    `models`: see load_bundle."""
    bundles, errors = load_all(models=models)
    for message in errors.values():
        if warn:
            warn(message)
    if not name:
        problem = default_problem(bundles, errors)
        if problem:
            raise NoBundle(problem)
    name = name or default_bundle_name(bundles)
    if name not in bundles:
        raise NoBundle(f"no usable model bundle named {name!r} (available: {', '.join(bundles) or 'none'})")
    return bundles, bundles[name]


def default_problem(names, refused: dict[str, str]) -> str | None:
    """Why there is no default bundle (None when there is one), naming the bundle and the reason."""
    wanted = configured_default()
    if wanted in list(names):
        return None
    if wanted in refused:
        return (f"The default model bundle '{wanted}' was refused, and no other bundle answers in its place: "
                f"{refused[wanted]} Name a bundle explicitly (--bundle, TORAX_DEFAULT_BUNDLE) to use another.")
    return (f"The default model bundle '{wanted}' is not installed, and no other bundle answers in its place. "
            "Name a bundle explicitly (--bundle, TORAX_DEFAULT_BUNDLE) to use another.")
