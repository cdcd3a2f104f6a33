"""REST API over the serving core: `POST /v1/predict` answers with the same result object as
`python -m model predict --json` (and keeps it in the record, model/store/), `GET /v1/bundles` describes the loaded
models, `GET /healthz` says whether any are. `GET /v1/results`, `GET /v1/results/{id}` read the record and
`POST /v1/results/{id}/confirmation` adds the reader's confirmation; nothing here alters or deletes a result.

Uploads are parsed from the request stream into memory (never spooled to disk), capped in size while they arrive,
and never logged; nor is the uploaded file's name. Models are loaded once, at startup. Never imports training/ or
Streamlit.

Bounded work (docs/SECURITY.md): at most `max_inflight` analyses are admitted at once (queued or running, an
abandoned one included until its thread ends); beyond that a request is answered with 503 `busy` and a Retry-After
as soon as its upload has arrived. An upload still arriving counts against nothing but its own deadline
(UPLOAD_TIMEOUT_S), so slow clients can't lock others out (model.channels.http_guard limits their connections). A
request that times out sets its analysis' cancel flag, checked between steps, and decoding itself is bounded by
model.io's pixel budget. CAM overlays are downscaled to MAX_OVERLAY_SIDE. With no `bundle=` the configured default
answers, or nobody: when it was refused the request gets 503 `default_bundle_unavailable`.
"""
from __future__ import annotations

import asyncio
import base64
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, fields
from functools import partial
from pathlib import Path
from typing import Any, Literal, get_type_hints

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, create_model
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from model.channels.http_guard import BearerAuth, tokens_from_env
from model.core.types import OPTIONAL_FIELDS, CamMethod, Result, Task, plain
from model.outputs.safe_text import log_safe

log = logging.getLogger(__name__)

MAX_UPLOAD_BYTES = 32 * 1024 * 1024
"""Largest request body accepted (the multipart envelope included)."""

REQUEST_TIMEOUT_S = 60.0
"""Longest an analysis (decode, predict, CAM) may take before the request is answered with 504."""

UPLOAD_TIMEOUT_S = 60.0
"""Longest the upload itself may take to arrive (from the end of the headers) before the request is answered with
408: 32 MiB at 0.5 MiB/s."""

MAX_OVERLAY_SIDE = 1024
"""Longest side, in pixels, of a CAM overlay in an answer (a larger upload's overlay is downscaled)."""

MAX_INFLIGHT = 16
"""Analyses admitted at once by default (queued or running, each on its own thread); more get 503 `busy`. Worst
case memory is about this many 50-megapixel decodes: lower it (create_app / `serve --max-inflight`) on small
machines."""

RETRY_AFTER_S = 5
"""Retry-After (seconds) sent with 503 `busy`."""

MAX_PARTS = 16
"""Multipart parts accepted in one request: the `file` field and a few stray ones (some clients add their own)."""

CAM_CHOICES = ("none", *(m.value for m in CamMethod))
CamChoice = Literal[CAM_CHOICES]  # type: ignore[valid-type]  # "none" or a CamMethod, as the schema lists them
TaskName = Literal[tuple(t.value for t in Task)]  # type: ignore[valid-type]

# Which HTTP status answers each model.io.DecodeError code: 400 for a request with nothing in it, 415 for bytes
# that are not an image this service reads, 422 for an image that is there but can't be used.
DECODE_STATUS = {"empty_file": 400, "unreadable_image": 415, "truncated_image": 422, "image_too_large": 422,
                 "no_usable_frame": 422}


# --------------------------------------------------------------------------------------------------------------------
# Response models: they are what /openapi.json promises, and what the tests check the answers against.
# --------------------------------------------------------------------------------------------------------------------
class Problem(BaseModel):
    code: str = Field(description="Machine-readable, e.g. `empty_file`, `unreadable_image`, `unknown_bundle`.")
    message: str = Field(description="A sentence that can be shown to the user as is.")


class ErrorBody(BaseModel):
    error: Problem


