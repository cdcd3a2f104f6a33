"""A round trip with a PACS over DICOMweb: find new CR/DX instances (QIDO-RS), fetch them (WADO-RS), analyse them as
`python -m model predict` does, and store the SR and the Grad-CAM Secondary Capture back into the same study
(STOW-RS). Used by `python -m model pacs watch` and by the Diagnose page's "Send result to PACS".

Configuration: the DICOMweb root URL (e.g. http://127.0.0.1:8042/dicom-web) and a user name come from the command
line or TORAX_PACS_URL / TORAX_PACS_USER; the password only ever from TORAX_PACS_PASSWORD, and never over plain
HTTP to a host other than this one (unless --allow-insecure). TLS is verified (--ca-bundle, --client-cert,
--client-key). What has been processed is kept in a small JSON state file, $TORAX_STATE/pacs.json (TORAX_STATE
defaults to $XDG_STATE_HOME/torax, i.e. ~/.local/state/torax), keyed by SHA-256 digests of SOP Instance UIDs (unique
worldwide, so the PACS's URL spelt another way finds the same instances done), written atomically, mode 0600. An
instance that cannot be processed is recorded there with its reason (and its UIDs, to find it again), tried again
after a back-off, and parked after MAX_INSTANCE_TRIES tries (`pacs watch --failed` lists them); the loop goes on.
The SR and SC of an instance have UIDs derived from it, and the PACS is asked whether they are already there before
any work. Nothing here logs or prints patient attributes.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import requests

from model.channels.net import is_loopback
from model.core.types import Result

__all__ = ["PacsError", "PacsUnavailable", "PacsAuthError", "SitesUnavailable", "Pacs", "State", "state_path",
           "load_site", "analyse_instance", "Filed", "watch"]

MODALITIES = ("CR", "DX")
RETRY_BASE_S = 0.5   # first wait after a failed call; doubles each try
RETRY_CAP_S = 60.0   # longest wait between two tries
ONCE_TRIES = 4       # --once gives up after this many tries of one call (about 3.5 s of waiting)
MIN_INTERVAL_S = 5.0  # shortest wait between two polls: a watcher must not hammer the PACS
QIDO_PAGE = 500      # results asked for per QIDO-RS request
QIDO_MAX = 200_000   # results one search may return in all, whatever the server sends
MAX_INSTANCE_MB = 256  # a radiograph bigger than this is refused (recorded, not retrieved)
MAX_INSTANCE_TRIES = 3  # an instance that failed this many times is parked (listed by `pacs watch --failed`)
FAILURE_BACKOFF_S = 300.0  # first wait before an instance that failed is tried again; x4 each time


class PacsError(Exception):
    """A PACS problem with a message fit to show as is."""


class PacsUnavailable(PacsError):
    pass


class PacsAuthError(PacsError):
    pass


class InstanceTooLarge(PacsError):
    pass


class SitesUnavailable(Exception):
    pass




def _tls_reason(error: Exception) -> str:
    """The TLS failure in words, e.g. "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: self-signed
    certificate", from the wrapped exceptions' text."""
    found = re.search(r"\[SSL[^\]]*\][^('\")]*", str(error))
    return found.group(0).strip(" :") if found else "the TLS handshake failed"


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
    ca_bundle: str | None = None    # CA certificate(s) to verify the PACS's TLS certificate with
    client_cert: str | None = None  # a client certificate (PEM) for PACSs that ask for one
    client_key: str | None = None   # its key, when not in the same file
    allow_insecure: bool = False    # send the password over plain HTTP to a non-loopback host
    max_instance_bytes: int = MAX_INSTANCE_MB << 20
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

    def insecure(self) -> str | None:
        """Why talking to this PACS as configured would expose the password (None when it would not)."""
        u = urlparse(self.url)
        if u.scheme == "http" and self.password and not is_loopback(u.hostname or "") and not self.allow_insecure:
            return (f"Refusing to send the PACS password over plain HTTP to {u.hostname}: use an https:// URL, or "
                    "--allow-insecure if this network is trusted.")
        return None

    @property
    def client(self):
        if self._client is None:
            from dicomweb_client.api import DICOMwebClient

            if self.insecure():
                raise PacsError(self.insecure())
            session = _Session(str(self.ca_bundle) if self.ca_bundle else None)
            if self.user is not None:
                session.auth = (self.user, self.password or "")
            if self.client_cert:
                session.cert = (str(self.client_cert), str(self.client_key)) if self.client_key else \
                    str(self.client_cert)
            self._client = DICOMwebClient(self.url, session=session, timeout=30)
            self._client.set_http_retry_params(retry=False)  # retries are ours, with a bounded back-off
        return self._client

    def where(self) -> str:
        u = urlparse(self.url)
        return f"{u.scheme}://{u.hostname}{':' + str(u.port) if u.port else ''}{u.path}"

    def call(self, what: str, fn, *args, _tries: int | None = None, **kwargs):
        """fn(*args, **kwargs) with retries while the PACS is down or overloaded (at most `_tries` tries, default
        self.tries); an authentication or TLS failure, or an answer that is not JSON, is raised at once. `what`
        names the step in messages."""
        tries = _tries or self.tries
        attempt = 0
        while True:
            try:
                return fn(*args, **kwargs)
            except requests.exceptions.SSLError as e:
                raise PacsError(f"The PACS at {self.where()} failed the TLS check ({_tls_reason(e)}). Pass its CA "
                                "certificate with --ca-bundle, and --client-cert / --client-key if it asks for "
                                "one.") from None
            except (json.JSONDecodeError, requests.exceptions.JSONDecodeError):
                raise PacsError(f"The PACS at {self.where()} answered the {what} request with something that is "
                                "not DICOMweb JSON. Is the URL the DICOMweb root (e.g. "
                                "http://host:8042/dicom-web)?") from None
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
            if tries is not None and attempt >= tries:
                raise PacsUnavailable(f"The PACS at {self.where()} is not answering ({reason} on {what}, "
                                      f"{attempt} tries). Is it running, and is the URL right?")
            delay = min(RETRY_BASE_S * 2 ** (attempt - 1), RETRY_CAP_S)
            print(f"warning: PACS {what}: {reason}; trying again in {delay:g} s", file=sys.stderr, flush=True)
            self.sleep(delay)

    def check(self, tries: int | None = None) -> None:
        """One cheap query, so a wrong URL or password is reported before any model is loaded."""
        self.call("connect", self.client.search_for_studies, limit=1, _tries=tries)

    def search(self, fn, *args, **kwargs) -> list[dict]:
        """Every match of a QIDO-RS search, page by page. Stops at an empty page, at a page already sent (a server
        that ignores `offset` would otherwise be asked forever), or after QIDO_MAX results."""
        found, seen, offset = [], set(), 0
        while len(found) < QIDO_MAX:
            page = self.call("search", fn, *args, offset=offset, limit=QIDO_PAGE, **kwargs)
            if not page:
                break
            if not isinstance(page, list) or not all(isinstance(item, dict) for item in page):
                raise PacsError(f"The PACS at {self.where()} answered a search with JSON that is not a list of "
                                "DICOM datasets. Is the URL the DICOMweb root?")
            digest = hashlib.sha256(json.dumps(page, sort_keys=True).encode()).hexdigest()
            if digest in seen:
                print(f"warning: the PACS at {self.where()} sent the same page of search results twice (it "
                      "ignores 'offset'); using what it sent once.", file=sys.stderr, flush=True)
                break
            seen.add(digest)
            found += page
            offset += len(page)
        return found

    def new_instances(self, done: State, now: float | None = None):
        """(study, series, sop) UIDs of CR/DX instances not processed yet (and not parked or waiting to be tried
        again at `now`), oldest series first as the PACS lists them."""
        now = time.time() if now is None else now
        for modality in MODALITIES:
            series_list = self.search(self.client.search_for_series, search_filters={"Modality": modality},
                                      fields=["NumberOfSeriesRelatedInstances"])
            for series in series_list:
                study_uid, series_uid = _value(series, "0020000D"), _value(series, "0020000E")
                if not study_uid or not series_uid:
                    continue
                count = _value(series, "00201209")
                if count is not None and done.series_complete(series_uid, int(count)):
                    continue
                for instance in self.search(self.client.search_for_instances, study_uid, series_uid):
                    sop_uid = _value(instance, "00080018")
                    if sop_uid and not done.has(sop_uid) and done.due(sop_uid, now):
                        yield study_uid, series_uid, sop_uid

    def answered(self, study_uid: str, sop_uid: str) -> bool:
        """Whether the PACS already holds instance `sop_uid` in the study (e.g. our SR for a source instance)."""
        return bool(self.call("search", self.client.search_for_instances, study_uid,
                              search_filters={"SOPInstanceUID": sop_uid}, _tries=self.tries or ONCE_TRIES))

    def fetch(self, study_uid: str, series_uid: str, sop_uid: str) -> bytes:
        """The instance's bytes as stored (WADO-RS, any transfer syntax), streamed and refused (InstanceTooLarge)
        past `max_instance_bytes`. Read from the multipart answer directly: some PACSs (Orthanc 1.10) send the
        dataset without the 128-byte preamble, which model.io reads but dicomweb-client's pydicom parsing
        refuses."""
        cap = self.max_instance_bytes
        too_large = InstanceTooLarge(f"The instance is larger than the {cap / 2**20:g} MiB cap (--max-instance-mb), "
                                     "so it was not retrieved.")

        def get() -> bytes:
            with self.client._session.get(
                    f"{self.url}/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}", timeout=60,
                    stream=True, headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}
            ) as response:
                response.raise_for_status()
                if int(response.headers.get("Content-Length") or 0) > cap:
                    raise too_large
                body = bytearray()
                for chunk in response.iter_content(1 << 20):
                    body += chunk
                    if len(body) > cap:
                        raise too_large
            parts = _multipart(bytes(body), response.headers.get("Content-Type", ""))
            if not parts:
                raise PacsError(f"The PACS at {self.where()} sent an empty answer for an instance.")
            return parts[0]

        return self.call("retrieve", get, _tries=self.tries or ONCE_TRIES)

    def store(self, outputs) -> dict:
        """STOW-RS the SR (and SC) into their study. Returns their UIDs."""
        datasets = outputs.datasets()
        response = self.call("store", self.client.store_instances, datasets,
                             study_instance_uid=str(outputs.sr.StudyInstanceUID), _tries=self.tries or ONCE_TRIES)
        if response is not None and len(response.get("FailedSOPSequence", [])):
            raise PacsError(f"The PACS at {self.where()} refused to store "
                            f"{len(response.FailedSOPSequence)} of {len(datasets)} result objects.")
        return outputs.uids()


