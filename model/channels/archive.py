"""Score a whole archive: `python -m model archive score SOURCE --out RESULTS.parquet`, on this machine or on a Ray
cluster, one Parquet row per input, resumable.

SOURCE is a folder tree (every file `model.io.decode` reads, DICOM included, found by extension or by its first bytes;
other files are skipped and counted), a CSV with a `path` column (relative paths are read from the CSV's folder), or a
DICOMweb root URL with `--since DATE` (the CR/DX instances of the studies from that date, fetched with `pacs watch`'s
client, options and password rules: model.channels.pacs).

Each input goes through the same steps as `python -m model predict`: read (and sha256), decode, the input check,
`to_model_input`, the ensemble (`Ensemble.predict_batch`), `model.core.analysis.with_prediction`, so the numbers are
predict's. Unattended, a finding is not filed for an image outside the bundle's intended population (the
`FilingPolicy` of `pacs watch`; `--allow-outside-population` files it). Two engines run the same two functions:
`prepare_batch` (read → preprocess; no models) and `Scorer` (a callable class: loads the bundle once, sha256-checked,
and turns a prepared batch into rows):

- `--engine local` (default): both in this process, batch by batch; Ray is never imported.
- `--engine ray`: Ray Data. A listing dataset → `map_batches(prepare_batch)` (tasks) → `map_batches(Scorer)` on an
  actor pool of `--workers` actors (ActorPoolStrategy), streamed back to this process, which writes the parts. Ray
  Data fuses the two stages into the actors' processes when their resources match (they do: one core per actor
  unless the cores are split otherwise); on a cluster each node reads and decodes what its actors score.

The output (decided here, see docs/ARCHITECTURE.md): RESULTS.parquet is the consolidated table; while a run is going,
each scored batch is written atomically (temporary file + rename) as RESULTS.parquet.parts/part-<run>-<n>.parquet;
at the end (also after Ctrl-C, SIGTERM, or a DICOMweb server that stops answering) the parts and the previous table
are merged into RESULTS.parquet (again atomically) and the parts removed. A row is one input's content: (source,
sha256). A second run reads every input, and scores only those whose (source, sha256) is not in the table or its
parts (a file changed in place is scored again and gets a row of its own; a file that could not be opened is tried
again and its error row replaced; one whose bytes are not an image keeps its error row: same bytes, same answer).
DICOMweb instances are known by their UIDs (an instance never changes), so what is done is not fetched again. An
interrupted run loses at most the batches in flight; nothing is written twice (consolidation also drops any repeated
(source, sha256)). RESULTS.parquet.progress.json says how far a run is (the
Worklist page reads it); RESULTS.parquet.lock keeps a second run off the same output.

Faults: an unreadable file (or one that vanished since the listing) is an error row; an output path that cannot be
written, or a disk without room for the estimated output, is refused before any scoring; a killed Ray actor is
restarted and its batch retried (Ray Data's max_restarts / max_task_retries); a DICOMweb server that stops
answering stops the job (exit 3) with what was written kept: the next run resumes.

Never logs or stores patient attributes: rows carry the path or the UIDs, numbers, warning and error codes.
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path

import numpy as np

from model.outputs.safe_text import log_safe

BATCH = 32                  # inputs per batch: one forward pass, one part file
ROW_BYTES = 2048            # generous size of one output row (measured: about 300 bytes compressed) for the disk check
PART_BYTES = 16 << 10       # a part file's own overhead (footer, schema)
DISK_MARGIN = 64 << 20      # what is left free after the estimate
REPO_ROOT = Path(__file__).resolve().parents[2]

EXIT_CODES = ("exit status: 0 done (unreadable inputs are error rows), 2 refused before scoring (options, output "
              "path, disk space, bundle, site profile, --record), 3 DICOMweb server not answering (what was written "
              "is kept; run again to resume), 4 DICOMweb user name or password refused, 5 other DICOMweb error, "
              "130 interrupted (what was written is kept)")

# The output table. `source`: the file's absolute path, or studies/<uid>/series/<uid>/instances/<uid> for DICOMweb.
COLUMNS = {
    "source": "string", "study_instance_uid": "string", "series_instance_uid": "string",
    "sop_instance_uid": "string", "sha256": "string", "size_bytes": "int64",
    "bundle": "string", "bundle_version": "string", "site": "string",
    "probability_raw": "float64",   # the ensemble's calibrated probability as shipped (predict without --site)
    "probability": "float64",       # what the label is decided on: site-calibrated with --site, else = raw
    "probabilities": "string",      # JSON {class: probability}, as decided on (every task)
    "spread": "float64", "threshold": "float64", "operating_point": "string",
    "label": "string",              # multilabel bundles: a JSON list
    "finding": "string",            # present / absent / not_assessed; null for an error row
    "warnings": "list<string>",     # WarningCode values
    "error_code": "string", "error_message": "string",
    "run_id": "string", "scored_at": "string",
}
TIMINGS = ("read_s", "decode_s", "check_s", "preprocess_s", "model_s")
LISTING = ("source", "path", "study_instance_uid", "series_instance_uid", "sop_instance_uid")


class ArchiveError(Exception):
    """A reason to stop, fit to show as one line; `exit_code` as in EXIT_CODES."""

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.message, self.exit_code = message, exit_code


class RecordUnavailable(ArchiveError):
    """--record asked for the result store, which this installation does not have."""


def schema():
    import pyarrow as pa

    types = {"string": pa.string(), "int64": pa.int64(), "float64": pa.float64(), "list<string>": pa.list_(pa.string())}
    return pa.schema([(name, types[kind]) for name, kind in COLUMNS.items()])


def new_run_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + os.urandom(3).hex()


# ---------------------------------------------------------------------------------------------------------------------
# Sources: what to score
# ---------------------------------------------------------------------------------------------------------------------
@dataclass
class Source:
    """What SOURCE lists: `items` are dicts with the LISTING keys (`path` for files; the three UIDs for DICOMweb);
    `skipped`: files in a folder that are not images; `pacs`: the DICOMweb client, for fetching."""
    kind: str  # "folder" | "csv" | "dicomweb"
    where: str
    items: list[dict]
    skipped: int = 0
    pacs: object = None


def _item(source: str, path: str = "", study: str = "", series: str = "", sop: str = "") -> dict:
    return {"source": source, "path": path, "study_instance_uid": study, "series_instance_uid": series,
            "sop_instance_uid": sop}


def is_image_file(path: Path) -> bool:
    """Whether `decode` would try this file: its extension names a format it reads, or its first bytes do (DICOM
    files often have no extension)."""
    from model.io.sniff import extension_hint, looks_like_bare_dicom, sniff

    if extension_hint(path.name):
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return sniff(head) is not None or looks_like_bare_dicom(head)


def list_folder(root: Path) -> Source:
    """Every image under `root` (recursively, hidden files and folders left out, symlinked folders not followed),
    in path order."""
    items, skipped = [], 0
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            path = Path(folder) / name
            if not name.startswith(".") and is_image_file(path):
                items.append(_item(str(path.resolve()), str(path.resolve())))
            else:
                skipped += 1
    return Source("folder", str(root), items, skipped)


def list_csv(csv_path: Path) -> Source:
    """The files a CSV's `path` column names (relative paths from the CSV's folder), each once."""
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            columns = [c.strip().lower() for c in reader.fieldnames or []]
            if "path" not in columns:
                raise ArchiveError(f"{log_safe(str(csv_path))} has no 'path' column (its columns: "
                                   f"{', '.join(log_safe(c) for c in columns) or 'none'}).")
            column = (reader.fieldnames or [])[columns.index("path")]
            cells = [(row.get(column) or "").strip() for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        reason = getattr(e, "strerror", None) or e
        raise ArchiveError(f"{log_safe(str(csv_path))} could not be read as a CSV ({reason}).") from None
    items, seen = [], set()
    for cell in cells:
        if not cell:
            continue
        path = Path(cell).expanduser()
        path = (path if path.is_absolute() else csv_path.parent / path).resolve()
        if str(path) not in seen:
            seen.add(str(path))
            items.append(_item(str(path), str(path)))
    return Source("csv", str(csv_path), items)


def dicom_date(text: str) -> str:
    """YYYY-MM-DD or YYYYMMDD as a DICOM date (YYYYMMDD); ValueError otherwise."""
    for pattern in ("%Y-%m-%d", "%Y%m%d"):
        try:
            return datetime.strptime(text.strip(), pattern).strftime("%Y%m%d")
        except ValueError:
            continue
    raise ValueError(f"--since {text!r} is not a date (YYYY-MM-DD)")


def list_dicomweb(pacs, since: str) -> Source:
    """The CR/DX instances of the studies dated `since` (a DICOM date) or later, study by study, as QIDO-RS lists
    them. Raises model.channels.pacs.PacsError when the server can't be asked."""
    from model.channels.pacs import MODALITIES, _value

    items, seen = [], set()
    for study in pacs.search(pacs.client.search_for_studies, search_filters={"StudyDate": f"{since}-"}):
        study_uid = _value(study, "0020000D")
        if not study_uid:
            continue
        for series in pacs.search(pacs.client.search_for_series, study_uid):
            series_uid, modality = _value(series, "0020000E"), _value(series, "00080060")
            if not series_uid or (modality is not None and modality not in MODALITIES):
                continue
            for instance in pacs.search(pacs.client.search_for_instances, study_uid, series_uid):
                sop_uid = _value(instance, "00080018")
                key = f"studies/{study_uid}/series/{series_uid}/instances/{sop_uid}"
                if sop_uid and key not in seen:
                    seen.add(key)
                    items.append(_item(key, "", study_uid, series_uid, sop_uid))
    return Source("dicomweb", pacs.where(), items, pacs=pacs)