class UploadWarning(BaseModel):
    code: str
    message: str


# What the API answers is a `Result` (Result.to_json()): its fields and their descriptions come from the dataclass.
# Only what a successful answer guarantees is narrowed here (failures are 4xx answers, never a result).
_ANSWERED = {
    "task": TaskName,
    "probabilities": dict[str, float],
    "members": dict[str, float] | dict[str, dict[str, float]],
    "spread": float,
    "warnings": list[UploadWarning],
    "error": Problem | None,
}


def _response_field(f):
    kind = _ANSWERED.get(f.name) or get_type_hints(Result)[f.name]
    default = None if f.name in OPTIONAL_FIELDS else ...
    return kind, Field(default, description=f.metadata.get("doc"))


PredictResult = create_model("PredictResult", __doc__=Result.__doc__,
                             **{f.name: _response_field(f) for f in fields(Result)})


class RecordRef(BaseModel):
    id: str | None = Field(description="The record id of this result (GET /v1/results/{id}); null when off.")
    state: Literal["stored", "pending", "off"] = Field(
        description="`stored`: in the record; `pending`: kept in the server's spool until the record database is "
                    "back (the server's log says why); `off`: recording is turned off on this server.")


# The channel's wrapper: the result, and where it is kept (the Result itself never grows keys).
PredictAnswer = create_model("PredictAnswer", __base__=PredictResult, record=(RecordRef | None, Field(
    None, description="Where this result is kept in the department's record.")))


class ConfirmationIn(BaseModel):
    label: str = Field(max_length=64, description="One of the result's classes (e.g. NORMAL, PNEUMONIA) or UNSURE.")
    note: str | None = Field(None, max_length=1000, description="An optional note.")


class ConfirmationOut(BaseModel):
    id: str | None
    result_id: str
    label: str
    state: Literal["stored", "pending"]


class MemberInfo(BaseModel):
    name: str
    arch: str | None
    params: int | None
    temperature: float


class OperatingPoint(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str
    threshold: float | None = None
    thresholds: dict[str, float] | None = None
    rule: str | None = None
    target: float | None = None
    val_sensitivity: float | None = None
    val_specificity: float | None = None


class BundleInfo(BaseModel):
    name: str
    title: str
    task: TaskName
    classes: list[str]
    version: str
    input: dict[str, Any]
    members: list[MemberInfo]
    operating_points: list[OperatingPoint]
    default_operating_point: str | None
    evaluation: dict[str, Any] | None = Field(
        description="Summary of the bundle's internal test, as in its manifest (NaN reported as null).")


class BundlesResponse(BaseModel):
    default: str | None = Field(description="The bundle used when a request names none.")
    bundles: list[BundleInfo]
    refused: dict[str, str] = Field(description="Bundle folders that failed verification, with the reason.")


class Health(BaseModel):
    status: Literal["ok", "degraded", "unavailable"] = Field(
        description="`degraded`: some bundles serve, but the default bundle was refused or is missing.")
    bundles: list[str]
    default: str | None = None
    problem: str | None = Field(None, description="Why the default bundle is unavailable, when it is.")


def _errors(*statuses: int) -> dict:
    return {status: {"model": ErrorBody} for status in statuses}


# The upload is read from the stream by hand (see read_upload), so FastAPI can't infer the request body: say it.
UPLOAD_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file"],
    "properties": {"file": {"type": "string", "format": "binary",
                            "description": "The radiograph: PNG, JPEG, TIFF, BMP, WebP, GIF or DICOM."}}}}}}}


# --------------------------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------------------------
class ApiError(Exception):
    """Answered as `{"error": {"code", "message"}}` with `status`."""

    def __init__(self, status: int, code: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


def _error_response(status: int, code: str, message: str, headers=None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


async def _on_api_error(request: Request, exc: ApiError) -> JSONResponse:
    return _error_response(exc.status, exc.code, exc.message, headers=exc.headers)


async def _on_invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    # Pydantic's own messages name the parameter and the rule, never the value: safe and clear enough.
    problems = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ())[1:]) or 'request'}: {e.get('msg')}"
                         for e in exc.errors())
    return _error_response(422, "invalid_parameter", f"Invalid request parameter ({problems}).")