class _Session(requests.Session):
    """A session whose CA bundle, when given, wins: requests lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE from the
    environment override `session.verify`, so --ca-bundle would be silently ignored wherever they are set."""

    def __init__(self, ca_bundle: str | None):
        super().__init__()
        self.ca_bundle = ca_bundle

    def merge_environment_settings(self, url, proxies, stream, verify, cert):
        settings = super().merge_environment_settings(url, proxies, stream, verify, cert)
        if self.ca_bundle:
            settings["verify"] = self.ca_bundle
        return settings


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
def state_path() -> Path:
    """The watcher's state file, whatever the PACS's URL: instances are known by their UIDs, so
    `http://localhost:8042` after `http://127.0.0.1:8042` finds the same instances done."""
    from model.store.location import state_dir

    return state_dir() / "pacs.json"


def _digest(uid: str) -> str:
    return hashlib.sha256(uid.encode()).hexdigest()[:32]


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


class State:
    """Digests of processed SOP Instance UIDs (sources and the outputs stored), per series how many instances have
    been seen (so a finished series is skipped without listing its instances again), and the instances that failed:
    their UIDs, the reason, how many tries, when to try again, or parked."""

    def __init__(self, path: Path):
        self.path = Path(path)
        data = self._read(self.path)
        if data is None:  # before issue 23 there was one file per host as written: take over what they knew
            data = {"instances": {}, "series": {}}
            for old in sorted(self.path.parent.glob("pacs-*.json")):
                for key in ("instances", "series"):
                    data[key].update((self._read(old) or {}).get(key, {}))
        self.instances: dict[str, dict] = data.get("instances", {})
        self.series: dict[str, list[str]] = data.get("series", {})
        self.failures: dict[str, dict] = data.get("failures", {})

    @staticmethod
    def _read(path: Path) -> dict | None:
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            raise PacsError(f"The state file {path} could not be read ({e}); move it away to start "
                            "afresh (the PACS is asked what it already holds, so nothing is filed twice).") from None

    def has(self, sop_uid: str) -> bool:
        return _digest(sop_uid) in self.instances

    def due(self, sop_uid: str, now: float) -> bool:
        """False for an instance that is parked, or that failed and waits for its next try."""
        failure = self.failures.get(_digest(sop_uid))
        return failure is None or (not failure.get("parked") and now >= failure.get("retry_at", 0))

    def series_complete(self, series_uid: str, count: int) -> bool:
        return len(self.series.get(_digest(series_uid), ())) >= count

    def _seen(self, series_uid: str, sop_uid: str) -> None:
        seen = self.series.setdefault(_digest(series_uid), [])
        if _digest(sop_uid) not in seen:
            seen.append(_digest(sop_uid))

    def add(self, series_uid: str, sop_uid: str, outputs: dict | None, error: str | None = None) -> None:
        entry = {"at": _when(time.time())}
        if error:
            entry["error"] = error
        self.instances[_digest(sop_uid)] = entry
        self.failures.pop(_digest(sop_uid), None)
        self._seen(series_uid, sop_uid)
        for key, uid in (outputs or {}).items():
            if key.endswith("sop_instance_uid"):
                self.instances[_digest(uid)] = {"at": entry["at"], "output": True}
        self.save()

    def fail(self, study_uid: str, series_uid: str, sop_uid: str, reason: str, now: float) -> dict:
        """Record one failed try of an instance: tried again FAILURE_BACKOFF_S later (x4 each time), parked after
        MAX_INSTANCE_TRIES. `reason` must hold no patient attribute. Returns the entry."""
        entry = self.failures.setdefault(_digest(sop_uid), {
            "study_instance_uid": study_uid, "series_instance_uid": series_uid, "sop_instance_uid": sop_uid,
            "tries": 0, "first": _when(now)})
        entry.update(tries=entry["tries"] + 1, reason=reason, last=_when(now))
        if entry["tries"] >= MAX_INSTANCE_TRIES:
            entry["parked"] = True
            entry.pop("retry_at", None)
            self._seen(series_uid, sop_uid)  # a parked instance no longer keeps its series open
        else:
            entry["retry_at"] = now + FAILURE_BACKOFF_S * 4 ** (entry["tries"] - 1)
        self.save()
        return entry

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".pacs-", suffix=".json", dir=self.path.parent)  # mode 0600
        try:
            with os.fdopen(fd, "w") as f:
                json.dump({"version": 2, "instances": self.instances, "series": self.series,
                           "failures": self.failures}, f)
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
    instance it is about, the UIDs of what was stored, and where the result is kept in the record."""
    result: Result
    source_sop_instance_uid: str
    stored: dict
    record: object = None  # model.store.recorder.Recorded, or None when recording is off

    @property
    def failed(self) -> bool:
        return self.result.failed

    def to_json(self) -> dict:
        """What `pacs watch` prints per instance: the result's JSON, then where it came from and went."""
        return {**self.result.to_json(), "source_sop_instance_uid": self.source_sop_instance_uid,
                "stored": self.stored, **({"record": self.record.to_json()} if self.record is not None else {})}


