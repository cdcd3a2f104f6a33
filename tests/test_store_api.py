"""The record over the REST API (model/channels/api.py): `POST /v1/predict` records each result as the token's
user and says where it is kept; `GET /v1/results`, `GET /v1/results/{id}` and `POST /v1/results/{id}/confirmation`
need the token when tokens are configured, refuse what they can't use with a clear code, and nothing alters or
deletes a result."""
from __future__ import annotations

import uuid

import pytest
from fastapi.testclient import TestClient

from model.channels.api import create_app

from helpers.images import png_bytes, radiograph

ALICE = {"Authorization": "Bearer s3cret"}
BARE = {"Authorization": "Bearer bare-token"}


@pytest.fixture(scope="module")
def client(tiny_bundles, tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORAX_BUNDLES", str(tiny_bundles))
        mp.setenv("TORAX_STATE", str(tmp_path_factory.mktemp("api-state")))
        with TestClient(create_app(tokens={"alice:s3cret", "bare-token"})) as client:
            yield client


@pytest.fixture(scope="module")
def recorded(client) -> dict:
    r = client.post("/v1/predict", files={"file": ("DOE_JANE.png", png_bytes(radiograph(seed=5)), "image/png")},
                    headers=ALICE)
    assert r.status_code == 200, r.text
    return r.json()


def test_predict_records_the_result_as_the_tokens_user(client, recorded):
    assert recorded["record"]["state"] == "stored"
    r = client.get(f"/v1/results/{recorded['record']['id']}", headers=ALICE)
    assert r.status_code == 200
    row = r.json()
    assert row["channel"] == "api" and row["user"] == "alice" and row["probability"] == recorded["probability"]
    assert row["label"] == recorded["label"] and row["confirmations"] == [] and "file" not in row
    assert row["created_at"].endswith("Z")
    listed = client.get("/v1/results", params={"since": row["created_at"][:10]}, headers=BARE)
    assert listed.status_code == 200 and recorded["record"]["id"] in [x["id"] for x in listed.json()]
    other = client.post("/v1/predict", files={"file": ("x.png", png_bytes(radiograph(seed=6)), "image/png")},
                        headers=BARE).json()
    user = client.get(f"/v1/results/{other['record']['id']}", headers=BARE).json()["user"]
    assert user.startswith("token-") and "bare" not in user  # a bare token is named without being revealed


def test_the_record_needs_the_token(client, recorded):
    rid = recorded["record"]["id"]
    for method, path, body in (("GET", f"/v1/results/{rid}", None), ("GET", "/v1/results", None),
                               ("POST", f"/v1/results/{rid}/confirmation", {"label": "NORMAL"})):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Bearer alice"}):
            r = client.request(method, path, json=body, headers=headers)
            assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"


def test_a_confirmation_is_added_and_bad_ones_are_refused(client, recorded):
    rid = recorded["record"]["id"]
    r = client.post(f"/v1/results/{rid}/confirmation", json={"label": "pneumonia", "note": "lobar"}, headers=ALICE)
    assert r.status_code == 201 and r.json()["label"] == "PNEUMONIA" and r.json()["state"] == "stored"
    r = client.post(f"/v1/results/{rid}/confirmation", json={"label": "unsure"}, headers=BARE)
    assert r.status_code == 201
    row = client.get(f"/v1/results/{rid}", headers=ALICE).json()
    assert [(c["label"], c["user"], c["source"]) for c in row["confirmations"]] == \
        [("PNEUMONIA", "alice", "api"), ("UNSURE", row["confirmations"][1]["user"], "api")]
    assert row["confirmed"]["label"] == "UNSURE"
    for body, status, code in (({"label": "maybe"}, 422, "unknown_label"),
                               ({"label": "NORMAL", "note": "x" * 1001}, 422, "invalid_parameter"),
                               ({}, 422, "invalid_parameter")):
        r = client.post(f"/v1/results/{rid}/confirmation", json=body, headers=ALICE)
        assert r.status_code == status and r.json()["error"]["code"] == code, r.text
    for unknown in (str(uuid.uuid4()), "not-an-id"):
        r = client.post(f"/v1/results/{unknown}/confirmation", json={"label": "NORMAL"}, headers=ALICE)
        assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_result"
        assert client.get(f"/v1/results/{unknown}", headers=ALICE).status_code == 404
    r = client.get("/v1/results", params={"since": "last tuesday"}, headers=ALICE)
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_parameter"


def test_nothing_alters_or_deletes_a_result(client, recorded):
    rid = recorded["record"]["id"]
    before = client.get(f"/v1/results/{rid}", headers=ALICE).json()
    for method in ("PUT", "PATCH", "DELETE"):
        for path in (f"/v1/results/{rid}", f"/v1/results/{rid}/confirmation", "/v1/results"):
            r = client.request(method, path, json={"label": "NORMAL"}, headers=ALICE)
            assert r.status_code == 405, (method, path, r.status_code)
    after = client.get(f"/v1/results/{rid}", headers=ALICE).json()
    assert {k: v for k, v in after.items() if k not in ("confirmations", "confirmed")} == \
        {k: v for k, v in before.items() if k not in ("confirmations", "confirmed")}
