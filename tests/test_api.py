"""REST API (model/channels/api.py), tested through a real uvicorn server on a loopback port serving the tiny bundle."""
import base64
import json
import logging
import struct
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import cv2
import httpx
import numpy as np
import pytest
import uvicorn

from model.channels.api import MAX_UPLOAD_BYTES, create_app
from model.core.analysis import analyse

from helpers.images import png_bytes, radiograph, toy_chest
from helpers.servers import serving


@pytest.fixture(scope="module")
def api(tiny_bundles):
    """(base URL, app) of a server started the way `python -m model serve` starts one: bundles from $TORAX_BUNDLES."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORAX_BUNDLES", str(tiny_bundles))
        app = create_app()
        with serving(app) as url:
            yield url, app


@pytest.fixture(scope="module")
def url(api):
    return api[0]


def post(url, data: bytes, filename="chest.png", **params) -> httpx.Response:
    return httpx.post(f"{url}/v1/predict", params=params, files={"file": (filename, data)}, timeout=60)


def png_header_only(width: int, height: int) -> bytes:
    """A well-formed PNG signature and IHDR announcing width × height, and almost no pixel data."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def assert_error(response, status: int, code: str):
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert error["code"] == code and error["message"]


# --------------------------------------------------------------------------------------------------------------------
# Good requests
# --------------------------------------------------------------------------------------------------------------------
def test_healthz_lists_the_loaded_bundles(url):
    r = httpx.get(f"{url}/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok", "bundles": ["pneumonia-kermany"]}


def test_bundles_describe_classes_operating_points_and_evaluation(url, tiny_bundles):
    r = httpx.get(f"{url}/v1/bundles")
    assert r.status_code == 200
    body = json.loads(r.text, parse_constant=lambda c: pytest.fail(f"{c} is not JSON"))  # NaN must become null
    manifest = json.loads((tiny_bundles / "pneumonia-kermany" / "manifest.json").read_text())
    assert body["default"] == "pneumonia-kermany" and body["refused"] == {}
    (info,) = body["bundles"]
    assert info["name"] == manifest["name"] and info["title"] == manifest["title"] and info["task"] == "binary"
    assert info["classes"] == ["NORMAL", "PNEUMONIA"] and info["version"] == manifest["version"]
    assert [m["name"] for m in info["members"]] == [m["name"] for m in manifest["members"]]
    assert {p["name"]: p["threshold"] for p in info["operating_points"]} == \
        {p["name"]: p["threshold"] for p in manifest["operating_points"]}
    assert info["default_operating_point"] == manifest["default_operating_point"]
    assert info["evaluation"]["auc"] == manifest["evaluation"]["auc"]


def test_a_radiograph_gets_the_same_result_object_as_the_cli(api):
    url, app = api
    data = png_bytes(toy_chest(pneumonia=True, seed=1))
    r = post(url, data)
    assert r.status_code == 200, r.text
    result = r.json()
    assert 0.0 <= result["probability"] <= 1.0
    assert set(result["members"]) == {"cnn", "mobilenetv2"} and all(0 <= p <= 1 for p in result["members"].values())
    assert result["label"] is None and result["operating_point"] == "balanced"  # not a radiograph: not assessed
    assert result["error"] is None and result["overlay_png_base64"] is None
    from model.core.guard import for_bundle

    served = app.state.served["pneumonia-kermany"]
    expected = analyse(data, "chest.png", served.ensemble, guard=for_bundle(served.bundle))[0].to_json()
    assert any(w["code"] == "not_chest_xray" for w in result["warnings"])  # a toy_chest is not a radiograph
    assert {k: result[k] for k in expected} == json.loads(json.dumps(expected))


def test_each_result_is_recorded_and_can_be_read_back(url):
    r = post(url, png_bytes(radiograph((256, 224), seed=4)), filename="DOE_JANE.png").json()
    assert r["record"]["state"] == "stored"
    row = httpx.get(f"{url}/v1/results/{r['record']['id']}").json()
    assert (row["channel"], row["user"], row["probability"], row["label"]) == \
        ("api", "local", r["probability"], r["label"])  # no tokens on this server: the user is "local"
    assert row["input_sha256"] and "file" not in row and "DOE" not in json.dumps(row)