def watch(pacs: Pacs, ensemble, explainer, guard, *, once: bool, interval: float = 10.0, threshold=None,
          operating_point=None, site=None, state: State | None = None, emit=None, policy=None,
          report=None, clock=time.time, record: bool = True) -> int:
    """Process new CR/DX instances; with `once`, what is there now, else poll every `interval` seconds (at least
    MIN_INTERVAL_S) until interrupted. `emit(filed)` gets each `Filed` (default: its JSON line on stdout);
    `report(entry)` each instance that failed (default: a warning on stderr), which is recorded in `state` and
    skipped. `policy` (a model.outputs.dicom_results.FilingPolicy; default: the unattended one) decides what may be
    filed. With `record`, each filed result is kept in the department's record (model/store/). Returns the number
    processed."""
    from model.outputs.dicom_results import FilingPolicy

    state = state or State(state_path())
    emit = emit or (lambda filed: _print_json(filed.to_json()))
    report = report or _warn_failed
    policy = policy or FilingPolicy()
    interval = max(float(interval), MIN_INTERVAL_S)
    processed, wait = 0, interval
    while True:
        try:
            for study_uid, series_uid, sop_uid in list(pacs.new_instances(state, clock())):
                try:
                    filed = _process(pacs, state, study_uid, series_uid, sop_uid, ensemble, explainer, guard,
                                     threshold, operating_point, site, policy, record)
                except (PacsAuthError, KeyboardInterrupt):
                    raise
                except PacsUnavailable:
                    try:  # the PACS is down (raise: the loop waits), or it is only this instance it chokes on
                        pacs.check(tries=1)
                    except PacsError:
                        raise
                    report(state.fail(study_uid, series_uid, sop_uid, "the PACS kept failing on this instance",
                                      clock()))
                except Exception as e:  # noqa: BLE001 - recorded and skipped: one instance never stops the loop
                    report(state.fail(study_uid, series_uid, sop_uid, _reason(e), clock()))
                else:
                    if filed is not None:
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


