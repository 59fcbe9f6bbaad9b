"""The core JSON API over real HTTP, on both backends: tokens, users, denials, errors."""

from __future__ import annotations



from conftest import AgoraServer

PROBLEM = "application/problem+json"


def assert_problem(response, status: int, slug: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body = response.json()
    assert body["status"] == status and body["title"]
    if slug:
        assert body["type"] == f"urn:agora:problem:{slug}"
    assert "Traceback" not in response.text
    return body


def test_token_login_and_me(server: AgoraServer):
    name, password = server.create_user()
    with server.client() as http:
        response = http.post("/api/v1/tokens", json={"username": name, "password": password, "name": "laptop"})
        assert response.status_code == 201
        token = response.json()
        assert token["token"].startswith("agora_") and token["name"] == "laptop"
        assert token["expires_at"] is None and token["revoked"] is False
        me = http.get("/api/v1/me", headers={"Authorization": f"Bearer {token['token']}"})
    assert me.status_code == 200
    assert me.json()["name"] == name and me.json()["role"] == "user" and me.json()["disabled"] is False
    # The secret is shown only at creation: listings never carry it.
    with server.client(token["token"]) as http:
        listed = http.get("/api/v1/tokens").json()
    assert [t["id"] for t in listed] == [token["id"]]
    assert "token" not in listed[0] and token["token"] not in str(listed)


def test_token_with_expiry(server: AgoraServer):
    name, password = server.create_user()
    with server.client() as http:
        response = http.post("/api/v1/tokens", json={"username": name, "password": password, "expires_in": 3600})
    assert response.status_code == 201 and response.json()["expires_at"]
    with server.client() as http:
        too_short = http.post("/api/v1/tokens", json={"username": name, "password": password, "expires_in": 5})
    assert_problem(too_short, 422, "invalid-input")


def test_wrong_password_and_unknown_user_look_the_same(server: AgoraServer):
    name, _ = server.create_user()
    with server.client(local_address="127.0.0.9") as http:
        wrong = http.post("/api/v1/tokens", json={"username": name, "password": "not-the-password"})
        unknown = http.post("/api/v1/tokens", json={"username": "nosuchuser", "password": "not-the-password"})
    a, b = assert_problem(wrong, 401), assert_problem(unknown, 401)
    assert a["detail"] == b["detail"]
    assert wrong.headers["www-authenticate"].startswith("Bearer")


def test_revoked_token_gets_401(server: AgoraServer):
    name, password = server.create_user()
    token = server.login(name, password)
    keep = server.login(name, password, label="other")
    with server.client(token) as http:
        token_id = next(t["id"] for t in http.get("/api/v1/tokens").json() if t["name"] == "test")
        assert http.delete(f"/api/v1/tokens/{token_id}").status_code == 204
        assert_problem(http.get("/api/v1/me"), 401, "unauthenticated")
    with server.client(keep) as http:
        assert http.get("/api/v1/me").status_code == 200
        listed = {t["id"]: t for t in http.get("/api/v1/tokens").json()}
        assert listed[token_id]["revoked"] is True
        # Another user's token id is simply not found.
    other_name, other_password = server.create_user()
    with server.client(server.login(other_name, other_password)) as http:
        assert_problem(http.delete(f"/api/v1/tokens/{token_id}"), 404)


def test_bad_and_missing_tokens(server: AgoraServer):
    with server.client() as http:
        assert_problem(http.get("/api/v1/me"), 401)
        assert_problem(http.get("/api/v1/me", headers={"Authorization": "Bearer agora_0000_nope"}), 401)
        assert_problem(http.get("/api/v1/me", headers={"Authorization": "Basic YWRtaW46YWRtaW4="}), 401)
        assert_problem(http.get("/api/v1/me", headers={"Authorization": "Bearer " + "x" * 5000}), 401)


def test_user_token_cannot_call_admin_endpoints(server: AgoraServer):
    name, password = server.create_user()
    victim, _ = server.create_user()
    with server.client(server.login(name, password)) as http:
        assert_problem(http.get("/api/v1/users"), 403, "forbidden")
        assert_problem(http.post("/api/v1/users", json={"name": "sneaky", "password": "password123"}), 403)
        assert_problem(http.get(f"/api/v1/users/{victim}"), 403)
        assert_problem(http.patch(f"/api/v1/users/{name}", json={"role": "admin"}), 403)
        assert_problem(http.delete(f"/api/v1/users/{victim}"), 403)
        assert_problem(http.get("/api/v1/audit"), 403)
        assert http.get("/api/v1/me").json()["role"] == "user"
    with server.admin() as http:
        assert http.get(f"/api/v1/users/{victim}").status_code == 200
        assert http.get("/api/v1/users/sneaky").status_code == 404


def test_admin_user_lifecycle(server: AgoraServer):
    with server.admin() as http:
        created = http.post("/api/v1/users", json={"name": "carol.smith", "password": "first-password",
                                                   "quota_bytes": 12345})
        assert created.status_code == 201, created.text
        assert created.json()["quota_bytes"] == 12345
        assert_problem(http.post("/api/v1/users", json={"name": "carol.smith", "password": "another-one"}), 409)
        assert_problem(http.post("/api/v1/users", json={"name": "Carol", "password": "password123"}), 422)
        assert_problem(http.post("/api/v1/users", json={"name": "../etc", "password": "password123"}), 422)
        assert_problem(http.post("/api/v1/users", json={"name": "dave", "password": "short"}), 422)
        assert_problem(http.post("/api/v1/users", json={"name": "dave", "password": "password123", "x": 1}), 422)
        assert "carol.smith" in [u["name"] for u in http.get("/api/v1/users").json()]
        patched = http.patch("/api/v1/users/carol.smith", json={"password": "second-password", "role": "admin"})
        assert patched.status_code == 200 and patched.json()["role"] == "admin"
    server.login("carol.smith", "second-password")
    with server.client(local_address="127.0.0.8") as http:
        assert http.post("/api/v1/tokens", json={"username": "carol.smith", "password": "first-password"}).status_code == 401
    with server.admin() as http:
        assert http.delete("/api/v1/users/carol.smith").status_code == 204
        assert_problem(http.get("/api/v1/users/carol.smith"), 404)
        assert_problem(http.delete("/api/v1/users/carol.smith"), 404)


def test_last_admin_is_protected(make_server):
    server = make_server()
    with server.admin() as http:
        assert_problem(http.patch("/api/v1/users/admin", json={"disabled": True}), 409)
        assert_problem(http.patch("/api/v1/users/admin", json={"role": "user"}), 409)
        assert_problem(http.delete("/api/v1/users/admin"), 409)
        assert http.get("/api/v1/me").json()["role"] == "admin"


def test_disabled_user_cannot_log_in_and_tokens_stop(server: AgoraServer):
    name, password = server.create_user()
    token = server.login(name, password)
    with server.admin() as http:
        assert http.patch(f"/api/v1/users/{name}", json={"disabled": True}).json()["disabled"] is True
    with server.client(token) as http:
        assert_problem(http.get("/api/v1/me"), 401)
    with server.client(local_address="127.0.0.7") as http:
        assert_problem(http.post("/api/v1/tokens", json={"username": name, "password": password}), 401)
    with server.admin() as http:
        http.patch(f"/api/v1/users/{name}", json={"disabled": False})
    with server.client(token) as http:
        assert http.get("/api/v1/me").status_code == 200


def test_change_own_password(server: AgoraServer):
    name, password = server.create_user()
    with server.client(server.login(name, password)) as http:
        assert_problem(http.post("/api/v1/me/password", json={"current_password": "wrong-one!",
                                                              "new_password": "brand-new-password"}), 403)
        assert http.post("/api/v1/me/password", json={"current_password": password,
                                                      "new_password": "brand-new-password"}).status_code == 204
    assert server.login(name, "brand-new-password")


def test_malformed_requests_get_problems(server: AgoraServer):
    with server.client() as http:
        assert_problem(http.post("/api/v1/tokens", content=b"{not json", headers={"content-type": "application/json"}), 422)
        assert_problem(http.post("/api/v1/tokens", json=["a", "list"]), 422)
        assert_problem(http.post("/api/v1/tokens", json={"username": "a" * 100, "password": "x"}), 422)
        assert_problem(http.get("/api/v1/no-such-thing"), 404)
        assert_problem(http.put("/api/v1/me"), 405)
        huge = b'{"username": "' + b"a" * (2 * 1024 * 1024) + b'", "password": "x"}'
        assert_problem(http.post("/api/v1/tokens", content=huge, headers={"content-type": "application/json"}), 413)
        # Any other type, or none, is held to the same limit: a JSON route would read
        # such a body whole before refusing it.
        for kind in ("application/octet-stream", "text/plain", ""):
            assert_problem(http.post("/api/v1/tokens", content=huge, headers={"content-type": kind}), 413)


def test_audit_log_records_changes(server: AgoraServer):
    name, password = server.create_user()
    server.login(name, password)
    with server.admin() as http:
        http.patch(f"/api/v1/users/{name}", json={"disabled": True})
        entries = http.get("/api/v1/audit", params={"limit": 1000}).json()["entries"]
    mine = [(e["action"], e["outcome"]) for e in entries if e["target"] == name or e["actor"] == name]
    assert ("user.create", "ok") in mine
    assert ("login", "ok") in mine
    assert ("token.create", "ok") in mine
    assert ("user.disable", "ok") in mine
    disable = next(e for e in entries if e["action"] == "user.disable" and e["target"] == name)
    assert disable["actor"] == "admin" and disable["client_addr"] == "127.0.0.1"


def test_audit_log_pages_with_a_cursor(server: AgoraServer):
    with server.admin() as http:
        first = http.get("/api/v1/audit", params={"limit": 2}).json()
        assert len(first["entries"]) == 2 and first["next"]
        second = http.get("/api/v1/audit", params={"limit": 2, "before": first["next"]}).json()
    assert all(e["id"] < first["next"] for e in second["entries"])


def test_openapi_document(server: AgoraServer):
    with server.client() as http:
        spec = http.get("/api/openapi.json").json()
    for path in ("/api/v1/tokens", "/api/v1/me", "/api/v1/users", "/api/v1/users/{name}", "/healthz"):
        assert path in spec["paths"]
    assert "HTTPBearer" in spec["components"]["securitySchemes"]