def test_operating_point_or_threshold_sets_the_decision(url, tiny_bundles):
    manifest = json.loads((tiny_bundles / "pneumonia-kermany" / "manifest.json").read_text())
    screening = next(p["threshold"] for p in manifest["operating_points"] if p["name"] == "screening")
    data = png_bytes(radiograph((256, 224), seed=2))
    r = post(url, data, operating_point="screening").json()
    assert r["operating_point"] == "screening" and r["threshold"] == screening
    r = post(url, data, threshold=0).json()
    assert r["threshold"] == 0 and r["operating_point"] is None and r["label"] == "PNEUMONIA"


def test_gradcam_overlay_is_a_png_of_the_uploads_size(url):
    r = post(url, png_bytes(toy_chest((300, 200), pneumonia=True, seed=3)), cam="gradcam")
    assert r.status_code == 200, r.text
    result = r.json()
    assert result["cam"] == "gradcam" and result["cam_class"] == "PNEUMONIA"
    overlay = cv2.imdecode(np.frombuffer(base64.b64decode(result["overlay_png_base64"]), np.uint8), cv2.IMREAD_COLOR)
    assert overlay is not None and overlay.shape == (300, 200, 3)


def test_concurrent_requests_each_get_their_own_images_probability(url):
    images = [png_bytes(toy_chest(pneumonia=i % 2 == 1, seed=10 + i)) for i in range(4)]
    single = [post(url, img).json()["probability"] for img in images]
    with ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(lambda i: post(url, images[i % 4]), range(16)))
    assert [r.status_code for r in responses] == [200] * 16
    assert [r.json()["probability"] for r in responses] == [single[i % 4] for i in range(16)]


# --------------------------------------------------------------------------------------------------------------------
# Bad requests: a 4xx with {"error": {"code", "message"}}, never a 5xx
# --------------------------------------------------------------------------------------------------------------------
TRUNCATED = png_bytes(toy_chest(seed=4))[:2000]


@pytest.mark.parametrize("data, status, code", [
    (b"", 400, "empty_file"),
    (np.random.default_rng(0).bytes(4096), 415, "unreadable_image"),
    (TRUNCATED, 422, "truncated_image"),
    (png_header_only(50_000, 50_000), 422, "image_too_large"),
], ids=["empty", "random-bytes", "truncated", "50000x50000-header"])
def test_bad_upload_is_rejected_with_the_decoders_code(url, data, status, code):
    assert_error(post(url, data), status, code)


def test_request_without_a_file_field_or_not_multipart(url):
    assert_error(httpx.post(f"{url}/v1/predict", files={"image": ("x.png", b"abc")}), 422, "missing_file")
    assert_error(httpx.post(f"{url}/v1/predict", content=png_bytes(toy_chest()),
                            headers={"content-type": "image/png"}), 415, "unsupported_media_type")
    assert_error(httpx.post(f"{url}/v1/predict", content=b"--x\r\nnot a part",
                            headers={"content-type": "multipart/form-data; boundary=x"}), 400, "invalid_multipart")