def _process(pacs: Pacs, state: State, study_uid, series_uid, sop_uid, ensemble, explainer, guard, threshold,
             operating_point, site, policy, record: bool = True) -> Filed | None:
    """One instance: retrieve, analyse, file as `policy` allows, store, note in the state file and keep in the
    record. None when the PACS already holds its results (filed before, under another state file or URL)."""
    from dataclasses import replace

    from model.outputs.dicom_results import build_outputs, filed_uids, quiet_libraries
    from model.store.recorder import Channel, upload_facts
    from model.store.recorder import record as keep

    uids = filed_uids(sop_uid, ensemble.bundle.name)
    if pacs.answered(study_uid, uids["sr_sop_instance_uid"]):
        state.add(series_uid, sop_uid, uids)
        return None
    data = pacs.fetch(study_uid, series_uid, sop_uid)
    facts = upload_facts(data) if record else None  # hashed while the analysis runs
    with quiet_libraries():  # pydicom's warnings quote the header's values
        start = time.perf_counter()
        result, _, picture = analyse_instance(data, "instance.dcm", ensemble, explainer, guard, threshold,
                                              operating_point, site)
        latency_ms = (time.perf_counter() - start) * 1000
        result = replace(policy.apply(result), file=None)
        outputs = build_outputs(data, result, ensemble.bundle, picture, uids=uids)
    filed = Filed(result, sop_uid, pacs.store(outputs))
    state.add(series_uid, sop_uid, filed.stored, error=(result.error or {}).get("code"))
    if record:  # as filed: an image withheld by the policy is recorded without a label, as the PACS has it
        filed.record = keep(result, ensemble.bundle, channel=Channel.PACS, data=data, facts=facts, site=site,
                            latency_ms=latency_ms)
    return filed