async def _on_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return _error_response(exc.status_code, code, str(exc.detail), headers=getattr(exc, "headers", None))


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    return _error_response(500, "internal_error", "The server failed to answer this request.")


# --------------------------------------------------------------------------------------------------------------------
# Upload: multipart parsed from the stream, in memory, counted as it arrives
# --------------------------------------------------------------------------------------------------------------------
def _too_large(limit: int) -> ApiError:
    return ApiError(413, "upload_too_large",
                    f"This upload is larger than the {limit / 2**20:g} MiB limit. Please send a smaller file.")


class _FileField:
    """Multipart callbacks that keep the `file` part's bytes and drop every other part's."""

    def __init__(self):
        self.data: bytearray | None = None
        self.filename: str | None = None
        self.complete = False
        self.parts = 0
        self._header_name = self._header_value = b""
        self._disposition = b""
        self._collecting = False

    def on_part_begin(self):
        self.parts += 1
        if self.parts > MAX_PARTS:
            raise ApiError(400, "invalid_multipart", f"Too many form fields (at most {MAX_PARTS}).")
        self._disposition, self._collecting = b"", False

    def on_header_field(self, data, start, end):
        self._header_name += data[start:end]

    def on_header_value(self, data, start, end):
        self._header_value += data[start:end]

    def on_header_end(self):
        if self._header_name.strip().lower() == b"content-disposition":
            self._disposition = self._header_value
        self._header_name = self._header_value = b""

    def on_headers_finished(self):
        _, options = parse_options_header(self._disposition)
        if options.get(b"name") != b"file":
            return
        if self.data is not None:
            raise ApiError(400, "invalid_multipart", "Send one file per request, in the field named 'file'.")
        self.data, self._collecting = bytearray(), True
        if b"filename" in options:
            self.filename = options[b"filename"].decode("utf-8", "replace")

    def on_part_data(self, data, start, end):
        if self._collecting:
            self.data += data[start:end]

    def on_part_end(self):
        if self._collecting:
            self.complete, self._collecting = True, False

    def callbacks(self) -> dict:
        return {name: getattr(self, name) for name in (
            "on_part_begin", "on_header_field", "on_header_value", "on_header_end", "on_headers_finished",
            "on_part_data", "on_part_end")}


async def read_upload(request: Request, limit: int, timeout_s: float = UPLOAD_TIMEOUT_S) -> tuple[bytes, str | None]:
    """The `file` field of a multipart/form-data request: (bytes, file name). Refuses a body over `limit` bytes
    from its Content-Length before reading anything, and while it arrives when it has none (chunked); 408 when it
    has not all arrived within `timeout_s`."""
    kind, params = parse_options_header(request.headers.get("content-type", ""))
    if kind != b"multipart/form-data":
        raise ApiError(415, "unsupported_media_type",
                       "Send the image as multipart/form-data, in a field named 'file'.")
    if not params.get(b"boundary"):
        raise ApiError(400, "invalid_multipart", "The multipart/form-data request has no boundary.")
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise _too_large(limit)
    field = _FileField()
    received = 0
    try:
        parser = MultipartParser(params[b"boundary"], field.callbacks())
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                received += len(chunk)
                if received > limit:
                    raise _too_large(limit)
                parser.write(chunk)
    except (FormParserError, ValueError):
        raise ApiError(400, "invalid_multipart", "The multipart/form-data request is malformed.") from None
    except TimeoutError:
        raise ApiError(408, "upload_timeout",
                       f"The upload did not arrive within {timeout_s:g} s. Please try again.") from None
    except ClientDisconnect:
        raise ApiError(400, "incomplete_upload", "The upload was interrupted before it was complete.") from None
    if field.data is None:
        raise ApiError(422, "missing_file", "No file was sent: put the image in a multipart field named 'file'.")
    if not field.complete:
        raise ApiError(400, "invalid_multipart", "The multipart/form-data request ends in the middle of the file.")
    return bytes(field.data), field.filename


