"""What the server writes on disk is its own: 0600 files and 0700 folders (the metadata
database, hosted databases, users' files, Maildirs, the TLS key), even in a data dir
made beforehand with mode 0755; and ``agora serve`` warns that such a data dir is open
to others."""

from __future__ import annotations

import os
import stat

from mail_support import DOMAIN, SERVER_ENV, message, send_smtp


def test_what_the_server_creates_is_private_in_a_data_dir_made_0755(make_server):
    server = make_server(start=False, env=SERVER_ENV, args=("--mail-domains", DOMAIN))
    server.data_dir.mkdir()
    os.chmod(server.data_dir, 0o755)
    server.start()
    name, password = server.create_user()
    with server.client(server.login(name, password)) as http:
        assert http.put("/api/v1/files/content/note.txt", content=b"mine").status_code in (200, 201)
        assert http.post("/api/v1/sql/databases", json={"name": "shop"}).status_code == 201
    send_smtp(server, name, message("private"))

    made = {os.path.relpath(os.path.join(top, entry), server.data_dir)
            for top, dirs, files in os.walk(server.data_dir) for entry in dirs + files}
    # Each kind of thing the test made is there to be checked.
    assert any(path.startswith("files") and path.endswith("note.txt") for path in made), sorted(made)
    assert any(path.startswith("mail") and "/new/" in path for path in made), sorted(made)
    assert "tls/key.pem" in made
    if not server.database_url:
        assert "agora.db" in made and any(path.startswith("sql/pg/data/base/") for path in made)

    # The embedded PostgreSQL runs as a user of its own (when the server is root), who
    # must be able to pass through (o+x, not read) the folders above its cluster.
    passage = {os.path.join("sql", "pg")} | {"sql"}
    loose = []
    for path in sorted(made):
        mode = os.lstat(server.data_dir / path).st_mode
        if stat.S_ISSOCK(mode):
            continue  # the engine's socket: its permissions are the engine's setting (0700)
        allowed = 0o001 if stat.S_ISDIR(mode) and path in passage else 0
        if stat.S_IMODE(mode) & 0o077 & ~allowed:
            loose.append(f"{stat.filemode(mode)} {path}")
    assert not loose, loose
    assert f"the data dir {server.data_dir} is open to other users" in server.log()