def _reason(error: Exception) -> str:
    """Why an instance failed, in words with no patient attribute: our own messages are written so; anything
    else (a library's message may quote the dataset) is named by its type only."""
    from model.outputs.dicom_results import NotDicom

    if isinstance(error, (PacsError, NotDicom)):
        return str(error)
    return f"It could not be processed ({type(error).__name__})."


def _warn_failed(entry: dict) -> None:
    then = "parked (see pacs watch --failed)" if entry.get("parked") else \
        f"will try again after {_when(entry['retry_at'])}"
    print(f"warning: instance {entry['sop_instance_uid']} failed (try {entry['tries']} of {MAX_INSTANCE_TRIES}): "
          f"{entry['reason']} It is {then}.", file=sys.stderr, flush=True)


def _print_json(result: dict) -> None:
    import numpy as np

    print(json.dumps(result, default=lambda o: o.tolist() if isinstance(o, np.ndarray) else
                     (o.item() if isinstance(o, np.generic) else str(o))), flush=True)


# --------------------------------------------------------------------------------------------------------------------
# Command line: python -m model pacs watch
# --------------------------------------------------------------------------------------------------------------------
EXIT_CODES = "exit status: 0 done, 1 some instance could not be analysed or failed (recorded; see --failed), " \
             "2 usage (e.g. a bad option, --site without site profiles), 3 PACS not answering, 4 user name or " \
             "password refused, 5 other PACS error (TLS, not DICOMweb)"


