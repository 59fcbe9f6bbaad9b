"""Several nodes on one PostgreSQL: one user directory, whichever node a client reaches."""

from __future__ import annotations

import pytest


def test_two_nodes_share_one_directory(make_server, backend):
    if backend != "postgresql":
        pytest.skip("scale-out needs the PostgreSQL backend (SQLite is one node's own file)")
    a, b = make_server.nodes(2)  # started together: one of them migrates
    assert a.ports and b.ports, a.log() + b.log()
    name, password = a.create_user()
    token = b.login(name, password)  # created on a, logs in on b
    with a.client(token) as http:
        assert http.get("/api/v1/me").json()["name"] == name
        token_id = http.get("/api/v1/tokens").json()[0]["id"]
        assert http.delete(f"/api/v1/tokens/{token_id}").status_code == 204
    with b.client(token) as http:
        assert http.get("/api/v1/me").status_code == 401  # revoked on a, refused on b
    with b.admin() as http:
        assert http.patch(f"/api/v1/users/{name}", json={"disabled": True}).status_code == 200
    with a.client() as http:
        refused = http.post("/api/v1/tokens", json={"username": name, "password": password})
    assert refused.status_code == 401
    assert a.stop() == 0 and b.stop() == 0