# --------------------------------------------------------------------------------------------------------------------
# Models and the work done per request (in the thread pool)
# --------------------------------------------------------------------------------------------------------------------
@dataclass
class Served:
    bundle: Any
    ensemble: Any
    explainer: Any


class Cancelled(Exception):
    """The request that asked for this analysis has been answered already (timeout): stop working on it."""


def analyse_upload(served: Served, data: bytes, filename: str | None, threshold: float | None,
                   operating_point: str | None, cam: str, site=None, cancel: threading.Event | None = None,
                   user: str | None = None) -> dict:
    """`Result.to_json()` of one upload, with the CAM overlay fields when a method was asked for, and with `record`
    (model.store.recorder.Recorded) when `user` is given: the result is recorded as that user's. `cancel`, when
    set, stops the work between steps."""
    def check():
        if cancel is not None and cancel.is_set():
            raise Cancelled()

    import cv2

    from model.core.analysis import analyse, cam_class
    from model.core.explain import overlay
    from model.core.guard import for_bundle
    from model.core.preprocess import shrink
    from model.store.recorder import Channel, record, upload_facts

    check()
    start = time.perf_counter()
    facts = upload_facts(data) if user is not None else None  # hashed while the analysis runs
    result, decoded = analyse(data, filename, served.ensemble, threshold, operating_point,
                              guard=for_bundle(served.bundle), site=site)
    recorded = None
    if user is not None:
        recorded = record(result, served.bundle, channel=Channel.API, user=user, data=data, facts=facts, site=site,
                          latency_ms=(time.perf_counter() - start) * 1000)
    if decoded is not None and cam != "none":
        check()
        target = cam_class(result, served.bundle)
        heat = served.explainer.cams(decoded.pixels, cam, target)["ensemble"]
        check()
        shown = overlay(shrink(decoded.pixels, MAX_OVERLAY_SIDE), heat)
        ok, png = cv2.imencode(".png", cv2.cvtColor(shown, cv2.COLOR_RGB2BGR))
        if not ok:
            raise RuntimeError("PNG encoding of the overlay failed")
        result.cam, result.cam_class = cam, target
        result.overlay_png_base64 = base64.b64encode(png.tobytes()).decode("ascii")
    if recorded is not None and recorded.pending:
        log.warning("record pending: %s", log_safe(recorded.message or "", 1000))
    return {**result.to_json(), **({"record": recorded.to_json(why=False)} if recorded is not None else {})}


def describe_bundle(bundle) -> dict:
    return plain({
        "name": bundle.name, "title": bundle.title, "task": bundle.task, "classes": bundle.classes,
        "version": bundle.version, "input": bundle.input_spec,
        "members": [{"name": m.name, "arch": m.info.get("arch"), "params": m.info.get("params"),
                     "temperature": m.temperature} for m in bundle.members],
        "operating_points": bundle.operating_points,
        "default_operating_point": bundle.manifest.get("default_operating_point"),
        "evaluation": bundle.manifest.get("evaluation"),
    })


def _load(bundles_root) -> tuple[dict[str, Served], dict[str, str]]:
    from model.core.bundle import load_all
    from model.core.ensemble import Ensemble
    from model.core.explain import Explainer

    bundles, refused = load_all(bundles_root)
    served = {}
    for name, bundle in bundles.items():
        ensemble = Ensemble(bundle)
        spec = bundle.input_spec
        ensemble.predict(np.zeros((spec["height"], spec["width"]), np.uint8))  # trace once, before any request
        served[name] = Served(bundle, ensemble, Explainer(bundle))
    for folder, message in refused.items():
        log.warning("bundle folder %s refused: %s", folder, message)
    log.info("serving bundles: %s", ", ".join(served) or "none")
    return served, refused