def add_cli(sub) -> None:
    """Register `pacs watch` on the CLI's subparsers."""
    import argparse

    pacs = sub.add_parser("pacs", help="round trip with a PACS over DICOMweb (docs in model/channels/pacs.py)")
    verbs = pacs.add_subparsers(dest="pacs_command", required=True)
    w = verbs.add_parser("watch", help="analyse new CR/DX instances and store the SR and overlay back",
                         description=__doc__, epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    w.add_argument("--url", default=None, help="DICOMweb root, e.g. http://127.0.0.1:8042/dicom-web "
                                               "(default: $TORAX_PACS_URL)")
    w.add_argument("--once", action="store_true", help="process what is new now and exit")
    w.add_argument("--failed", action="store_true", help="list the instances that failed (parked, or waiting to "
                                                         "be tried again) as JSON lines, and exit")
    w.add_argument("--bundle", default=None, help="bundle name (default: the default bundle)")
    w.add_argument("--site", default=None, help="site profile name (python -m model site list)")
    g = w.add_mutually_exclusive_group()
    g.add_argument("--threshold", type=float, default=None)
    g.add_argument("--operating-point", default=None, help="screening, balanced or confirmatory")
    w.add_argument("--interval", type=float, default=10.0,
                   help=f"seconds between polls without --once (at least {MIN_INTERVAL_S:g})")
    w.add_argument("--allow-outside-population", action="store_true",
                   help="file the finding even for an image outside the bundle's intended population (e.g. an "
                        "adult's for a pediatric bundle); by default it is filed 'not assessed'")
    add_connection_options(w)
    w.add_argument("--no-record", dest="record", action="store_false",
                   help="do not keep the results in the department's record (python -m model record)")


def add_connection_options(parser) -> None:
    """How to reach a PACS, shared by every command that talks DICOMweb (`pacs watch`, `archive score`): the user
    name (the password only ever from $TORAX_PACS_PASSWORD), TLS files, the size cap and --allow-insecure."""
    parser.add_argument("--user", default=None, help="user name (default: $TORAX_PACS_USER); the password is read "
                                                     "from $TORAX_PACS_PASSWORD only")
    parser.add_argument("--max-instance-mb", type=float, default=MAX_INSTANCE_MB,
                        help=f"refuse (and record) instances larger than this (default {MAX_INSTANCE_MB})")
    parser.add_argument("--ca-bundle", default=None,
                        help="CA certificate(s), PEM, to verify the PACS's TLS certificate")
    parser.add_argument("--client-cert", default=None, help="client certificate, PEM, for a PACS that asks for one")
    parser.add_argument("--client-key", default=None,
                        help="the client certificate's key, PEM, if not in the same file")
    parser.add_argument("--allow-insecure", action="store_true",
                        help="send the password over plain http:// to a host other than this one")


def connection_problem(args, url: str | None, option: str = "--url") -> str | None:
    """What is wrong with a PACS URL and the options of add_connection_options (None: nothing), checked before
    connecting or loading anything."""
    if url:
        u = urlparse(url)
        if u.scheme not in ("http", "https") or not u.hostname:
            return f"{option} {url!r} is not an http:// or https:// URL (e.g. http://127.0.0.1:8042/dicom-web)."
    if not math.isfinite(args.max_instance_mb) or args.max_instance_mb <= 0:
        return "--max-instance-mb must be a positive number."
    for name in ("ca_bundle", "client_cert", "client_key"):
        path = getattr(args, name)
        if path and not Path(path).is_file():
            return f"--{name.replace('_', '-')} {path}: no such file."
    if args.client_key and not args.client_cert:
        return "--client-key needs --client-cert."
    return None


def from_args(args, url: str | None = None, **kwargs) -> Pacs | None:
    """The PACS that the options of add_connection_options describe, at `url` (else $TORAX_PACS_URL); None when no
    URL is configured. `kwargs` go to Pacs (e.g. tries)."""
    return Pacs.from_env(url, args.user, ca_bundle=args.ca_bundle, client_cert=args.client_cert,
                         client_key=args.client_key, allow_insecure=args.allow_insecure,
                         max_instance_bytes=int(args.max_instance_mb * 2**20), **kwargs)


def usage_problem(args) -> str | None:
    """What is wrong with the options, checked before connecting or loading anything (None: nothing)."""
    if not math.isfinite(args.interval) or args.interval < MIN_INTERVAL_S:
        return f"--interval must be at least {MIN_INTERVAL_S:g} seconds (a watcher must not hammer the PACS)."
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:  # refuses nan too
        return f"--threshold must be a number between 0 and 1, not {args.threshold}."
    return connection_problem(args, args.url or os.environ.get("TORAX_PACS_URL"))


def list_failed(state: State) -> int:
    """`pacs watch --failed`: one JSON line per failed instance, parked ones first."""
    for entry in sorted(state.failures.values(), key=lambda e: (not e.get("parked"), e.get("last", ""))):
        print(json.dumps({**entry, "retry_at": _when(entry["retry_at"]) if "retry_at" in entry else None,
                          "parked": bool(entry.get("parked"))}), flush=True)
    return 0


def cli(args) -> int:
    """`python -m model pacs watch`; see add_cli."""
    import signal

    def fail(code: int, message: str) -> int:
        print(f"error: {message}", file=sys.stderr)
        return code

    if args.failed:
        try:
            return list_failed(State(state_path()))
        except PacsError as e:
            return fail(2, str(e))
    problem = usage_problem(args)
    if problem:
        return fail(2, problem)
    pacs = from_args(args, args.url)
    if pacs is None:
        return fail(2, "no PACS given: pass --url or set TORAX_PACS_URL.")
    if pacs.insecure():
        return fail(2, pacs.insecure())
    from model.core.bundle import NoBundle, load_chosen

    try:
        _, bundle = load_chosen(args.bundle, warn=lambda m: print(f"warning: {m}", file=sys.stderr))
    except NoBundle as e:  # fail closed: no other bundle files results in the default's place
        return fail(2, str(e))
    try:
        site = load_site(args.site, bundle) if args.site else None
    except SitesUnavailable as e:
        return fail(2, str(e))
    if args.operating_point:
        try:
            (site or bundle).operating_point(args.operating_point)
        except (KeyError, ValueError) as e:
            return fail(2, str(e).strip("'\""))
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
    from model.core.ensemble import Ensemble
    from model.core.explain import Explainer
    from model.core.guard import for_bundle
    from model.outputs.dicom_results import FilingPolicy

    failed = []

    def emit(filed: Filed):
        failed.append(filed.failed)
        _print_json(filed.to_json())

    def report(entry):
        failed.append(True)
        _warn_failed(entry)

    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop cleanly on SIGTERM as on Ctrl-C
    try:
        watch(pacs, Ensemble(bundle), Explainer(bundle), for_bundle(bundle), once=args.once, interval=args.interval,
              threshold=args.threshold, operating_point=args.operating_point, site=site, emit=emit, report=report,
              policy=FilingPolicy(allow_outside_population=args.allow_outside_population), record=args.record)
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