def test_oversize_body_is_413(url):
    r = post(url, b"\0" * (MAX_UPLOAD_BYTES + 1))  # refused on its Content-Length
    assert_error(r, 413, "upload_too_large")

    def chunked():  # no Content-Length: refused while it arrives
        yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="big.png"\r\n\r\n'
        for _ in range(MAX_UPLOAD_BYTES // 2**20 + 2):
            yield b"\0" * 2**20
        yield b"\r\n--b--\r\n"
    r = httpx.post(f"{url}/v1/predict", content=chunked(), headers={"content-type": "multipart/form-data; boundary=b"},
                   timeout=60)
    assert_error(r, 413, "upload_too_large")


@pytest.mark.parametrize("params", [{"threshold": "1.5"}, {"threshold": "-0.1"}, {"threshold": "nan"},
                                    {"threshold": "high"}, {"threshold": "0.5", "operating_point": "screening"}])
def test_bad_threshold_is_422(url, params):
    assert_error(post(url, png_bytes(toy_chest()), **params), 422, "invalid_parameter")


def test_unknown_operating_point_is_422_and_unknown_cam_method_too(url):
    assert_error(post(url, png_bytes(toy_chest()), operating_point="lenient"), 422, "unknown_operating_point")
    assert_error(post(url, png_bytes(toy_chest()), cam="lime"), 422, "invalid_parameter")


def test_unknown_bundle_is_404(url):
    assert_error(post(url, png_bytes(toy_chest()), bundle="no-such-bundle"), 404, "unknown_bundle")


def test_analysis_past_the_time_limit_is_504(tiny_bundles):
    with serving(create_app(tiny_bundles, timeout_s=0)) as slow_url:
        assert_error(post(slow_url, png_bytes(toy_chest())), 504, "timeout")


def test_server_logs_name_the_path_but_never_the_file_or_the_query(url, caplog):
    caplog.set_level(logging.INFO)
    secret = "DOE_JANE_1967-03-02"
    assert post(url, png_bytes(toy_chest()), filename=f"{secret}.png", operating_point="screening").status_code == 200
    assert post(url, b"not an image", filename=f"{secret}.dcm").status_code == 415
    logged = "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith(("httpx", "httpcore")))
    assert "POST /v1/predict 200" in logged and "POST /v1/predict 415" in logged
    assert secret not in logged and "screening" not in logged


def test_serve_subcommand_runs_the_app_on_the_given_port_without_access_log(monkeypatch):
    from model.__main__ import main

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: calls.append((app, kwargs)))
    assert main(["serve", "--port", "8123"]) == 0
    ((app, kwargs),) = calls
    assert app.title == "Tórax API"
    assert (kwargs["host"], kwargs["port"], kwargs["access_log"]) == ("127.0.0.1", 8123, False)
    assert kwargs["log_config"]["loggers"]["model"]["level"] == "INFO"


# --------------------------------------------------------------------------------------------------------------------
# The schema: meaningful, and fuzzing it finds no server error
# --------------------------------------------------------------------------------------------------------------------
def test_openapi_schema_describes_upload_results_and_errors(url):
    schema = httpx.get(f"{url}/openapi.json").json()
    predict = schema["paths"]["/v1/predict"]["post"]
    upload = predict["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert upload["required"] == ["file"] and upload["properties"]["file"]["format"] == "binary"
    assert predict["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/PredictAnswer")
    for status in ("400", "404", "413", "415", "422", "504"):
        assert predict["responses"][status]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody")
    assert {p["name"] for p in predict["parameters"]} == {"bundle", "threshold", "operating_point", "cam", "site"}
    assert set(schema["paths"]) == {"/v1/predict", "/v1/bundles", "/healthz", "/v1/results", "/v1/results/{result_id}",
                                    "/v1/results/{result_id}/confirmation"}


def test_schemathesis_finds_no_server_error(url):
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import strategies as st
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    # Cases that fit the schema must get answers that fit it too; cases that don't must still get no 5xx.
    valid = schema.as_strategy(generation_mode=schemathesis.GenerationMode.POSITIVE).map(lambda c: (c, True))
    invalid = schema.as_strategy(generation_mode=schemathesis.GenerationMode.NEGATIVE).map(lambda c: (c, False))
    stop_at = time.monotonic() + 15  # the time limit: cases drawn after it are not sent
    statuses = []

    @given(case_fits=st.one_of(valid, invalid))
    @settings(max_examples=30, deadline=None, database=None, phases=[Phase.explicit, Phase.generate],
              suppress_health_check=list(HealthCheck))
    def no_server_error(case_fits):
        case, fits = case_fits
        if time.monotonic() > stop_at:
            return
        response = case.call(base_url=url, timeout=30)
        checks = [not_a_server_error]
        if fits:
            checks += [status_code_conformance, content_type_conformance, response_schema_conformance]
        case.validate_response(response, checks=checks)
        statuses.append(response.status_code)

    no_server_error()
    assert statuses and max(statuses) < 500