# ---------------------------------------------------------------------------------------------------------------------
# What is already done
# ---------------------------------------------------------------------------------------------------------------------
def row_key(source: str, sha256: str) -> bytes:
    return hashlib.blake2b(f"{source}\0{sha256}".encode(), digest_size=16).digest()


class Done:
    """The (source, sha256) pairs the output already holds, as a sorted array of 16-byte keys: small enough to ship
    to every Ray worker (16 MB for a million rows) and tested a batch at a time."""

    def __init__(self, pairs=()):
        keys = sorted({row_key(s, h) for s, h in pairs})
        self.keys = np.array(keys, dtype="S16") if keys else np.zeros(0, dtype="S16")

    def __len__(self) -> int:
        return len(self.keys)

    def contains(self, sources, sha256s) -> np.ndarray:
        """Per input, whether its (source, sha256) is done (False where sha256 is None)."""
        out = np.zeros(len(sources), dtype=bool)
        if not len(self.keys):
            return out
        wanted = [i for i, h in enumerate(sha256s) if h]
        if wanted:
            query = np.array([row_key(sources[i], sha256s[i]) for i in wanted], dtype="S16")
            at = np.minimum(np.searchsorted(self.keys, query), len(self.keys) - 1)
            out[wanted] = self.keys[at] == query
        return out


# ---------------------------------------------------------------------------------------------------------------------
# Stage 1: read, hash, decode, check, preprocess (no models; a Ray task)
# ---------------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BundleFacts:
    """What the first stage needs from the bundle, without its models: name, task, input size, and the manifest
    the input check reads its population from."""
    manifest: dict

    @classmethod
    def of(cls, bundle) -> BundleFacts:
        return cls(bundle.manifest)

    def bundle(self):
        from model.core.bundle import Bundle

        return Bundle(Path("."), self.manifest)


