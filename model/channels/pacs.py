"""A round trip with a PACS over DICOMweb: find new CR/DX instances (QIDO-RS), fetch them (WADO-RS), analyse them as
`python -m model predict` does, and store the SR and the Grad-CAM Secondary Capture back into the same study
(STOW-RS). Used by `python -m model pacs watch` and by the Diagnose page's "Send result to PACS".

Configuration: the DICOMweb root URL (e.g. http://127.0.0.1:8042/dicom-web) and a user name come from the command
line or TORAX_PACS_URL / TORAX_PACS_USER; the password only ever from TORAX_PACS_PASSWORD. What has been processed is
kept in a small JSON state file, $TORAX_STATE/pacs-<host>-<port>.json (TORAX_STATE defaults to
$XDG_STATE_HOME/torax, i.e. ~/.local/state/torax), holding only SHA-256 digests of SOP Instance UIDs, written
atomically. Nothing here logs or prints patient attributes.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import requests

from model.core.types import Result

__all__ = ["PacsError", "PacsUnavailable", "PacsAuthError", "SitesUnavailable", "Pacs", "State", "state_path",
           "load_site", "analyse_instance", "Filed", "watch"]

MODALITIES = ("CR", "DX")
RETRY_BASE_S = 0.5   # first wait after a failed call; doubles each try
RETRY_CAP_S = 60.0   # longest wait between two tries
ONCE_TRIES = 4       # --once gives up after this many tries of one call (about 3.5 s of waiting)


class PacsError(Exception):
    """A PACS problem with a message fit to show as is."""


class PacsUnavailable(PacsError):
    pass


class PacsAuthError(PacsError):
    pass


class SitesUnavailable(Exception):
    pass


# --------------------------------------------------------------------------------------------------------------------
# Talking to the PACS
# --------------------------------------------------------------------------------------------------------------------
@dataclass
class Pacs:
    url: str
    user: str | None = None
    password: str | None = None
    tries: int | None = ONCE_TRIES  # None: keep trying (with back-off) for as long as it takes
    sleep: object = time.sleep
    _client: object = field(default=None, repr=False)

    @classmethod
    def from_env(cls, url: str | None = None, user: str | None = None, **kwargs) -> Pacs | None:
        """The PACS configured by arguments or TORAX_PACS_URL / TORAX_PACS_USER / TORAX_PACS_PASSWORD (None if no
        URL is configured)."""
        url = url or os.environ.get("TORAX_PACS_URL")
        if not url:
            return None
        return cls(url.rstrip("/"), user or os.environ.get("TORAX_PACS_USER") or None,
                   os.environ.get("TORAX_PACS_PASSWORD") or None, **kwargs)

    @property
    def client(self):
        if self._client is None:
            from dicomweb_client.api import DICOMwebClient

            session = requests.Session()
            if self.user is not None:
                session.auth = (self.user, self.password or "")
            self._client = DICOMwebClient(self.url, session=session, timeout=30)
            self._client.set_http_retry_params(retry=False)  # retries are ours, with a bounded back-off
        return self._client

    def where(self) -> str:
        u = urlparse(self.url)
        return f"{u.scheme}://{u.hostname}{':' + str(u.port) if u.port else ''}{u.path}"

    def call(self, what: str, fn, *args, **kwargs):
        """fn(*args, **kwargs) with retries while the PACS is down or overloaded; an authentication failure is
        raised at once. `what` names the step in messages."""
        attempt = 0
        while True:
            try:
                return fn(*args, **kwargs)
            except requests.HTTPError as e:
                status = e.response.status_code if e.response is not None else None
                if status in (401, 403):
                    raise PacsAuthError(f"The PACS at {self.where()} refused the user name or password "
                                        f"(HTTP {status}). Check --user / TORAX_PACS_USER and "
                                        "TORAX_PACS_PASSWORD.") from None
                if status is not None and status < 500 and status not in (408, 429):
                    raise PacsError(f"The PACS at {self.where()} rejected the {what} request "
                                    f"(HTTP {status}).") from None
                reason = f"HTTP {status}"
            except (requests.ConnectionError, requests.Timeout) as e:
                reason = "no answer" if isinstance(e, requests.ConnectionError) else "timed out"
            attempt += 1
            if self.tries is not None and attempt >= self.tries:
                raise PacsUnavailable(f"The PACS at {self.where()} is not answering ({reason} on {what}, "
                                      f"{attempt} tries). Is it running, and is the URL right?")
            delay = min(RETRY_BASE_S * 2 ** (attempt - 1), RETRY_CAP_S)
            print(f"warning: PACS {what}: {reason}; trying again in {delay:g} s", file=sys.stderr, flush=True)
            self.sleep(delay)

    def check(self) -> None:
        """One cheap query, so a wrong URL or password is reported before any model is loaded."""
        self.call("connect", self.client.search_for_studies, limit=1)

    def new_instances(self, done: State):
        """(study, series, sop) UIDs of CR/DX instances not processed yet, oldest series first as the PACS lists
        them."""
        for modality in MODALITIES:
            series_list = self.call("search", self.client.search_for_series, search_filters={"Modality": modality},
                                    fields=["NumberOfSeriesRelatedInstances"], get_remaining=True)
            for series in series_list:
                study_uid, series_uid = _value(series, "0020000D"), _value(series, "0020000E")
                if not study_uid or not series_uid:
                    continue
                count = _value(series, "00201209")
                if count is not None and done.series_complete(series_uid, int(count)):
                    continue
                instances = self.call("search", self.client.search_for_instances, study_uid, series_uid,
                                      get_remaining=True)
                for instance in instances:
                    sop_uid = _value(instance, "00080018")
                    if sop_uid and not done.has(sop_uid):
                        yield study_uid, series_uid, sop_uid

    def fetch(self, study_uid: str, series_uid: str, sop_uid: str) -> bytes:
        """The instance's bytes as stored (WADO-RS, any transfer syntax). Read from the multipart answer directly:
        some PACSs (Orthanc 1.10) send the dataset without the 128-byte preamble, which model.io reads but
        dicomweb-client's pydicom parsing refuses."""
        def get() -> bytes:
            response = self.client._session.get(
                f"{self.url}/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}", timeout=60,
                headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'})
            response.raise_for_status()
            parts = _multipart(response.content, response.headers.get("Content-Type", ""))
            if not parts:
                raise PacsError(f"The PACS at {self.where()} sent an empty answer for an instance.")
            return parts[0]

        return self.call("retrieve", get)

    def store(self, outputs) -> dict:
        """STOW-RS the SR (and SC) into their study. Returns their UIDs."""
        datasets = outputs.datasets()
        response = self.call("store", self.client.store_instances, datasets,
                             study_instance_uid=str(outputs.sr.StudyInstanceUID))
        if response is not None and len(response.get("FailedSOPSequence", [])):
            raise PacsError(f"The PACS at {self.where()} refused to store "
                            f"{len(response.FailedSOPSequence)} of {len(datasets)} result objects.")
        return outputs.uids()


def _multipart(body: bytes, content_type: str) -> list[bytes]:
    """The parts of a multipart/related body (each part's own Content-Length is used when given)."""
    import re

    found = re.search(r'boundary="?([^";]+)"?', content_type)
    if not found:
        return [body] if body else []
    parts = []
    for chunk in body.split(b"--" + found.group(1).encode())[1:]:
        if chunk.startswith(b"--"):
            break
        head, _, content = chunk.lstrip(b"\r\n").partition(b"\r\n\r\n")
        length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
        parts.append(content[:int(length.group(1))] if length else content.removesuffix(b"\r\n"))
    return parts


def _value(item: dict, tag: str):
    values = (item.get(tag) or {}).get("Value") or []
    return values[0] if values else None


# --------------------------------------------------------------------------------------------------------------------
# What has been processed
# --------------------------------------------------------------------------------------------------------------------
def state_path(url: str) -> Path:
    root = os.environ.get("TORAX_STATE") or Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") \
        / "torax"
    u = urlparse(url)
    name = f"pacs-{u.hostname or 'local'}-{u.port or (443 if u.scheme == 'https' else 80)}.json"
    return Path(root) / name


def _digest(uid: str) -> str:
    return hashlib.sha256(uid.encode()).hexdigest()[:32]


class State:
    """Digests of processed SOP Instance UIDs (sources and the outputs stored), and per series how many instances
    have been seen, so a finished series is skipped without listing its instances again."""

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            data = {}
        except (OSError, ValueError) as e:
            raise PacsError(f"The state file {self.path} could not be read ({e}); move it away to start "
                            "afresh (everything in the PACS would be processed again).") from None
        self.instances: dict[str, dict] = data.get("instances", {})
        self.series: dict[str, list[str]] = data.get("series", {})

    def has(self, sop_uid: str) -> bool:
        return _digest(sop_uid) in self.instances

    def series_complete(self, series_uid: str, count: int) -> bool:
        return len(self.series.get(_digest(series_uid), ())) >= count

    def add(self, series_uid: str, sop_uid: str, outputs: dict | None, error: str | None = None) -> None:
        entry = {"at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        if error:
            entry["error"] = error
        self.instances[_digest(sop_uid)] = entry
        seen = self.series.setdefault(_digest(series_uid), [])
        if _digest(sop_uid) not in seen:
            seen.append(_digest(sop_uid))
        for key, uid in (outputs or {}).items():
            if key.endswith("sop_instance_uid"):
                self.instances[_digest(uid)] = {"at": entry["at"], "output": True}
        self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".pacs-", suffix=".json", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump({"version": 1, "instances": self.instances, "series": self.series}, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


# --------------------------------------------------------------------------------------------------------------------
# Site profiles
# --------------------------------------------------------------------------------------------------------------------
def load_site(name: str, bundle):
    """The verified site profile `name` for `bundle` (model.sites.profiles.load), or SitesUnavailable saying why not."""
    from model.sites.profiles import load

    try:
        return load(name, bundle)
    except Exception as e:  # noqa: BLE001 - the sites module's own message says what is wrong
        raise SitesUnavailable(f"Site profile {name!r} could not be used: {e}") from None


# --------------------------------------------------------------------------------------------------------------------
# Analysis and the watch loop
# --------------------------------------------------------------------------------------------------------------------
def analyse_instance(data: bytes, name: str | None, ensemble, explainer, guard, threshold=None,
                     operating_point=None, site=None) -> tuple[Result, object | None, object | None]:
    """(Result, Decoded or None, Grad-CAM overlay RGB or None): `predict`'s analysis (with a
    model.sites.profiles.SiteProfile when given) plus the ensemble Grad-CAM overlay the SC and the PDF show."""
    from model.core.analysis import analyse
    from model.core.explain import overlay

    result, decoded = analyse(data, name, ensemble, threshold, operating_point, guard=guard, site=site)
    picture = None
    if decoded is not None and explainer is not None:
        picture = overlay(decoded.pixels, explainer.cams(decoded.pixels, "gradcam")["ensemble"])
    return result, decoded, picture


@dataclass
class Filed:
    """One PACS instance analysed and filed back: its result (no file name: it came from the PACS), the source
    instance it is about, and the UIDs of what was stored."""
    result: Result
    source_sop_instance_uid: str
    stored: dict

    @property
    def failed(self) -> bool:
        return self.result.failed

    def to_json(self) -> dict:
        """What `pacs watch` prints per instance: the result's JSON, then where it came from and went."""
        return {**self.result.to_json(), "source_sop_instance_uid": self.source_sop_instance_uid,
                "stored": self.stored}


def watch(pacs: Pacs, ensemble, explainer, guard, *, once: bool, interval: float = 10.0, threshold=None,
          operating_point=None, site=None, state: State | None = None, emit=None) -> int:
    """Process new CR/DX instances; with `once`, what is there now, else poll every `interval` seconds until
    interrupted. `emit(filed)` gets each `Filed` (default: its JSON line on stdout). Returns the number processed."""
    from dataclasses import replace

    from model.outputs.dicom_results import build_outputs

    state = state or State(state_path(pacs.url))
    emit = emit or (lambda filed: _print_json(filed.to_json()))
    processed, wait = 0, interval
    while True:
        try:
            for study_uid, series_uid, sop_uid in list(pacs.new_instances(state)):
                data = pacs.fetch(study_uid, series_uid, sop_uid)
                result, _, picture = analyse_instance(data, "instance.dcm", ensemble, explainer, guard, threshold,
                                                      operating_point, site)
                result = replace(result, file=None)
                filed = Filed(result, sop_uid, pacs.store(build_outputs(data, result, ensemble.bundle, picture)))
                state.add(series_uid, sop_uid, filed.stored, error=(result.error or {}).get("code"))
                emit(filed)
                processed += 1
            wait = interval
        except PacsUnavailable as e:
            if once:
                raise
            wait = min(max(wait * 2, interval), RETRY_CAP_S * 5)
            print(f"warning: {e} Trying again in {wait:g} s.", file=sys.stderr, flush=True)
        if once:
            return processed
        pacs.sleep(wait)


def _print_json(result: dict) -> None:
    import numpy as np

    print(json.dumps(result, default=lambda o: o.tolist() if isinstance(o, np.ndarray) else
                     (o.item() if isinstance(o, np.generic) else str(o))), flush=True)


# --------------------------------------------------------------------------------------------------------------------
# Command line: python -m model pacs watch
# --------------------------------------------------------------------------------------------------------------------
EXIT_CODES = "exit status: 0 done, 1 some instance could not be analysed, 2 usage (e.g. an unknown --site), " \
             "3 PACS not answering, 4 user name or password refused, 5 other PACS error"


def add_cli(sub) -> None:
    """Register `pacs watch` on the CLI's subparsers."""
    import argparse

    pacs = sub.add_parser("pacs", help="round trip with a PACS over DICOMweb (docs in model/channels/pacs.py)")
    verbs = pacs.add_subparsers(dest="pacs_command", required=True)
    w = verbs.add_parser("watch", help="analyse new CR/DX instances and store the SR and overlay back",
                         description=__doc__, epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    w.add_argument("--url", default=None, help="DICOMweb root, e.g. http://127.0.0.1:8042/dicom-web "
                                               "(default: $TORAX_PACS_URL)")
    w.add_argument("--user", default=None, help="user name (default: $TORAX_PACS_USER); the password is read "
                                                "from $TORAX_PACS_PASSWORD only")
    w.add_argument("--once", action="store_true", help="process what is new now and exit")
    w.add_argument("--bundle", default=None, help="bundle name (default: the default bundle)")
    w.add_argument("--site", default=None, help="site profile name (python -m model site list)")
    g = w.add_mutually_exclusive_group()
    g.add_argument("--threshold", type=float, default=None)
    g.add_argument("--operating-point", default=None, help="screening, balanced or confirmatory")
    w.add_argument("--interval", type=float, default=10.0, help="seconds between polls without --once")


def cli(args) -> int:
    """`python -m model pacs watch`; see add_cli."""
    import signal

    def fail(code: int, message: str) -> int:
        print(f"error: {message}", file=sys.stderr)
        return code

    pacs = Pacs.from_env(args.url, args.user)
    if pacs is None:
        return fail(2, "no PACS given: pass --url or set TORAX_PACS_URL.")
    try:
        pacs.check()
    except PacsAuthError as e:
        return fail(4, str(e))
    except PacsUnavailable as e:
        if args.once:
            return fail(3, str(e))
        print(f"warning: {e} Will keep trying.", file=sys.stderr)
    except PacsError as e:
        return fail(5, str(e))
    from model.core.bundle import NoBundle, load_chosen
    from model.core.ensemble import Ensemble
    from model.core.explain import Explainer
    from model.core.guard import for_bundle

    try:
        _, bundle = load_chosen(args.bundle, warn=lambda m: print(f"warning: {m}", file=sys.stderr))
    except NoBundle as e:  # fail closed: no other bundle files results in the default's place
        return fail(2, str(e))
    try:
        site = load_site(args.site, bundle) if args.site else None
    except SitesUnavailable as e:
        return fail(2, str(e))
    failed = []

    def emit(filed: Filed):
        failed.append(filed.failed)
        _print_json(filed.to_json())

    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop cleanly on SIGTERM as on Ctrl-C
    try:
        watch(pacs, Ensemble(bundle), Explainer(bundle), for_bundle(bundle), once=args.once, interval=args.interval,
              threshold=args.threshold, operating_point=args.operating_point, site=site, emit=emit)
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
    except PacsAuthError as e:
        return fail(4, str(e))
    except PacsUnavailable as e:
        return fail(3, str(e))
    except PacsError as e:
        return fail(5, str(e))
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 1 if any(failed) else 0