class _AccessLog:
    """One log line per request: method, path, status, time. No query string, header, body or file name."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status, logged = time.perf_counter(), [0], [False]

        def write():
            if not logged[0]:
                logged[0] = True
                log.info("%s %s %d %.0f ms", log_safe(scope["method"], 16), log_safe(scope["path"]), status[0],
                         (time.perf_counter() - start) * 1000)

        async def send_logged(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                write()  # before the last byte leaves: a client that has its answer finds the line written
            await send(message)

        try:
            await self.app(scope, receive, send_logged)
        finally:
            write()


# --------------------------------------------------------------------------------------------------------------------
# The record
# --------------------------------------------------------------------------------------------------------------------
def user_of(request: Request) -> str:
    """Who a request's results are recorded as: its bearer token's name, or "local" on a server without tokens."""
    return getattr(request.state, "user", None) or "local"


def _store_problem(error) -> ApiError:
    """503 `record_unavailable`; the store's own message (which names the database's path or host) goes to the
    server's log, not to the client."""
    from model.store.db import StoreUnavailable

    log.warning("record: %s", log_safe(error.message, 1000))
    said = "The record database can't be reached now. Please try again shortly." \
        if isinstance(error, StoreUnavailable) else "The record database can't be used; the server's log says why."
    return ApiError(503, "record_unavailable", said, headers={"Retry-After": str(RETRY_AFTER_S)})


async def _in_store(work):
    """work(store) on a thread (the database may block), its faults as 503 `record_unavailable`."""
    from starlette.concurrency import run_in_threadpool

    from model.store.db import StoreError
    from model.store.recorder import recorder

    try:
        return await run_in_threadpool(lambda: work(recorder().store()))
    except StoreError as e:
        raise _store_problem(e) from None