def prepare_batch(batch: dict, facts: BundleFacts, done: Done | None = None, pacs=None) -> dict:
    """A batch of listed inputs (LISTING columns) → the same rows with `sha256`, `size_bytes`, `state` ("new",
    "done": already in the output, "error", or "stop"), the read result as JSON (`result`: warnings and error, or
    the stop's reason) and the model input's bytes (`input`), plus the time each step took. A file that can't be
    read (or vanished) and an instance the PACS won't give become "error" rows; a PACS that is down or refuses us
    makes that input and the rest of the batch "stop" rows: the driver writes the others and stops the run (an
    exception would reach it wrapped by Ray)."""
    from model.core.analysis import failed, read
    from model.core.guard import for_bundle
    from model.core.preprocess import to_model_input

    bundle = facts.bundle()
    guard = for_bundle(bundle)
    n = len(batch["source"])
    out = {k: np.asarray(batch[k], dtype=object) for k in LISTING}
    sha = np.full(n, None, dtype=object)
    size = np.full(n, -1, dtype=np.int64)
    state = np.full(n, "new", dtype=object)
    result_json = np.full(n, None, dtype=object)
    inputs = np.full(n, b"", dtype=object)
    times = {k: np.zeros(n) for k in TIMINGS}
    datas: list[bytes | None] = [None] * n
    stop = None
    for i in range(n):
        if stop is not None:  # the server is gone: the rest of the batch is not tried
            result_json[i], state[i] = stop, "stop"
            continue
        start = time.perf_counter()
        try:
            datas[i] = _fetch(out, i, pacs)
        except OSError as e:  # vanished since the listing, unreadable, a folder: an error row
            error = failed(None, bundle, "unreadable_file", f"Could not read this file ({e.strerror or 'I/O error'}).")
            result_json[i], state[i] = _result_json(error), "error"
        except Exception as e:  # noqa: BLE001 - an error row, a stop, or raised on
            if _instance_refused(e):
                error = failed(None, bundle, "unreadable_instance", str(e))
                result_json[i], state[i] = _result_json(error), "error"
            else:
                stop, state[i] = _stop_json(e), "stop"  # handed to the driver as data: Ray would wrap an exception
                result_json[i] = stop
        if datas[i] is not None:
            sha[i], size[i] = hashlib.sha256(datas[i]).hexdigest(), len(datas[i])
        times["read_s"][i] = time.perf_counter() - start
    if done is not None:
        state[done.contains(list(out["source"]), list(sha))] = "done"
    spec = bundle.input_spec
    for i in range(n):
        if state[i] != "new":
            continue
        name = Path(out["path"][i]).name if out["path"][i] else "instance.dcm"
        start = time.perf_counter()
        result, decoded = read(datas[i], name, bundle, guard=None)  # decode only: the check is timed apart
        times["decode_s"][i] = time.perf_counter() - start
        if decoded is not None:
            start = time.perf_counter()
            result.warnings = list(result.warnings) + guard(decoded)  # as read(..., guard) does
            times["check_s"][i] = time.perf_counter() - start
            start = time.perf_counter()
            inputs[i] = np.ascontiguousarray(to_model_input(decoded.pixels, spec), dtype=np.uint8).tobytes()
            times["preprocess_s"][i] = time.perf_counter() - start
        else:
            state[i] = "error"
        result_json[i] = _result_json(result)
        datas[i] = None
    return {**out, "sha256": sha, "size_bytes": size, "state": state, "result": result_json, "input": inputs,
            **times}


def _fetch(listing: dict, i: int, pacs) -> bytes:
    if listing["path"][i]:
        return Path(listing["path"][i]).read_bytes()
    return pacs.fetch(listing["study_instance_uid"][i], listing["series_instance_uid"][i],
                      listing["sop_instance_uid"][i])


def _instance_refused(error: Exception) -> bool:
    """Whether a fetch error concerns that one instance (too large, refused with a 4xx: an error row, the job goes
    on), rather than the server (not answering, password refused: the job stops)."""
    from model.channels.pacs import PacsAuthError, PacsError, PacsUnavailable

    return isinstance(error, PacsError) and not isinstance(error, (PacsUnavailable, PacsAuthError))


def _stop_json(error: Exception) -> str:
    """A reason to stop the whole run (the DICOMweb server down, or refusing us), as a "stop" row carries it to the
    driver; anything else is raised on."""
    stop = _as_stop(error)
    if not isinstance(stop, ArchiveError):
        raise error
    return json.dumps({"stop": {"message": stop.message, "exit_code": stop.exit_code}})


def _result_json(result) -> str:
    return json.dumps({"warnings": result.warnings, "error": result.error})


