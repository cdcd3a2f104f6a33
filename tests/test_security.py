"""Issue #16, "Ready for a hospital network": one acceptance test (or a few) per finding of the review.

Bundles here are hand-made from tiny Keras models (tests/helpers/bundles.write_bundle): no training, so fast."""
import io
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
from PIL import Image

from model.channels.api import create_app
from model.core import bundle as bundle_lib
from model.outputs.safe_text import csv_text, log_safe, md_escape

from helpers.bundles import brightness_model, write_bundle
from helpers.images import png_bytes, toy_chest
from helpers.servers import serving

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def bundles(tmp_path, monkeypatch):
    """A bundles root with the default bundle and another task, both good; TORAX_* unset."""
    for var in ("TORAX_DEFAULT_BUNDLE", "TORAX_TRUSTED_KEYS", "TORAX_API_TOKENS"):
        monkeypatch.delenv(var, raising=False)
    root = tmp_path / "bundles"
    write_bundle(root, "pneumonia-kermany", {"a": brightness_model("a")})
    write_bundle(root, "other-task", {"a": brightness_model("a")}, classes=("NO_FINDING", "FINDING"))
    monkeypatch.setenv("TORAX_BUNDLES", str(root))
    return root


def tamper(root: Path, name: str = "pneumonia-kermany"):
    member = root / name / "members" / "a.keras"
    member.write_bytes(member.read_bytes() + b"\0")