# --------------------------------------------------------------------------------------------------------------------
# The app
# --------------------------------------------------------------------------------------------------------------------
def create_app(bundles_root: str | Path | None = None, *, max_upload_bytes: int = MAX_UPLOAD_BYTES,
               timeout_s: float = REQUEST_TIMEOUT_S, workers: int | None = None,
               max_inflight: int = MAX_INFLIGHT, upload_timeout_s: float = UPLOAD_TIMEOUT_S,
               tokens=None, docs: bool | None = None, record: bool = True) -> FastAPI:
    """The ASGI app. Bundles are loaded from `bundles_root` (default: $TORAX_BUNDLES, else model/bundles) when
    the app starts, once; at most `max_inflight` analyses are admitted at once, each on its own thread (so a
    cheap request never waits for a thread behind slow ones), counted from when their upload has arrived (within
    `upload_timeout_s`); `workers` is kept for compatibility, unused.
    `tokens`: bearer tokens required on every path but /healthz (default: $TORAX_API_TOKENS; empty: none); a
    token's name (`name:token`) is the user its results are recorded as. `record`: keep every analysis in the
    record (model/store/; also off with TORAX_RECORD=0).
    `docs`: serve /docs and /redoc (default: only with $TORAX_API_DOCS=1, as Swagger UI loads its scripts from a
    CDN); /openapi.json is always served."""
    if docs is None:
        docs = os.environ.get("TORAX_API_DOCS", "") == "1"

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.served, app.state.refused = _load(bundles_root)
        from model.core.bundle import default_bundle_name, default_problem

        app.state.default = default_bundle_name(app.state.served)
        app.state.default_problem = default_problem(app.state.served, app.state.refused)
        if app.state.default_problem:
            log.error("%s", log_safe(app.state.default_problem, 1000))
        app.state.inflight = 0
        app.state.max_inflight = max(1, int(max_inflight))
        # A thread for every admitted analysis: a cheap request never queues behind slow ones for a thread (they
        # share the CPU instead), and the admission limit is the only queue.
        app.state.pool = ThreadPoolExecutor(app.state.max_inflight, thread_name_prefix="torax-api")
        try:
            yield
        finally:
            app.state.pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(
        title="Tórax API", version="1",
        description="Chest X-ray model bundles over HTTP: the same analysis as `python -m model predict --json`. "
                    f"Uploads up to {max_upload_bytes / 2**20:g} MiB; errors are `{{\"error\": {{\"code\", "
                    "\"message\"}}}`. A decision-support aid, not a diagnosis.",
        lifespan=lifespan,
        docs_url="/docs" if docs else None, redoc_url="/redoc" if docs else None,
    )
    app.add_middleware(BearerAuth, tokens=tokens_from_env() if tokens is None else tokens)
    app.add_middleware(_AccessLog)
    app.add_exception_handler(ApiError, _on_api_error)
    app.add_exception_handler(RequestValidationError, _on_invalid_request)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(Exception, _on_unexpected)

    def served_bundle(request: Request, name: str | None) -> Served:
        served = request.app.state.served
        if not served:
            raise ApiError(503, "no_bundles", "No model bundle is available on this server.")
        if not name and request.app.state.default is None:
            raise ApiError(503, "default_bundle_unavailable", request.app.state.default_problem)
        name = name or request.app.state.default
        if name not in served:
            raise ApiError(404, "unknown_bundle",
                           f"There is no model bundle named {log_safe(name, 80)!r} here "
                           f"(available: {', '.join(served)}).")
        return served[name]

    @app.post("/v1/predict", response_model=PredictAnswer, openapi_extra=UPLOAD_BODY,
              responses=_errors(400, 404, 408, 413, 415, 422, 500, 503, 504),
              summary="Analyse one radiograph")
    async def predict(
        request: Request,
        bundle: str | None = Query(None, description="Bundle name (GET /v1/bundles); default: the default bundle."),
        threshold: float | None = Query(None, ge=0.0, le=1.0, allow_inf_nan=False,
                                        description="Decision threshold in [0, 1]; not with operating_point."),
        operating_point: str | None = Query(None, description="A bundle operating point, e.g. screening, "
                                                              "balanced or confirmatory; default: the bundle's."),
        cam: CamChoice = Query(
            "none", description="Add `overlay_png_base64`: where the models looked, by this method."),
        site: str | None = Query(None, description="A site profile (python -m model site fit) for this bundle: its "
                                                   "recalibration and operating points are used."),
    ):
        from model.core.analysis import resolve_threshold
        from model.sites.profiles import SiteError, load

        served = served_bundle(request, bundle)
        if threshold is not None and operating_point is not None:
            raise ApiError(422, "invalid_parameter", "Give either threshold or operating_point, not both.")
        try:
            profile = load(site, served.bundle) if site else None
        except SiteError as e:
            if e.code == "not_found":  # SiteError's own message names the server's folder and every profile
                raise ApiError(404, "unknown_site", f"There is no site profile named {log_safe(site, 80)!r} for "
                                                    "this bundle here.") from None
            raise ApiError(422, f"site_{e.code}", e.message) from None
        try:
            resolve_threshold(served.bundle, threshold, operating_point, profile)
        except KeyError as e:
            raise ApiError(422, "unknown_operating_point", e.args[0]) from None
        state = request.app.state
        # Only a whole upload is counted: one still arriving (a slow client) holds no analysis slot.
        data, filename = await read_upload(request, max_upload_bytes, upload_timeout_s)
        if state.inflight >= state.max_inflight:
            raise ApiError(503, "busy", "The server is busy with other analyses. Please try again shortly.",
                           headers={"Retry-After": str(RETRY_AFTER_S)})
        state.inflight += 1  # released when the analysis' thread is done, not when the request gives up on it
        loop, submitted = asyncio.get_running_loop(), False

        def release(_=None):
            state.inflight -= 1

        cancel = threading.Event()
        try:
            work = partial(analyse_upload, served, data, filename, threshold, operating_point, cam, profile, cancel,
                           user_of(request) if record else None)
            job = state.pool.submit(work)
            submitted = True
            job.add_done_callback(lambda _: loop.call_soon_threadsafe(release))
            result = await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(job)), timeout_s)
        except TimeoutError:
            cancel.set()  # the analysis stops at its next step; it counts as in flight until it has
            job.cancel()
            raise ApiError(504, "timeout", f"The analysis took longer than {timeout_s:g} s and was abandoned. "
                                           "Please try again later.") from None
        except ApiError:
            raise
        except Cancelled:
            raise ApiError(504, "timeout", "The analysis was abandoned.") from None
        except Exception as exc:  # noqa: BLE001 - only the type is logged: messages may quote data
            log.error("analysis failed with %s", type(exc).__name__)
            raise ApiError(500, "internal_error", "The analysis failed on the server.") from None
        finally:
            if not submitted:
                release()
        if result["error"]:
            code = result["error"]["code"]
            raise ApiError(DECODE_STATUS.get(code, 422), code, result["error"]["message"])
        return result

    # -- the record ------------------------------------------------------------------------------------------
    @app.get("/v1/results", summary="Recorded results, oldest first", responses=_errors(401, 422, 503))
    async def list_results(
        since: str | None = Query(None, description="ISO 8601 date or time (UTC unless an offset is given)."),
        until: str | None = Query(None, description="ISO 8601 date or time; results before it."),
        limit: int = Query(100, ge=1, le=1000, description="At most this many results."),
    ) -> list[dict[str, Any]]:
        from model.store.db import json_ready, parse_time

        try:
            start, end = parse_time(since), parse_time(until)
        except ValueError:
            raise ApiError(422, "invalid_parameter", "since and until must be ISO 8601 dates or times.") from None
        rows = await _in_store(lambda store: store.results(start, end, limit=limit))
        return json_ready(rows)

    @app.get("/v1/results/{result_id}", summary="One recorded result, with its confirmations",
             responses=_errors(401, 404, 503))
    async def one_result(result_id: str) -> dict[str, Any]:
        from model.store.confirmations import Refused, check_id
        from model.store.db import json_ready

        try:
            key = check_id(result_id)
        except Refused:
            raise ApiError(404, "unknown_result", "There is no recorded result with this id.") from None
        found = await _in_store(lambda store: store.result(key))
        if found is None:
            raise ApiError(404, "unknown_result", "There is no recorded result with this id.")
        return json_ready(found)

    @app.post("/v1/results/{result_id}/confirmation", status_code=201, response_model=ConfirmationOut,
              summary="Add the reader's read, or the truth, to a recorded result",
              responses=_errors(401, 404, 422, 503))
    async def confirm(request: Request, result_id: str, body: ConfirmationIn):
        from starlette.concurrency import run_in_threadpool

        from model.store.confirmations import Refused, Source
        from model.store.db import StoreError
        from model.store.recorder import recorder

        try:
            done = await run_in_threadpool(recorder().confirm, result_id, body.label, body.note,
                                           user=user_of(request), source=Source.API)
        except Refused as e:
            raise ApiError(404 if e.code == "unknown_id" else 422,
                           "unknown_result" if e.code == "unknown_id" else e.code, e.message) from None
        except StoreError as e:
            raise _store_problem(e) from None
        return {"id": done.id, "result_id": result_id, "label": done.label, "state": done.state}

    @app.get("/v1/bundles", response_model=BundlesResponse, summary="The model bundles served")
    async def bundles(request: Request):
        state = request.app.state
        return {"default": state.default, "bundles": [describe_bundle(s.bundle) for s in state.served.values()],
                "refused": state.refused}  # bundle.py's messages name the bundle and a code, never a path

    @app.get("/healthz", response_model=Health, responses={503: {"model": Health}}, summary="Liveness")
    async def healthz(request: Request):
        state = request.app.state
        names = list(state.served)
        if names and state.default is not None:
            return JSONResponse({"status": "ok", "bundles": names})
        if not names:
            return JSONResponse({"status": "unavailable", "bundles": [], "default": None,
                                 "problem": state.default_problem}, status_code=503)
        # fail closed: some bundles load, but not the one answering by default
        return JSONResponse({"status": "degraded", "bundles": names, "default": None,
                             "problem": state.default_problem}, status_code=503)

    return app