# ---------------------------------------------------------------------------------------------------------------------
# Stage 2: the scorer (a callable class: a Ray actor, or a plain object in this process)
# ---------------------------------------------------------------------------------------------------------------------
class Scorer:
    """Prepared batches (prepare_batch) → output rows. Loads its bundle once, on the first batch that has an image
    to score: verified like every load (sha256 of each member, signatures where $TORAX_TRUSTED_KEYS is set, passed
    in `trusted_keys` so a cluster's workers check as the driver does), and refused unless its manifest is the one
    the driver chose. A batch with nothing new never loads TensorFlow. `threads` caps TensorFlow's threads (one
    actor per core). Returns {"state", "row" (the row as JSON; "" for "done"; the reason for "stop"), timings}."""

    def __init__(self, facts: BundleFacts, bundles_root: str, site=None, allow_outside_population: bool = False,
                 trusted_keys: str | None = None, threads: int | None = None, bundle=None):
        self.facts, self.root, self.site = facts, Path(bundles_root), site
        self.allow_outside_population = allow_outside_population
        self.trusted_keys, self.threads = trusted_keys, threads
        self._bundle, self._ensemble = bundle, None
        self.light = facts.bundle()

    @cached_property
    def policy(self):
        """What an unattended channel may file (pacs watch's rule; imported on first use: it brings highdicom)."""
        from model.outputs.dicom_results import FilingPolicy

        return FilingPolicy(allow_outside_population=self.allow_outside_population)

    def ensemble(self):
        if self._ensemble is None:
            from model.core.ensemble import Ensemble

            bundle = self._bundle or self._load()
            if bundle.manifest != self.facts.manifest:
                raise ArchiveError(f"The bundle {bundle.name} a worker found is not the one this run chose (its "
                                   "manifest differs): every worker must have the same bundles.")
            self._ensemble = Ensemble(bundle)
        return self._ensemble

    def _load(self):
        from model.core.bundle import BundleError, load_bundle

        if self.threads:
            import tensorflow as tf

            with contextlib.suppress(RuntimeError):  # already initialised: keep what is set
                tf.config.threading.set_intra_op_parallelism_threads(self.threads)
                tf.config.threading.set_inter_op_parallelism_threads(self.threads)
        name = self.facts.manifest["name"]
        with _environment("TORAX_TRUSTED_KEYS", self.trusted_keys):
            try:
                return load_bundle(self.root / name)
            except BundleError as e:
                raise ArchiveError(e.message) from None

    def __call__(self, batch: dict) -> dict:
        from model.core.analysis import with_prediction
        from model.core.types import Result

        state = np.asarray(batch["state"], dtype=object)
        n = len(state)
        todo = [i for i in range(n) if state[i] == "new"]
        predictions, model_s = {}, np.zeros(n)
        if todo:
            try:
                ensemble = self.ensemble()
            except ArchiveError as e:  # e.g. another bundle on this worker: the run stops with the reason
                stop = json.dumps({"stop": {"message": e.message, "exit_code": e.exit_code}})
                rows = np.array([stop if s != "done" else "" for s in state], dtype=object)
                state[state != "done"] = "stop"
                return {"state": state, "row": rows, **{k: np.zeros(n) for k in TIMINGS}}
            spec = ensemble.spec
            shape = (spec["height"], spec["width"], spec.get("channels", 1))
            x = np.stack([np.frombuffer(batch["input"][i], dtype=np.uint8).reshape(shape) for i in todo])
            start = time.perf_counter()
            predictions = dict(zip(todo, ensemble.predict_batch(x)))
            model_s[todo] = (time.perf_counter() - start) / len(todo)
        rows = np.full(n, "", dtype=object)
        for i in range(n):
            if state[i] in ("done", "stop"):
                rows[i] = batch["result"][i] if state[i] == "stop" else ""
                continue
            read = json.loads(batch["result"][i])
            result = Result(None, self.light.name, self.light.task, warnings=read["warnings"], error=read["error"])
            raw = None
            if i in predictions:
                raw = predictions[i].probability
                result = with_prediction(result, predictions[i], self.light, site=self.site)
            rows[i] = json.dumps(_row(batch, i, self.policy.apply(result), raw, self.light))
        out = {"state": state, "row": rows, "model_s": model_s}
        out.update({k: np.asarray(batch[k], dtype=float) for k in TIMINGS if k != "model_s"})
        return out


def _row(batch: dict, i: int, result, raw_probability, bundle) -> dict:
    """One output row (COLUMNS, less run_id and scored_at, which the writer adds)."""
    def text(key):
        return str(batch[key][i]) if batch[key][i] else None

    label = result.label
    threshold = result.threshold
    return {
        "source": str(batch["source"][i]), "study_instance_uid": text("study_instance_uid"),
        "series_instance_uid": text("series_instance_uid"), "sop_instance_uid": text("sop_instance_uid"),
        "sha256": text("sha256"), "size_bytes": int(batch["size_bytes"][i]) if batch["size_bytes"][i] >= 0 else None,
        "bundle": bundle.name, "bundle_version": bundle.version, "site": result.site,
        "probability_raw": raw_probability, "probability": result.probability,
        "probabilities": json.dumps(result.probabilities) if result.probabilities is not None else None,
        "spread": result.spread, "threshold": float(threshold) if isinstance(threshold, (int, float)) else None,
        "operating_point": result.operating_point,
        "label": json.dumps(label) if isinstance(label, list) else label,
        "finding": None if result.failed else result.finding.value,
        "warnings": [w["code"] for w in result.warnings],
        "error_code": (result.error or {}).get("code"), "error_message": (result.error or {}).get("message"),
    }


@contextlib.contextmanager
def _environment(name: str, value: str | None):
    before = os.environ.get(name)
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


# ---------------------------------------------------------------------------------------------------------------------
# The output: the table, its parts, its progress
# ---------------------------------------------------------------------------------------------------------------------
def free_bytes(folder: Path) -> int:
    return shutil.disk_usage(folder).free


