"""The record over the REST API (model/channels/api.py): `GET /v1/results`, `GET /v1/results/{id}` and
`POST /v1/results/{id}/confirmation` need the token when tokens are configured, record the token's name as the
user, refuse what they can't use with a clear code, and nothing alters or deletes a result. (That `POST
/v1/predict` records each result: tests/test_api.py, on its served bundle.) The app here serves no bundle: reading
and confirming the record needs none."""
from __future__ import annotations

import uuid

import pytest
from fastapi.testclient import TestClient

from model.channels.api import create_app
from model.store.db import Store

from helpers.records import shipped_bundle, write

ALICE = {"Authorization": "Bearer s3cret"}
BARE = {"Authorization": "Bearer bare-token"}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(client, record ids): two results in a fresh record, and an API with a named and a bare token."""
    state = tmp_path_factory.mktemp("api-state")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORAX_STATE", str(state))
        store = Store.open()
        ids = write(store, shipped_bundle(), [0.9, 0.2])
        store.close()
        with TestClient(create_app(tmp_path_factory.mktemp("no-bundles"), tokens={"alice:s3cret", "bare-token"})) \
                as client:
            yield client, ids


def test_the_record_needs_the_token(served):
    client, (rid, _) = served
    for method, path, body in (("GET", f"/v1/results/{rid}", None), ("GET", "/v1/results", None),
                               ("POST", f"/v1/results/{rid}/confirmation", {"label": "NORMAL"})):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Bearer alice"}):
            r = client.request(method, path, json=body, headers=headers)
            assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    r = client.get(f"/v1/results/{rid}", headers=ALICE)
    assert r.status_code == 200 and r.json()["id"] == rid and r.json()["created_at"].endswith("Z")
    listed = client.get("/v1/results", params={"since": "2025-03-03", "limit": 1}, headers=BARE)
    assert listed.status_code == 200 and [x["id"] for x in listed.json()] == [rid]


def test_a_confirmation_is_added_as_the_tokens_user_and_bad_ones_are_refused(served):
    client, (_, rid) = served
    r = client.post(f"/v1/results/{rid}/confirmation", json={"label": "pneumonia", "note": "lobar"}, headers=ALICE)
    assert r.status_code == 201 and r.json()["label"] == "PNEUMONIA" and r.json()["state"] == "stored"
    assert client.post(f"/v1/results/{rid}/confirmation", json={"label": "unsure"}, headers=BARE).status_code == 201
    row = client.get(f"/v1/results/{rid}", headers=ALICE).json()
    (first, second) = row["confirmations"]
    assert (first["label"], first["user"], first["source"], first["note"]) == ("PNEUMONIA", "alice", "api", "lobar")
    assert second["user"].startswith("token-") and "bare" not in second["user"]  # named, but not revealed
    assert row["confirmed"]["label"] == "UNSURE"
    for body, code in (({"label": "maybe"}, "unknown_label"), ({"label": "NORMAL", "note": "x" * 1001},
                                                                "invalid_parameter"), ({}, "invalid_parameter")):
        r = client.post(f"/v1/results/{rid}/confirmation", json=body, headers=ALICE)
        assert r.status_code == 422 and r.json()["error"]["code"] == code, r.text
    for unknown in (str(uuid.uuid4()), "not-an-id"):
        r = client.post(f"/v1/results/{unknown}/confirmation", json={"label": "NORMAL"}, headers=ALICE)
        assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_result"
        assert client.get(f"/v1/results/{unknown}", headers=ALICE).status_code == 404
    r = client.get("/v1/results", params={"since": "last tuesday"}, headers=ALICE)
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_parameter"


def test_nothing_alters_or_deletes_a_result(served):
    client, (rid, _) = served
    before = client.get(f"/v1/results/{rid}", headers=ALICE).json()
    for method in ("PUT", "PATCH", "DELETE"):
        for path in (f"/v1/results/{rid}", f"/v1/results/{rid}/confirmation", "/v1/results"):
            r = client.request(method, path, json={"label": "NORMAL"}, headers=ALICE)
            assert r.status_code == 405, (method, path, r.status_code)
    assert client.get(f"/v1/results/{rid}", headers=ALICE).json() == before
