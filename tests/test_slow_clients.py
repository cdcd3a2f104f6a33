"""Slow clients can't lock others out of the REST API (issue 23, item 4): an upload counts against the in-flight
limit only once it has arrived, it must arrive within a deadline, and one client address can hold only a few
connections that are still sending. One real uvicorn server on loopback for the module, started with the settings
`python -m model serve` uses (model.channels.http_guard.uvicorn_options); the slow clients come from their own loopback
addresses (127.0.0.0/8 is all loopback on Linux)."""
from __future__ import annotations

import socket
import time
from urllib.parse import urlsplit

import cv2
import httpx
import pytest

from model.channels.api import create_app
from model.channels.http_guard import MAX_PENDING_PER_CLIENT, uvicorn_options

from helpers.images import radiograph
from helpers.servers import serving

UPLOAD_TIMEOUT_S = 6.0
SLOW_UPLOAD = (b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
               b"Content-Length: 100000\r\n\r\n--b\r\n")  # ... and the rest never comes
SLOW_HEADERS = b"POST /v1/predict HTTP/1.1\r\nHost: x\r\n"  # ... and never the blank line


@pytest.fixture(scope="module")
def server(tiny_bundles):
    """(host, port) of the API served as `serve` serves it, with at most 2 analyses at once."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORAX_BUNDLES", str(tiny_bundles))
        app = create_app(max_inflight=2, upload_timeout_s=UPLOAD_TIMEOUT_S, tokens=())
        with serving(app, **uvicorn_options()) as url:
            parts = urlsplit(url)
            yield parts.hostname, parts.port


def connect(server, source: str, payload: bytes) -> socket.socket:
    client = socket.create_connection(server, timeout=10, source_address=(source, 0))
    client.sendall(payload)
    return client


def is_open(client: socket.socket) -> bool:
    """Nothing received and not closed by the server (checked without waiting)."""
    client.setblocking(False)
    try:
        return client.recv(1, socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        client.setblocking(True)


def normal_request(server, source: str = "127.0.0.1") -> tuple[httpx.Response, float]:
    image = cv2.imencode(".png", radiograph((256, 224)))[1].tobytes()
    with httpx.Client(transport=httpx.HTTPTransport(local_address=source), timeout=30) as client:
        start = time.perf_counter()
        r = client.post(f"http://{server[0]}:{server[1]}/v1/predict", files={"file": ("chest.png", image)})
        return r, time.perf_counter() - start


def test_a_normal_request_answers_while_50_slow_uploads_hold_connections(server):
    normal_request(server)  # warm
    slow = [connect(server, f"127.0.0.{10 + i}", SLOW_UPLOAD) for i in range(50)]
    try:
        time.sleep(0.5)  # every upload has started and is waiting for its body
        r, took = normal_request(server)
        print(f"\nnormal request with 50 slow uploads open: {r.status_code} in {took:.2f} s")
        assert r.status_code == 200, r.text  # before: 503 busy, the slow uploads held every analysis slot
        assert took < 10
        assert sum(is_open(c) for c in slow) == 50  # they were still there
        # The body deadline: each slow upload is answered 408 and closed.
        slow[0].settimeout(UPLOAD_TIMEOUT_S + 20)
        assert slow[0].recv(200).startswith(b"HTTP/1.1 408")
    finally:
        for c in slow:
            c.close()


def test_one_client_holds_only_a_few_pending_connections(server):
    source = "127.0.0.77"
    crowd = [connect(server, source, SLOW_HEADERS) for _ in range(45)]
    try:
        time.sleep(0.5)
        still_open = [is_open(c) for c in crowd]
        # the oldest were closed to make room for the newest: the client's own new requests get through
        assert still_open == [False] * (45 - MAX_PENDING_PER_CLIENT) + [True] * MAX_PENDING_PER_CLIENT
        r, _ = normal_request(server, source)
        assert r.status_code == 200, r.text
        r, _ = normal_request(server)  # and everyone else's
        assert r.status_code == 200, r.text
    finally:
        for c in crowd:
            c.close()