class Output:
    """RESULTS.parquet and what lives beside it while a run goes: RESULTS.parquet.parts/ (one file per scored batch,
    each written whole or not at all), RESULTS.parquet.progress.json and RESULTS.parquet.lock."""

    def __init__(self, path):
        self.path = Path(path).expanduser().absolute()
        self.parts = self.path.with_name(self.path.name + ".parts")
        self.progress_path = self.path.with_name(self.path.name + ".progress.json")
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self._progress: dict = {}

    def shown(self) -> str:
        return log_safe(str(self.path))

    def check_writable(self) -> None:
        """Refuse (ArchiveError) an output that can't be written, or an existing file that isn't a results table."""
        if self.path.is_dir():
            raise ArchiveError(f"--out {self.shown()} is a folder; name the .parquet file to write.")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.path.parent, prefix=".probe-"):
                pass
        except OSError as e:
            raise ArchiveError(f"--out {self.shown()} can't be written ({e.strerror or type(e).__name__}).") from None
        if self.path.exists():
            import pyarrow.parquet as pq

            try:
                names = set(pq.read_schema(self.path).names)
            except Exception:  # noqa: BLE001 - pyarrow raises several types for a file that isn't Parquet
                names = set()
            if not {"source", "sha256", "probability"} <= names:
                raise ArchiveError(f"--out {self.shown()} exists and is not an archive results table; choose "
                                   "another path (it is never overwritten).")

    def check_space(self, inputs: int, batch_size: int) -> None:
        """Refuse when the disk can't hold the estimated output twice over (parts, then the merged table) beside
        the current table, with DISK_MARGIN to spare."""
        estimate = inputs * ROW_BYTES + math.ceil(inputs / batch_size) * PART_BYTES
        current = self.path.stat().st_size if self.path.exists() else 0
        need = 2 * estimate + current + DISK_MARGIN
        free = free_bytes(self.path.parent)
        if free < need:
            raise ArchiveError(f"Not enough disk space for {self.shown()}: about {need / 2**20:,.0f} MiB is needed "
                               f"for {inputs:,} inputs, {free / 2**20:,.0f} MiB is free.")

    @contextlib.contextmanager
    def locked(self):
        import fcntl

        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)  # the lock file is the other run's: left alone
            raise ArchiveError(f"Another archive run is writing {self.shown()}; wait for it to end.") from None
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                self.lock_path.unlink()
            os.close(fd)

    def part_files(self) -> list[Path]:
        return sorted(self.parts.glob("part-*.parquet")) if self.parts.is_dir() else []

    def tables(self, columns: list[str] | None = None) -> list:
        """The current table and the parts left by an interrupted run (leftover temporary files removed), whole or
        only `columns`."""
        import pyarrow.parquet as pq

        for stale in self.parts.glob(".tmp-*") if self.parts.is_dir() else []:
            stale.unlink(missing_ok=True)
        files = ([self.path] if self.path.exists() else []) + self.part_files()
        if columns:
            return [pq.read_table(f, columns=columns) for f in files]
        return [pq.read_table(f).cast(schema()) for f in files]

    def done(self) -> tuple[Done, set[str], int]:
        """(Done pairs, sources that have a row with content, rows) already written."""
        pairs, sources, rows = [], set(), 0
        for table in self.tables(["source", "sha256"]):
            data = table.to_pydict()
            rows += table.num_rows
            for source, sha in zip(data["source"], data["sha256"]):
                if sha:
                    pairs.append((source, sha))
                    sources.add(source)
        return Done(pairs), sources, rows

    def write_part(self, rows: list[dict], name: str) -> Path:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pylist(rows, schema=schema())
        self.parts.mkdir(parents=True, exist_ok=True)
        final = self.parts / name
        _write_atomically(final, lambda tmp: pq.write_table(table, tmp))
        return final

    def consolidate(self) -> int:
        """Merge the table and its parts into RESULTS.parquet (one row per (source, sha256), the latest; an error row
        with no content dropped where the same source now has one), sorted by source; then remove the parts.
        Returns the rows in the table."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        tables = self.tables()
        parts = self.part_files()
        if not parts and self.path.exists():
            self._remove_parts()
            return tables[0].num_rows if tables else 0
        if not tables:
            self._remove_parts()
            return 0
        frame = pa.concat_tables(tables).to_pandas()
        frame = frame.drop_duplicates(["source", "sha256"], keep="last")
        with_content = set(frame.loc[frame["sha256"].notna(), "source"])
        frame = frame[frame["sha256"].notna() | ~frame["source"].isin(with_content)]
        frame = frame.sort_values(["source", "sha256"], na_position="first", kind="stable")
        merged = pa.Table.from_pandas(frame, schema=schema(), preserve_index=False)
        _write_atomically(self.path, lambda tmp: pq.write_table(merged, tmp))
        self._remove_parts()
        return merged.num_rows

    def _remove_parts(self) -> None:
        for part in self.part_files():
            part.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self.parts.rmdir()

    def progress(self, **fields) -> None:
        """Update RESULTS.parquet.progress.json (what the Worklist page shows), atomically."""
        self._progress.update(fields, updated_at=datetime.now(UTC).isoformat(timespec="seconds"))
        text = json.dumps(self._progress, indent=1)
        with contextlib.suppress(OSError):  # progress is a courtesy: never stops a run
            _write_atomically(self.progress_path, lambda tmp: Path(tmp).write_text(text))


def _write_atomically(path: Path, write) -> None:
    """write(temporary path) in the same folder, flushed to disk, then renamed over `path`."""
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_progress(out) -> dict | None:
    """The progress of the run writing (or that last wrote) `out`, or None."""
    try:
        return json.loads(Output(out).progress_path.read_text())
    except (OSError, ValueError):
        return None


# ---------------------------------------------------------------------------------------------------------------------
# --record: the rows go to the result store ("A department's memory": model.store)
# ---------------------------------------------------------------------------------------------------------------------
STORE_MISSING = ("--record needs the result store (model.store, \"A department's memory\"), which this installation "
                 "does not have; run without --record, or after installing a version with it.")


def record_available() -> None:
    """Raise RecordUnavailable (one line) unless the result store can be imported."""
    import importlib

    try:
        importlib.import_module("model.store.recorder")
    except ModuleNotFoundError as e:
        if not (e.name or "").startswith(("model.store", "sqlalchemy", "alembic")):
            raise
        raise RecordUnavailable(STORE_MISSING) from None


def record_rows(rows: list[dict], run_id: str) -> int:
    """Bulk-insert output rows into the result store, tagged with the archive run (spooled while the database is
    down). RecordUnavailable when there is no store."""
    record_available()
    from model.store.recorder import record_archive_rows
    return record_archive_rows(rows, run_id)


# ---------------------------------------------------------------------------------------------------------------------
# Engines: each yields the scorer's output batches
# ---------------------------------------------------------------------------------------------------------------------
def local_batches(items: list[dict], facts: BundleFacts, done: Done, pacs, scorer, batch_size: int):
    """In this process, batch by batch: prepare_batch, then the scorer. One worker thread prepares (reads, decodes,
    checks) the next batch while the scorer runs this one, as `analyse_batch` does for the worklist."""
    from model.core.analysis import one_ahead

    def prepare(start: int):
        chunk = items[start:start + batch_size]
        return prepare_batch({k: [item[k] for item in chunk] for k in LISTING}, facts, done, pacs)

    for batch in one_ahead(prepare, range(0, len(items), batch_size)):
        yield scorer(batch)


@dataclass
class RayOptions:
    address: str | None = None   # None: this process's Ray if one is running, else a local one on this machine's cores
    workers: int | None = None   # actors in the pool; default: one per CPU of the cluster
    gpus_per_worker: float = 0.0
    scorer_class: type = field(default=None)  # tests pass a subclass (e.g. one that dies once)


def ray_batches(items: list[dict], facts: BundleFacts, done: Done, pacs, scorer_kwargs: dict, batch_size: int,
                options: RayOptions, say=print):
    """Ray Data: listing → map_batches(prepare_batch) → map_batches(Scorer) on an actor pool → back here."""
    try:
        import ray
        import ray.data
    except ImportError:
        raise ArchiveError("--engine ray needs Ray: pip install -r requirements-scale.txt") from None
    import logging

    started = False
    if not ray.is_initialized():
        try:
            if options.address:
                ray.init(address=options.address, logging_level=logging.WARNING, log_to_driver=False)
            else:
                ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level=logging.WARNING,
                         log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise ArchiveError(f"Could not start or join Ray at {options.address or 'this machine'}: "
                               f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
        started = True
    try:
        logging.getLogger("ray.data").setLevel(logging.ERROR)  # our own progress lines replace its bars and notes
        warnings.filterwarnings("ignore", message="The minimum number of concurrent actors", category=UserWarning)
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        cpus = int(ray.cluster_resources().get("CPU", 0))
        workers = options.workers or max(1, cpus)
        if options.gpus_per_worker <= 0 and workers > cpus:
            raise ArchiveError(f"--workers {workers} is more than the {cpus} CPUs of the Ray cluster.")
        cpus_per_worker = max(1, cpus // workers) if options.gpus_per_worker <= 0 else 1
        say(f"Ray: {workers} worker(s), {cpus_per_worker} CPU(s) each, cluster of {cpus} CPUs")
        # Workers import `model` from the folder the driver started in; elsewhere on this machine they are told where
        # this checkout is (a cluster's nodes need it installed: the same image, see README "Scoring an archive").
        remote = {"num_cpus": cpus_per_worker}
        if not options.address and Path.cwd().resolve() != REPO_ROOT:
            path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)
            remote["runtime_env"] = {"env_vars": {"PYTHONPATH": path}}
        import pyarrow as pa

        listing = pa.table({k: [item[k] for item in items] for k in LISTING})
        blocks = min(max(min(len(items), workers), math.ceil(len(items) / batch_size)), 4096)
        ds = ray.data.from_arrow(listing, override_num_blocks=blocks)
        if pacs is not None:  # the workers make their own connections (the password goes with the job)
            pacs = dataclasses.replace(pacs, _client=None)
        ds = ds.map_batches(prepare_batch, batch_size=batch_size, batch_format="numpy",
                            fn_kwargs={"facts": facts, "done": done, "pacs": pacs}, **remote)
        ds = ds.map_batches(options.scorer_class or Scorer, batch_size=batch_size, batch_format="numpy",
                            compute=ray.data.ActorPoolStrategy(size=workers),
                            fn_constructor_kwargs={**scorer_kwargs, "threads": cpus_per_worker},
                            num_gpus=options.gpus_per_worker or None, **remote)
        yield from ds.iter_batches(batch_size=None, batch_format="numpy")
    finally:
        if started:
            ray.shutdown()


# ---------------------------------------------------------------------------------------------------------------------
# A run
# ---------------------------------------------------------------------------------------------------------------------
@dataclass
class Summary:
    run_id: str
    inputs: int = 0
    skipped_files: int = 0
    done_before: int = 0
    scored: int = 0
    errors: int = 0
    rows: int = 0
    seconds: float = 0.0
    first_batch_s: float | None = None
    first_batch_rows: int = 0
    times: dict = field(default_factory=lambda: dict.fromkeys(TIMINGS, 0.0))
    stopped: str | None = None

    @property
    def written(self) -> int:
        return self.scored + self.errors

    def rate(self) -> float:
        return self.written / self.seconds if self.seconds else 0.0

    def steady_rate(self) -> float:
        """Inputs per second after the first batch (without start-up: Ray, workers, models)."""
        span = self.seconds - (self.first_batch_s or 0.0)
        return (self.written - self.first_batch_rows) / span if span > 0 else 0.0

    def lines(self, out: Output) -> list[str]:
        lines = [f"archive run {self.run_id}: {self.inputs:,} inputs"
                 + (f" ({self.skipped_files:,} other files skipped: not images)" if self.skipped_files else "")
                 + f", {self.done_before:,} already done, {self.scored:,} scored, {self.errors:,} error rows → "
                 f"{out.shown()} ({self.rows:,} rows)"]
        if self.written:
            steady = ""
            if self.first_batch_s is not None and self.seconds > self.first_batch_s \
                    and self.written > self.first_batch_rows:
                steady = (f"; the first batch after {self.first_batch_s:.1f} s (start-up), then "
                          f"{self.steady_rate():.1f} inputs/s")
            lines.append(f"time: {self.seconds:.1f} s, {self.rate():.1f} inputs/s{steady}")
            per = {k: 1000 * v / max(1, self.written) for k, v in self.times.items()}
            lines.append("where the time goes (ms per input, summed over workers): "
                         + ", ".join(f"{k.removesuffix('_s')} {v:.1f}" for k, v in per.items()))
        return lines


def score(source: Source, out: Output, bundle, *, engine: str = "local", batch_size: int = BATCH, site=None,
          allow_outside_population: bool = False, record: bool = False, ray_options: RayOptions | None = None,
          run_id: str | None = None, say=None) -> Summary:
    """Score `source` into `out` with `bundle` (loaded, as load_chosen gives it). Call out.check_writable() first.
    Raises ArchiveError (refused, or stopped with what was written kept) and KeyboardInterrupt (after keeping what
    was written)."""
    say = say or (lambda line: print(line, file=sys.stderr, flush=True))
    summary = Summary(run_id or new_run_id(), inputs=len(source.items), skipped_files=source.skipped)
    out.check_space(len(source.items), batch_size)
    if record:
        record_available()
    with out.locked():
        done, sources_done, rows_before = out.done()
        items = source.items
        if source.kind == "dicomweb":  # an instance never changes: what has a row is not fetched again
            items = [item for item in items if item["source"] not in sources_done]
            summary.done_before = len(source.items) - len(items)
        facts = BundleFacts.of(bundle)
        out.progress(run_id=summary.run_id, state="running", source=source.where, out=str(out.path), pid=os.getpid(),
                     total=summary.inputs, skipped_files=summary.skipped_files, done_before=summary.done_before,
                     written=0, errors=0, started_at=datetime.now(UTC).isoformat(timespec="seconds"), message="")
        scorer_kwargs = {"facts": facts, "bundles_root": str(Path(bundle.path).parent), "site": site,
                         "allow_outside_population": allow_outside_population,
                         "trusted_keys": os.environ.get("TORAX_TRUSTED_KEYS") or None}
        if not items:
            batches = iter(())
        elif engine == "ray":
            batches = ray_batches(items, facts, done, source.pacs, scorer_kwargs, batch_size,
                                  ray_options or RayOptions(), say)
        else:
            batches = local_batches(items, facts, done, source.pacs, Scorer(**scorer_kwargs, bundle=bundle),
                                    batch_size)
        say(f"scoring {len(items):,} inputs from {log_safe(source.where)} with {bundle.name} ({engine} engine)"
            + (f"; {rows_before:,} rows already in {out.shown()}" if rows_before else ""))
        started = time.perf_counter()
        try:
            _consume(batches, out, summary, record, started, say)
        except KeyboardInterrupt:
            summary.stopped = "interrupted"
            raise
        except Exception as e:  # noqa: BLE001 - sorted into a stop with a message, or raised on
            summary.stopped = "failed"
            raise _as_stop(e) from None
        finally:
            with contextlib.suppress(Exception):
                batches.close()
            summary.seconds = time.perf_counter() - started
            summary.rows = out.consolidate()
            out.progress(state="done" if summary.stopped is None else "stopped", written=summary.written,
                         errors=summary.errors, done_before=summary.done_before, rows=summary.rows,
                         inputs_per_s=round(summary.rate(), 2), steady_inputs_per_s=round(summary.steady_rate(), 2),
                         message=summary.stopped or "")
        return summary


def _consume(batches, out: Output, summary: Summary, record: bool, started: float, say) -> None:
    last_said = time.perf_counter()
    for n, batch in enumerate(batches):
        states = list(batch["state"])
        summary.done_before += states.count("done")
        now = datetime.now(UTC).isoformat(timespec="seconds")
        rows = [{**json.loads(row), "run_id": summary.run_id, "scored_at": now}
                for state, row in zip(states, batch["row"]) if state not in ("done", "stop")]
        stops = [json.loads(row)["stop"] for state, row in zip(states, batch["row"]) if state == "stop"]
        for key in TIMINGS:
            summary.times[key] += float(np.sum(batch[key]))
        if rows:
            out.write_part(rows, f"part-{summary.run_id}-{n:06d}.parquet")
            if record:
                record_rows(rows, summary.run_id)
            summary.errors += sum(1 for r in rows if r["error_code"])
            summary.scored += sum(1 for r in rows if not r["error_code"])
            if summary.first_batch_s is None:
                summary.first_batch_s = time.perf_counter() - started
                summary.first_batch_rows = len(rows)
        out.progress(written=summary.written, errors=summary.errors, done_before=summary.done_before)
        if stops:  # what this batch did read is written above; the run stops here
            raise ArchiveError(stops[0]["message"], stops[0]["exit_code"])
        if time.perf_counter() - last_said > 10:
            last_said = time.perf_counter()
            say(f"{summary.written + summary.done_before:,} of {summary.inputs:,} inputs "
                f"({summary.done_before:,} already done)")


def _as_stop(error: Exception) -> Exception:
    """What a failed run says: an ArchiveError for the causes we know (a DICOMweb server down or refusing us, a
    worker's own ArchiveError), the error itself otherwise. Ray wraps a worker's exception; the chain is searched."""
    import requests

    from model.channels.pacs import PacsAuthError, PacsError, PacsUnavailable

    seen, todo = set(), [error]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, ArchiveError):
            return ArchiveError(e.message, e.exit_code)
        if isinstance(e, PacsAuthError):
            return ArchiveError(f"{e} The run stopped; what was written is kept.", 4)
        if isinstance(e, PacsUnavailable):
            return ArchiveError(f"{e} The run stopped; what was written is kept: run the same command again to "
                                "resume.", 3)
        if isinstance(e, PacsError):
            return ArchiveError(f"{e} The run stopped; what was written is kept.", 5)
        if isinstance(e, requests.RequestException):
            return ArchiveError("The DICOMweb server stopped answering in the middle of an instance "
                                f"({type(e).__name__}). The run stopped; what was written is kept: run the same "
                                "command again to resume.", 3)
        todo += [getattr(e, "cause", None), e.__cause__, e.__context__]
    return error


# ---------------------------------------------------------------------------------------------------------------------
# Command line: python -m model archive score
# ---------------------------------------------------------------------------------------------------------------------
def add_cli(sub) -> None:
    """Register `archive score` on the CLI's subparsers."""
    import argparse

    from model.__main__ import positive_int
    from model.channels import pacs

    archive = sub.add_parser("archive", help="score a whole archive into a Parquet table (docs in "
                                             "model/channels/archive.py)")
    verbs = archive.add_subparsers(dest="archive_command", required=True)
    s = verbs.add_parser("score", help="score a folder tree, a CSV of paths or a DICOMweb archive; resumable",
                         description=__doc__, epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("source", help="a folder, a CSV with a 'path' column, or a DICOMweb root URL (with --since)")
    s.add_argument("--out", required=True, help="the results table (.parquet); run again to resume")
    s.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="local: this process (default); ray: Ray Data on an actor pool")
    s.add_argument("--address", default=None, help="join this Ray cluster (auto, or ray://HOST:PORT); default: a "
                                                   "local Ray on this machine's cores (--engine ray)")
    s.add_argument("--workers", type=positive_int, default=None,
                   help="scoring actors (--engine ray; default: one per CPU of the cluster)")
    s.add_argument("--gpus-per-worker", type=float, default=0.0,
                   help="GPUs each actor asks for (--engine ray; e.g. 1 for one actor per GPU)")
    s.add_argument("--batch-size", type=positive_int, default=BATCH,
                   help=f"inputs per forward pass and per part file (default {BATCH})")
    s.add_argument("--bundle", default=None, help="bundle name (default: the default bundle)")
    s.add_argument("--site", default=None, help="apply this site profile (python -m model site fit)")
    s.add_argument("--record", action="store_true",
                   help="also write the rows into the result store, tagged with this run")
    s.add_argument("--since", default=None, help="DICOMweb source: studies from this date (YYYY-MM-DD)")
    s.add_argument("--allow-outside-population", action="store_true",
                   help="give the label even for an image outside the bundle's intended population (by default "
                        "such a row has no label: not assessed, with the warning)")
    pacs.add_connection_options(s)


def open_source(args) -> Source:
    """The source SOURCE names, listed. ArchiveError when it can't be."""
    from model.channels import pacs

    text = args.source
    if text.lower().startswith(("http://", "https://")):
        if not args.since:
            raise ArchiveError("A DICOMweb source needs --since DATE (the archive is the studies from that date).")
        try:
            since = dicom_date(args.since)
        except ValueError as e:
            raise ArchiveError(str(e)) from None
        problem = pacs.connection_problem(args, text, option="SOURCE")
        if problem:
            raise ArchiveError(problem)
        client = pacs.from_args(args, text)
        if client.insecure():
            raise ArchiveError(client.insecure())
        try:
            return list_dicomweb(client, since)
        except pacs.PacsError as e:
            raise _as_stop(e) from None
    if args.since:
        raise ArchiveError("--since is for a DICOMweb source only.")
    path = Path(text).expanduser()
    if path.is_dir():
        return list_folder(path)
    if path.is_file() and path.suffix.lower() == ".csv":
        return list_csv(path)
    if path.exists():
        raise ArchiveError(f"SOURCE {log_safe(text)} is neither a folder nor a .csv file.")
    raise ArchiveError(f"SOURCE {log_safe(text)}: no such folder or file.")


def cli(args) -> int:
    """`python -m model archive score`; see add_cli."""
    import signal

    def fail(code: int, message: str) -> int:
        print(f"error: {message}", file=sys.stderr)
        return code

    if args.engine == "local" and (args.workers or args.address or args.gpus_per_worker):
        return fail(2, "--workers, --address and --gpus-per-worker are for --engine ray.")
    if not math.isfinite(args.gpus_per_worker) or args.gpus_per_worker < 0:
        return fail(2, "--gpus-per-worker must be 0 or more.")
    out = Output(args.out)
    try:
        out.check_writable()
        if args.record:
            record_available()
        source = open_source(args)
    except ArchiveError as e:
        return fail(e.exit_code, e.message)
    from model.core.bundle import NoBundle, load_chosen

    try:
        _, bundle = load_chosen(args.bundle, warn=lambda m: print(f"warning: {m}", file=sys.stderr))
    except NoBundle as e:
        return fail(2, str(e))
    site = None
    if args.site:
        from model.sites.profiles import SiteError, load

        try:
            site = load(args.site, bundle)
        except SiteError as e:
            return fail(2, e.message)
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop cleanly on SIGTERM as on Ctrl-C
    try:
        summary = score(source, out, bundle, engine=args.engine, batch_size=args.batch_size, site=site,
                        allow_outside_population=args.allow_outside_population, record=args.record,
                        ray_options=RayOptions(args.address, args.workers, args.gpus_per_worker))
    except KeyboardInterrupt:
        print(f"stopped; what was written is kept in {out.shown()}: run the same command again to resume",
              file=sys.stderr)
        return 130
    except ArchiveError as e:
        return fail(e.exit_code, e.message)
    finally:
        signal.signal(signal.SIGTERM, previous)
    for line in summary.lines(out):
        print(line, flush=True)
    return 0