# --------------------------------------------------------------------------------------------------------------------
# 1. Fail closed: a refused default bundle is not replaced
# --------------------------------------------------------------------------------------------------------------------
def test_tampered_default_bundle_fails_closed_in_the_cli(bundles, tmp_path, capsys):
    from model.__main__ import main

    tamper(bundles)
    loaded, refused = bundle_lib.load_all()
    assert set(loaded) == {"other-task"} and bundle_lib.default_bundle_name(loaded) is None
    image = tmp_path / "x.png"
    image.write_bytes(png_bytes(toy_chest((64, 64))))
    with pytest.raises(SystemExit) as exit_:
        main(["predict", str(image), "--json"])
    assert exit_.value.code not in (0, None)
    message = str(exit_.value.code)
    assert "pneumonia-kermany" in message and "refused" in message and "checksum" in message
    assert capsys.readouterr().out == ""  # no answer from another bundle
    # The operator may name another bundle explicitly.
    assert main(["predict", str(image), "--json", "--bundle", "other-task"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["bundle"] == "other-task"


def test_tampered_default_bundle_fails_closed_in_the_api(bundles, monkeypatch):
    tamper(bundles)
    with serving(create_app()) as url:
        files = {"file": ("x.png", png_bytes(toy_chest((64, 64))), "image/png")}
        r = httpx.post(f"{url}/v1/predict", files=files, timeout=60)
        assert r.status_code == 503 and r.json()["error"]["code"] == "default_bundle_unavailable"
        assert "pneumonia-kermany" in r.json()["error"]["message"]
        health = httpx.get(f"{url}/healthz", timeout=30)
        assert health.status_code == 503 and health.json()["status"] == "degraded"
        assert "pneumonia-kermany" in health.json()["problem"]
        explicit = httpx.post(f"{url}/v1/predict", params={"bundle": "other-task"}, files=files, timeout=60)
        assert explicit.status_code == 200 and explicit.json()["bundle"] == "other-task"
        listing = httpx.get(f"{url}/v1/bundles", timeout=30).json()
        assert listing["default"] is None and str(bundles) not in json.dumps(listing)
    monkeypatch.setenv("TORAX_DEFAULT_BUNDLE", "other-task")  # a fallback named by the operator
    with serving(create_app()) as url:
        health = httpx.get(f"{url}/healthz", timeout=30)
        assert health.status_code == 200 and health.json()["status"] == "ok"


def test_tampered_default_bundle_fails_closed_in_the_app(bundles, point_app_at):
    from streamlit.testing.v1 import AppTest

    tamper(bundles)
    point_app_at(bundles)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()
    at.switch_page("pages/diagnose.py").run()
    assert not at.exception
    errors = "\n".join(e.value for e in at.error)
    assert "pneumonia" in errors and "no other model is used in its place" in errors
    assert "bundle" not in at.session_state or at.session_state["bundle"] is None  # nothing chosen for the user
    assert not at.get("file_uploader") or at.get("file_uploader")  # the page stops before any analysis
    assert "NO_FINDING" not in "\n".join(m.value for m in at.markdown)


# --------------------------------------------------------------------------------------------------------------------
# 5. Provenance: member paths confined to the bundle folder; no server paths in messages; signatures
# --------------------------------------------------------------------------------------------------------------------
def _point_member_at(folder: Path, target: str):
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["members"][0]["file"] = target
    (folder / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink"])
def test_member_paths_cannot_leave_the_bundle_folder(bundles, tmp_path, how):
    folder = bundles / "pneumonia-kermany"
    outside = tmp_path / "x.keras"
    outside.write_bytes((folder / "members" / "a.keras").read_bytes())  # same bytes: the checksum would match
    if how == "dotdot":
        _point_member_at(folder, "../../x.keras")
    elif how == "absolute":
        _point_member_at(folder, str(outside))
    else:
        (folder / "members" / "a.keras").unlink()
        (folder / "members" / "a.keras").symlink_to(outside)
    with pytest.raises(bundle_lib.UnsafePath) as refused:
        bundle_lib.load_bundle(folder)
    assert refused.value.code == "unsafe_path"
    loaded, errors = bundle_lib.load_all()
    assert "pneumonia-kermany" not in loaded and "unsafe_path" in errors["pneumonia-kermany"]
    assert str(tmp_path) not in errors["pneumonia-kermany"]


def test_refusal_messages_never_show_server_paths(bundles):
    (bundles / "other-task" / "members" / "a.keras").write_bytes(b"PK\x03\x04 not a keras archive")
    manifest = json.loads((bundles / "other-task" / "manifest.json").read_text())
    manifest["members"][0]["sha256"] = bundle_lib.sha256_file(bundles / "other-task" / "members" / "a.keras")
    (bundles / "other-task" / "manifest.json").write_text(json.dumps(manifest))
    tamper(bundles)
    _, errors = bundle_lib.load_all()
    assert set(errors) == {"pneumonia-kermany", "other-task"}
    for message in errors.values():
        assert str(bundles) not in message and "/tmp" not in message


def test_only_signed_bundles_load_when_trusted_keys_are_configured(bundles, tmp_path, monkeypatch):
    from training.export import new_signing_key, sign_bundle

    new_signing_key(tmp_path / "k.pem", tmp_path / "k.pub.pem")
    new_signing_key(tmp_path / "other.pem", tmp_path / "other.pub.pem")
    sign_bundle(bundles / "pneumonia-kermany", tmp_path / "k.pem")
    sign_bundle(bundles / "other-task", tmp_path / "other.pem")  # signed, but by a key nobody trusts
    assert set(bundle_lib.load_all()[0]) == {"pneumonia-kermany", "other-task"}  # no keys configured: all load

    monkeypatch.setenv("TORAX_TRUSTED_KEYS", str(tmp_path / "k.pub.pem"))
    loaded, errors = bundle_lib.load_all()
    assert set(loaded) == {"pneumonia-kermany"} and "bad_signature" in errors["other-task"]

    (bundles / "other-task" / "manifest.sig").unlink()  # unsigned
    assert "unsigned_bundle" in bundle_lib.load_all()[1]["other-task"]

    # An edited manifest (e.g. a new checksum for a swapped member) breaks the signature.
    manifest = json.loads((bundles / "pneumonia-kermany" / "manifest.json").read_text())
    manifest["members"][0]["temperature"] = 0.01
    (bundles / "pneumonia-kermany" / "manifest.json").write_text(json.dumps(manifest))
    loaded, errors = bundle_lib.load_all()
    assert loaded == {} and "bad_signature" in errors["pneumonia-kermany"]

    monkeypatch.setenv("TORAX_TRUSTED_KEYS", str(tmp_path / "missing.pem"))  # unreadable key: nothing loads
    loaded, errors = bundle_lib.load_all()
    assert loaded == {} and all("trusted_keys_unreadable" in m for m in errors.values())


def test_sign_command(bundles, tmp_path, monkeypatch):
    from training.__main__ import main

    assert main(["keygen", "--private", str(tmp_path / "k.pem"), "--public", str(tmp_path / "k.pub")]) == 0
    assert main(["sign", "--bundle", str(bundles / "pneumonia-kermany"), "--key", str(tmp_path / "k.pem")]) == 0
    monkeypatch.setenv("TORAX_TRUSTED_KEYS", str(tmp_path / "k.pub"))
    assert set(bundle_lib.load_all()[0]) == {"pneumonia-kermany"}


# --------------------------------------------------------------------------------------------------------------------
# 2. Bounded work: pixel budget, in-flight limit, cancellation, overlay size, header deadline, tokens
# --------------------------------------------------------------------------------------------------------------------
def _skip_sub_blocks(data: bytes, p: int) -> int:
    while data[p]:
        p += data[p] + 1
    return p + 1


@pytest.fixture(scope="module")
def gif_bomb() -> bytes:
    """~2.4 MB: 64 blank 7000 × 7000 frames (one frame encoded by Pillow, its image block repeated)."""
    buf = io.BytesIO()
    Image.new("P", (7000, 7000), 0).save(buf, "GIF")
    data = buf.getvalue()
    pos = 13 + (3 * (2 << (data[10] & 7)) if data[10] & 0x80 else 0)
    head_end = pos
    while data[pos] == 0x21:
        pos = _skip_sub_blocks(data, pos + 2)
    start, local = pos, data[pos + 9]
    pos += 10 + (3 * (2 << (local & 7)) if local & 0x80 else 0)
    frame = data[start:_skip_sub_blocks(data, pos + 1)]
    return data[:head_end] + frame * 64 + b";"


def test_multi_frame_files_are_decoded_within_a_pixel_budget(gif_bomb):
    from model.io import NoUsableFrame, decode
    from model.io.base import MAX_TOTAL_PIXELS, frames_to_scan

    assert frames_to_scan(64, 7000, 7000) * 7000 * 7000 <= MAX_TOTAL_PIXELS
    assert frames_to_scan(3, 100, 100) == 3 and frames_to_scan(1000, 10, 10) == 64
    with pytest.raises(NoUsableFrame, match="first 1 are all blank"):
        decode(gif_bomb, "bomb.gif")


def test_gif_bomb_flood_does_not_stall_a_normal_request(bundles, gif_bomb):
    """Four 64-frame 7000 × 7000 GIFs at once: each gets an error status, and a normal request sent meanwhile is
    answered within 3 s (scaled by how slow this machine is for that request alone, so a loaded CI box passes)."""
    normal = {"file": ("chest.png", png_bytes(toy_chest((256, 224))), "image/png")}
    with serving(create_app()) as url, httpx.Client(timeout=300) as client:
        client.post(f"{url}/v1/predict", files=normal)  # warm
        t = time.perf_counter()
        assert client.post(f"{url}/v1/predict", files=normal).status_code == 200
        alone = time.perf_counter() - t

        def bomb(i):
            t0 = time.perf_counter()
            r = httpx.post(f"{url}/v1/predict", files={"file": (f"b{i}.gif", gif_bomb, "image/gif")}, timeout=300)
            return r.status_code, r.json()["error"]["code"], time.perf_counter() - t0

        with ThreadPoolExecutor(4) as pool:
            bombs = [pool.submit(bomb, i) for i in range(4)]
            time.sleep(0.5)  # the uploads are in and being decoded
            t = time.perf_counter()
            r = client.post(f"{url}/v1/predict", files=normal)
            during = time.perf_counter() - t
            results = [b.result() for b in bombs]
    print(f"\nGIF flood: normal request alone {alone:.2f} s, during the flood {during:.2f} s; GIFs: "
          + ", ".join(f"{s} {c} in {d:.2f} s" for s, c, d in results))
    assert r.status_code == 200
    assert all(400 <= status < 600 for status, _, _ in results)
    assert during < max(3.0, 6 * alone)


def test_in_flight_limit_answers_503_at_once(bundles, monkeypatch):
    import model.channels.api as api

    release, started = threading.Event(), threading.Event()

    def held(*args, **kwargs):
        started.set()
        release.wait(60)
        return api_result

    api_result = None
    monkeypatch.setattr(api, "analyse_upload", held)
    files = {"file": ("x.png", png_bytes(toy_chest((64, 64))), "image/png")}
    with serving(create_app(max_inflight=1)) as url:
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(httpx.post, f"{url}/v1/predict", files=files, timeout=60)
            assert started.wait(60)
            t = time.perf_counter()
            r = httpx.post(f"{url}/v1/predict", files=files, timeout=60)
            elapsed = time.perf_counter() - t
            release.set()
            first.result()
        assert r.status_code == 503 and r.json()["error"]["code"] == "busy"
        assert r.headers["retry-after"].isdigit() and elapsed < 2.0
        print(f"\nbusy answered in {elapsed * 1000:.0f} ms")


def test_a_timed_out_analysis_is_cancelled_and_still_counts_until_it_stops(bundles, monkeypatch):
    import model.channels.api as api

    seen = {}
    proceed = threading.Event()

    def slow(served, data, filename, threshold, point, cam, site=None, cancel=None, user=None):
        proceed.wait(60)
        seen["cancelled"] = cancel.is_set()
        raise api.Cancelled()

    monkeypatch.setattr(api, "analyse_upload", slow)
    app = create_app(timeout_s=0.5, max_inflight=1)
    files = {"file": ("x.png", png_bytes(toy_chest((64, 64))), "image/png")}
    with serving(app) as url:
        r = httpx.post(f"{url}/v1/predict", files=files, timeout=60)
        assert r.status_code == 504
        assert httpx.post(f"{url}/v1/predict", files=files, timeout=60).status_code == 503  # still running
        proceed.set()
        deadline = time.monotonic() + 30
        while app.state.inflight and time.monotonic() < deadline:
            time.sleep(0.05)
        assert app.state.inflight == 0 and seen["cancelled"] is True


def test_overlays_in_answers_are_downscaled(bundles):
    import base64

    big = cv2.resize(toy_chest((256, 224)), (2400, 2700))
    with serving(create_app()) as url:
        r = httpx.post(f"{url}/v1/predict", params={"cam": "gradcam"},
                       files={"file": ("big.png", png_bytes(big), "image/png")}, timeout=300)
    assert r.status_code == 200, r.text
    overlay = cv2.imdecode(np.frombuffer(base64.b64decode(r.json()["overlay_png_base64"]), np.uint8), 1)
    assert max(overlay.shape[:2]) == 1024 and overlay.shape[0] > overlay.shape[1]


def test_slow_headers_are_cut_off():
    from model.channels.http_guard import HeaderTimeoutH11Protocol

    class Quick(HeaderTimeoutH11Protocol):
        header_timeout_s = 0.5

    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(tokens=()), http=Quick, log_config=None, lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        client = socket.create_connection(sock.getsockname(), timeout=10)
        client.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # ... and never the blank line
        t = time.perf_counter()
        assert client.recv(100) == b""  # closed by the server
        assert time.perf_counter() - t < 5
        idle = socket.create_connection(sock.getsockname(), timeout=10)  # connects, sends nothing
        assert idle.recv(100) == b""
    finally:
        server.should_exit = True
        thread.join(10)


def test_bearer_tokens(bundles, monkeypatch):
    from model.__main__ import main

    with serving(create_app(tokens={"s3cret-token"})) as url:
        assert httpx.get(f"{url}/v1/bundles").status_code == 401
        assert httpx.get(f"{url}/v1/bundles", headers={"Authorization": "Bearer nope"}).status_code == 401
        assert httpx.get(f"{url}/v1/bundles", headers={"Authorization": "Bearer s3cret-token"}).status_code == 200
        assert httpx.get(f"{url}/healthz").status_code == 200  # liveness probes need no token
        assert httpx.get(f"{url}/docs").status_code == 401
    with serving(create_app(tokens=())) as url:
        assert httpx.get(f"{url}/docs").status_code == 404  # off by default: Swagger UI would load from a CDN
        assert httpx.get(f"{url}/openapi.json").status_code == 200
    monkeypatch.delenv("TORAX_API_TOKENS", raising=False)
    assert main(["serve", "--host", "0.0.0.0"]) == 2  # a non-loopback bind needs tokens


# --------------------------------------------------------------------------------------------------------------------
# 3, 4, 7, 8. No injection: Markdown, CSV, log lines, DICOM metadata
# --------------------------------------------------------------------------------------------------------------------
LINK = "[Session expired - click here](https:evil.example).jpeg"
IMAGE = "![x](https:127.0.0.1:9).jpeg"
FORMULA = "@SUM(1+9)*cmd|' -c calc'!A0.jpeg"


def test_markdown_escaping():
    for name in (LINK, IMAGE, "**bold** :red[x] :material/home: $x$ <b>x</b>\nnext"):
        escaped = md_escape(name)
        assert "\n" not in escaped
        for special in "[]()!*:$<>":
            assert special not in escaped.replace("\\" + special, "")


def test_file_names_are_shown_as_text_in_the_app(bundles, point_app_at):
    from streamlit.testing.v1 import AppTest

    point_app_at(bundles)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()
    at.switch_page("pages/worklist.py").run()
    files = [(LINK, b"not an image", "image/jpeg"), (IMAGE, b"", "image/jpeg"),
             (FORMULA, png_bytes(toy_chest((64, 64))), "image/jpeg")]
    at.file_uploader(key="wl_upload").set_value(files).run()
    assert not at.exception, at.exception
    box = at.error[-1].value
    assert md_escape(LINK) in box and md_escape(IMAGE) in box and "](https" not in box
    table = at.dataframe[0].value
    entry = list(table["file"]).index(FORMULA)
    at.session_state["wl_table"] = {"selection": {"rows": [entry], "columns": []}}
    at.run()
    captions = "\n".join(c.value for c in at.caption)
    assert md_escape(FORMULA) in captions  # the CSV is checked cell by cell below


def test_csv_cells_cannot_start_a_formula():
    import pandas as pd

    from model.core.types import Result
    from model.outputs.downloads import worklist_rows

    rows = worklist_rows([Result(file=name, bundle="b", task="binary", error={"code": "x", "message": "-1 frames"})
                          for name in (FORMULA, "=1+1.png", "+x.png", "-x.png", "\tx.png", "\rx.png", "ok.png")])
    text = csv_text(pd.DataFrame(rows))
    import csv

    cells = [row[0] for row in csv.reader(io.StringIO(text, newline=""))][1:]
    assert cells[0].startswith("'@SUM") and all(c.startswith("'") for c in cells[:6]) and cells[6] == "ok.png"
    assert "'-1 frames" in text


def test_request_paths_cannot_forge_log_lines(bundles, caplog):
    assert log_safe("a\nb\rc\x1b[31m\u2028") == "a\\x0ab\\x0dc\\x1b[31m\\u2028"
    with caplog.at_level(logging.INFO, logger="model.channels.api"), serving(create_app()) as url:
        httpx.get(f"{url}/v1/x%0A127.0.0.1%20GET%20/admin%20200", timeout=30)
    lines = [r.getMessage() for r in caplog.records if r.name == "model.channels.api" and "/v1/x" in r.getMessage()]
    assert lines and all("\n" not in line and "\\x0a" in line for line in lines)


def test_dicom_metadata_keeps_only_defined_terms():
    from model.io import decode

    from helpers.dicom import chest_dx, to_bytes

    pixels = toy_chest((64, 64))
    meta = decode(to_bytes(chest_dx(pixels, patient_name="LI^WU", body_part="LI WU", view="WU"))).meta
    assert "body_part" not in meta and "view_position" not in meta and meta["modality"] == "DX"
    meta = decode(to_bytes(chest_dx(pixels, body_part="CHEST", view="PA"))).meta
    assert meta["body_part"] == "CHEST" and meta["view_position"] == "PA"


# --------------------------------------------------------------------------------------------------------------------
# 7. CLI options are validated by the parser
# --------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("options", [["--operating-point", "foo"], ["--threshold", "7"], ["--threshold", "nan"],
                                     ["--threshold", "abc"]])
def test_bad_cli_options_exit_2_without_a_traceback(options):
    run = subprocess.run([sys.executable, "-m", "model", "predict", "x.png", *options], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "Traceback" not in run.stderr and "error:" in run.stderr


# --------------------------------------------------------------------------------------------------------------------
# 6. Safe defaults: the app binds loopback and makes no outbound request at start-up
# --------------------------------------------------------------------------------------------------------------------
SITECUSTOMIZE = '''
import os, socket
_connect = socket.socket.connect
def connect(self, address):
    host = address[0] if isinstance(address, tuple) else str(address)
    if self.family in (socket.AF_INET, socket.AF_INET6) and host not in ("127.0.0.1", "::1", "localhost"):
        with open(os.environ["OUTBOUND_LOG"], "a") as f:
            f.write(f"{host}\\n")
        raise OSError("outbound connection blocked by the test")
    return _connect(self, address)
socket.socket.connect = connect
'''


def test_the_app_binds_loopback_and_makes_no_outbound_request_at_start_up(tmp_path):
    import tomllib

    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert config["server"]["address"] == "127.0.0.1" and config["browser"]["gatherUsageStats"] is False
    (tmp_path / "sitecustomize.py").write_text(SITECUSTOMIZE)
    log = tmp_path / "outbound.log"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "OUTBOUND_LOG": str(log)}
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/_stcore/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        else:
            pytest.fail("streamlit did not start")
        httpx.get(f"http://127.0.0.1:{port}/", timeout=30)
        time.sleep(2)
    finally:
        proc.terminate()
        out = proc.communicate(timeout=30)[0]
    assert not log.exists() or log.read_text() == "", log.read_text()
    assert "External URL" not in out and "Network URL" not in out and f"127.0.0.1:{port}" in out
