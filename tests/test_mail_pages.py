"""The webmail at /mail over real HTTP: the folder list with unread counts, the message
list, reading (text, sandboxed HTML, attachments), compose with attachments, reply,
reply-all and forward, flags, delete and move, folders; CSRF refused on every POST;
one user cannot reach another's messages; the message size limit is a clear error."""

from __future__ import annotations

import html
import os
import re
import secrets
from email import message_from_bytes, policy
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from conftest import AgoraServer

HTMX = {"HX-Request": "true"}


class Mailer:
    """A logged-in browser-like client of the webmail: cookies kept, redirects not followed."""

    def __init__(self, server: AgoraServer, name: str, password: str):
        self.server = server
        self.name = name
        self.address = f"{name}@localhost"
        self.http = server.client()
        self.http.headers["Accept"] = "text/html"
        form = self.http.get("/login")
        response = self.http.post("/login", data={"username": name, "password": password,
                                                  "csrf_token": self._csrf(form.text), "next": "/mail"})
        assert response.status_code == 303 and response.headers["location"] == "/mail", response.text
        self.csrf = self._csrf(self.http.get("/mail").text)

    @staticmethod
    def _csrf(page: str) -> str:
        match = re.search(r'name="csrf_token" value="([^"]+)"', page)
        assert match, page[:2000]
        return html.unescape(match.group(1))

    def post(self, path: str, data: dict, *, csrf: bool = True, htmx: bool = False, **kwargs) -> httpx.Response:
        data = dict(data)
        if csrf:
            data["csrf_token"] = self.csrf
        return self.http.post(path, data=data, headers=HTMX if htmx else {}, **kwargs)

    def send(self, files: list[tuple[str, bytes, str]] = (), **fields: str) -> httpx.Response:
        return self.post("/mail/send", fields, files=[("attachments", file) for file in files] or
                         [("attachments", ("", b"", "application/octet-stream"))])

    def folder(self, name: str = "INBOX", **params: str) -> str:
        response = self.http.get("/mail", params={"folder": name, **params})
        assert response.status_code == 200, response.text
        return response.text

    def uids(self, name: str = "INBOX") -> list[int]:
        return [int(uid) for uid in re.findall(r'<tr class="(?:read|unread)" data-uid="(\d+)"', self.folder(name))]

    def open(self, uid: int, name: str = "INBOX", **params: str) -> str:
        response = self.http.get("/mail/message", params={"folder": name, "uid": uid, **params})
        assert response.status_code == 200, response.text
        return response.text

    def maildir(self, name: str = "INBOX") -> Path:
        root = self.server.data_dir / "mail" / self.name
        return root if name == "INBOX" else root / f".{name}"

    def raw_messages(self, name: str = "INBOX") -> list[bytes]:
        folder = self.maildir(name)
        return [path.read_bytes() for sub in ("new", "cur") for path in sorted((folder / sub).iterdir())]

    def close(self) -> None:
        self.http.close()


@pytest.fixture
def mailers(server: AgoraServer) -> Iterator[callable]:
    made: list[Mailer] = []

    def make() -> Mailer:
        name, password = server.create_user("m" + secrets.token_hex(4))
        made.append(Mailer(server, name, password))
        return made[-1]

    yield make
    for mailer in made:
        mailer.close()


def drop_in(mailer: Mailer, raw: bytes, name: str) -> None:
    """Deliver as another Maildir tool would: the store indexes what it finds in new/
    (once it has settled: a fresh file may be another node's, not yet committed)."""
    path = mailer.maildir() / "tmp" / f"{name},S={len(raw)}"
    path.write_bytes(raw)
    os.utime(path, (1700000000, 1700000000))
    path.rename(mailer.maildir() / "new" / path.name)


def unread_count(page: str, folder: str) -> int:
    match = re.search(rf'data-folder="{folder}">\s*<span class="name">[^<]*</span>\s*'
                      rf'(?:<span class="count"[^>]*>(\d+)</span>)?', page)
    assert match, page
    return int(match.group(1) or 0)


def test_webmail_needs_a_login_and_is_on_the_dashboard(server: AgoraServer, mailers):
    with server.client() as anonymous:
        response = anonymous.get("/mail", headers={"Accept": "text/html"})
        assert response.status_code == 303 and response.headers["location"] == "/login?next=/mail"
        assert anonymous.post("/mail/send", data={"to": "x@localhost"}).status_code == 303
    alice = mailers()
    assert re.search(r'id="card-mail".*?href="/mail"', alice.http.get("/dashboard").text, re.S)
    page = alice.folder()
    for folder in ("INBOX", "Drafts", "Sent", "Junk", "Trash"):
        assert f'data-folder="{folder}"' in page
    assert page.index('data-folder="INBOX"') < page.index('data-folder="Sent"') < page.index('data-folder="Trash"')
    assert "No messages in INBOX." in page and alice.address in page
    for asset in ("/static/mail/mail.js", "/static/mail/mail.css"):
        assert asset in page and alice.http.get(asset).status_code == 200
    assert alice.http.get("/mail", params={"folder": "Nowhere"}).status_code == 404


def test_send_with_attachment_read_and_download(mailers):
    alice, bob, carol = mailers(), mailers(), mailers()
    data = os.urandom(30_000)
    response = alice.send(files=[("report 2024.bin", data, "application/octet-stream"),
                                 ("note.txt", "grüße\n".encode(), "text/plain")],
                          to=f"Bob <{bob.address}>", bcc=carol.address, subject="Quarterly report ünïcode",
                          body="Hello Bob,\n\nthe report is attached.\n")
    assert response.status_code == 303 and response.headers["location"] == "/mail?notice=sent", response.text
    assert "Message sent." in alice.http.get(response.headers["location"]).text

    inbox = bob.folder()
    assert unread_count(inbox, "INBOX") == 1
    [uid] = bob.uids()
    row = re.search(rf'<tr class="unread" data-uid="{uid}">.*?</tr>', inbox, re.S).group(0)
    assert "Quarterly report ünïcode" in row and alice.name in row and "has attachments" in row
    page = bob.open(uid)
    assert 'id="subject">Quarterly report ünïcode<' in page
    assert alice.address in re.search(r'id="from">([^<]*)<', page).group(1)
    assert html.escape(f"Bob <{bob.address}>") in page
    assert carol.address not in page  # Bcc is the envelope's business only
    assert "the report is attached." in re.search(r'<pre id="text-body"[^>]*>(.*?)</pre>', page, re.S).group(1)
    links = re.findall(r'href="(/mail/message/attachment\?[^"]+)" download>([^<]+)<', page)
    assert [name for _, name in links] == ["report 2024.bin", "note.txt"]
    # Opening read it: no longer unread.
    assert unread_count(bob.folder(), "INBOX") == 0
    assert f'<tr class="read" data-uid="{uid}">' in bob.folder()

    download = bob.http.get(html.unescape(links[0][0]))
    assert download.status_code == 200 and download.content == data
    assert download.headers["content-disposition"].startswith("attachment;")
    assert "report%202024.bin" in download.headers["content-disposition"]
    assert download.headers["x-content-type-options"] == "nosniff"
    assert "sandbox" in download.headers["content-security-policy"]
    note = bob.http.get(html.unescape(links[1][0]))
    assert note.content == "grüße\n".encode() and note.headers["content-type"].startswith("text/plain")
    assert bob.http.get(f"/mail/message/attachment?folder=INBOX&uid={uid}&index=7").status_code == 404

    # The Bcc recipient got it too, and the sender kept a copy in Sent.
    assert len(carol.uids()) == 1
    sent = alice.folder("Sent")
    assert "Quarterly report ünïcode" in sent and "To: Bob" in sent
    [copy] = alice.raw_messages("Sent")
    parsed = message_from_bytes(copy, policy=policy.default)
    assert parsed["From"] == alice.address and "Bcc" not in parsed
    assert [part.get_filename() for part in parsed.iter_attachments()] == ["report 2024.bin", "note.txt"]


def test_html_is_shown_only_in_a_sandboxed_frame(mailers):
    bob = mailers()
    raw = (b"From: Eve <eve@example.org>\r\nTo: " + bob.address.encode() + b"\r\nSubject: styled\r\n"
           b"MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=b\r\n\r\n"
           b"--b\r\nContent-Type: text/plain\r\n\r\nplain version\r\n"
           b"--b\r\nContent-Type: text/html\r\n\r\n<p style=\"color:red\">rich <b>version</b></p>"
           b"<script>alert(1)</script><img src=\"http://tracker.example/p.gif\" onerror=\"alert(2)\">\r\n--b--\r\n")
    drop_in(bob, raw, "1700000000.M1P1Q1.test")
    [uid] = bob.uids()
    page = bob.open(uid)
    frame = re.search(r'<iframe id="html-body"[^>]*>', page).group(0)
    assert 'sandbox="allow-popups allow-popups-to-escape-sandbox"' in frame
    assert "alert" not in page and "plain version" not in page
    src = html.unescape(re.search(r'src="([^"]+)"', frame).group(1))
    body = bob.http.get(src)
    assert body.status_code == 200 and body.headers["content-type"].startswith("text/html")
    csp = body.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "img-src cid: data:" in csp and "sandbox" in csp
    assert "script-src" not in csp and body.headers["x-frame-options"] == "SAMEORIGIN"
    assert "rich <b>version</b>" in body.text
    assert "<script" not in body.text and "onerror" not in body.text and "tracker.example" not in body.text
    text = bob.open(uid, view="text")
    assert "<iframe" not in text and "plain version" in text


def test_reply_reply_all_and_forward(mailers):
    alice, bob, carol = mailers(), mailers(), mailers()
    assert alice.send(files=[("plan.pdf", b"%PDF-1.4 plan", "application/pdf")], to=bob.address,
                      cc=carol.address, subject="Plan", body="Line one\n> quoted before\n").status_code == 303
    [uid] = bob.uids()
    original = message_from_bytes(bob.raw_messages()[0], policy=policy.default)

    reply = bob.http.get("/mail/compose", params={"mode": "reply", "folder": "INBOX", "uid": uid}).text
    assert re.search(r'name="to" value="([^"]*)"', reply).group(1) == alice.address
    assert re.search(r'name="cc" value="([^"]*)"', reply).group(1) == ""
    assert 'name="subject" value="Re: Plan"' in reply
    body = html.unescape(re.search(r'<textarea name="body"[^>]*>\n(.*?)</textarea>', reply, re.S).group(1))
    assert f"{alice.address} wrote:\n> Line one\n>> quoted before\n" in body
    assert html.unescape(re.search(r'name="in_reply_to" value="([^"]*)"', reply).group(1)) == original["Message-ID"]

    everyone = bob.http.get("/mail/compose", params={"mode": "replyall", "folder": "INBOX", "uid": uid}).text
    assert re.search(r'name="to" value="([^"]*)"', everyone).group(1) == alice.address
    assert re.search(r'name="cc" value="([^"]*)"', everyone).group(1) == carol.address  # not bob himself

    fields = {name: html.unescape(value) for name, value in re.findall(r'name="(\w+)" value="([^"]*)"', reply)}
    fields["body"] = "Agreed.\n\n" + body
    assert bob.post("/mail/send", {k: v for k, v in fields.items() if k != "csrf_token"},
                    files=[("attachments", ("", b"", "application/octet-stream"))]).status_code == 303
    answer = message_from_bytes(alice.raw_messages()[0], policy=policy.default)
    assert answer["Subject"] == "Re: Plan" and answer["In-Reply-To"] == original["Message-ID"]
    assert answer["References"] == original["Message-ID"]
    assert "Agreed." in answer.get_body().get_content()
    assert "answered" in re.search(rf'data-uid="{uid}">.*?</tr>', bob.folder(), re.S).group(0)

    forward = bob.http.get("/mail/compose", params={"mode": "forward", "folder": "INBOX", "uid": uid}).text
    assert 'name="subject" value="Fwd: Plan"' in forward and "Forwarded message" in forward
    assert re.search(r'name="forward_attachment" value="0" checked>\s*plan.pdf', forward)
    fields = {name: html.unescape(value) for name, value in re.findall(r'name="(\w+)" value="([^"]*)"', forward)}
    fields["body"] = html.unescape(re.search(r'<textarea name="body"[^>]*>\n(.*?)</textarea>', forward, re.S).group(1))
    assert "Line one" in fields["body"] and "Subject: Plan" in fields["body"]
    fields.update(to="dave@localhost, " + carol.address, forward_attachment="0")
    fields.pop("csrf_token")
    unknown = bob.post("/mail/send", fields, files=[("attachments", ("", b"", "application/octet-stream"))])
    assert unknown.status_code == 422 and "dave@localhost" in unknown.text  # the form comes back, filled in
    assert 'name="subject" value="Fwd: Plan"' in unknown.text
    fields["to"] = carol.address
    assert bob.post("/mail/send", fields, files=[("attachments", ("extra.txt", b"more", "text/plain"))]).status_code == 303
    forwarded = [message_from_bytes(raw, policy=policy.default) for raw in carol.raw_messages()]
    forwarded = [m for m in forwarded if m["Subject"] == "Fwd: Plan"][0]
    attachments = {part.get_filename(): part.get_content() for part in forwarded.iter_attachments()}
    assert attachments == {"extra.txt": "more", "plan.pdf": b"%PDF-1.4 plan"}
    assert "Line one" in forwarded.get_body(("plain",)).get_content()


def test_flags_move_delete_and_folders(mailers):
    alice, bob = mailers(), mailers()
    for n in range(3):
        assert alice.send(to=bob.address, subject=f"note {n}", body="x").status_code == 303
    uids = bob.uids()
    assert len(uids) == 3 and uids == sorted(uids, reverse=True)  # newest first

    star = bob.post("/mail/flag", {"folder": "INBOX", "uid": uids[0], "flagged": "1"}, htmx=True)
    assert star.status_code == 200 and 'aria-pressed="true"' in star.text and "<html" not in star.text
    assert re.search(rf'data-uid="{uids[0]}">.*?aria-pressed="true"', bob.folder(), re.S)
    unstar = bob.post("/mail/flag", {"folder": "INBOX", "uid": uids[0], "flagged": "0", "next": "/mail"})
    assert unstar.status_code == 303 and unstar.headers["location"] == "/mail"
    assert 'aria-pressed="true"' not in bob.folder()
    assert bob.post("/mail/flag", {"folder": "INBOX", "uid": 9999, "flagged": "1"}).status_code == 404

    bob.open(uids[1])
    assert unread_count(bob.folder(), "INBOX") == 2
    assert bob.post("/mail/seen", {"folder": "INBOX", "uid": uids[1], "seen": "0"}).status_code == 303
    assert unread_count(bob.folder(), "INBOX") == 3

    created = bob.post("/mail/folders", {"name": "Archive.2024"}, htmx=True)
    assert created.status_code == 200 and created.headers["HX-Redirect"] == "/mail?folder=Archive.2024&notice=created"
    again = bob.post("/mail/folders", {"name": "Archive.2024"}, htmx=True)
    assert again.status_code == 409 and again.headers["HX-Retarget"] == "#flash"
    assert bob.post("/mail/folders", {"name": "bad/name"}).status_code == 422
    moved = bob.post("/mail/move", {"folder": "INBOX", "uid": [uids[0], uids[1]], "to": "Archive.2024"})
    assert moved.status_code == 303 and moved.headers["location"] == "/mail?notice=moved"
    assert len(bob.uids("Archive.2024")) == 2 and bob.uids() == [uids[2]]
    page = bob.folder("Archive.2024")
    assert unread_count(page, "Archive.2024") == 2 and ">2024</span>" in page

    assert bob.post("/mail/delete", {"folder": "INBOX", "uid": uids[2]}).headers["location"] == "/mail?notice=deleted"
    assert bob.uids() == [] and len(bob.uids("Trash")) == 1
    [trashed] = bob.uids("Trash")
    gone = bob.post("/mail/delete", {"folder": "Trash", "uid": trashed})
    assert gone.status_code == 303 and gone.headers["location"] == "/mail?folder=Trash&notice=expunged"
    assert bob.uids("Trash") == [] and bob.raw_messages("Trash") == []
    assert bob.post("/mail/delete", {"folder": "Trash", "uid": trashed}).status_code == 404

    assert bob.post("/mail/folders/delete", {"folder": "Trash"}).status_code == 403
    assert bob.post("/mail/folders/delete", {"folder": "Archive.2024"}).status_code == 303
    assert 'data-folder="Archive.2024"' not in bob.folder()


def test_pages_of_the_message_list(mailers):
    bob = mailers()
    raw = b"From: a@example.org\r\nSubject: bulk %d\r\n\r\nx\r\n"
    for n in range(53):
        drop_in(bob, raw % n, f"17000000{n:02d}.M1P1Q{n}.test")
    first = bob.folder()
    assert "bulk 52" in first and "bulk 3<" in first and "bulk 2<" not in first
    assert "Page 1 of 2" in first and 'rel="next"' in first
    second = bob.folder(page="2")
    assert "bulk 2<" in second and "bulk 0<" in second and "bulk 3<" not in second and 'rel="prev"' in second
    assert bob.folder(page="99").count('data-uid=') == 3
    assert bob.folder(page="²").count('data-uid=') == 50  # not a page number: the first page


def test_csrf_is_required(mailers):
    alice, bob = mailers(), mailers()
    assert alice.send(to=bob.address, subject="keep me", body="x").status_code == 303
    [uid] = bob.uids()
    for path, data in (("/mail/flag", {"folder": "INBOX", "uid": uid, "flagged": "1"}),
                       ("/mail/seen", {"folder": "INBOX", "uid": uid, "seen": "1"}),
                       ("/mail/move", {"folder": "INBOX", "uid": uid, "to": "Junk"}),
                       ("/mail/delete", {"folder": "INBOX", "uid": uid}),
                       ("/mail/folders", {"name": "Sneaky"}),
                       ("/mail/folders/delete", {"folder": "Junk"})):
        assert bob.post(path, data, csrf=False).status_code == 403, path
        assert bob.post(path, data, csrf=False, htmx=True).status_code == 403, path
        assert bob.post(path, {**data, "csrf_token": "wrong-" + secrets.token_hex(8)}, csrf=False).status_code == 403
    sneaky = bob.post("/mail/send", {"to": alice.address, "subject": "forged"}, csrf=False,
                      files=[("attachments", ("a.txt", b"a", "text/plain"))])
    assert sneaky.status_code == 403
    assert len(alice.uids()) == 0 and alice.uids("Sent") and not bob.uids("Sent")
    page = bob.folder()
    assert f'<tr class="unread" data-uid="{uid}">' in page and 'aria-pressed="true"' not in page
    assert 'data-folder="Sneaky"' not in page


def test_one_user_cannot_reach_another(mailers):
    alice, bob, mallory = mailers(), mailers(), mailers()
    assert alice.send(files=[("secret.txt", b"bob's secret", "text/plain")], to=bob.address,
                      subject="for bob only", body="the secret").status_code == 303
    [uid] = bob.uids()
    assert mallory.uids() == []
    for path, params in (("/mail/message", {}), ("/mail/message/body", {}), ("/mail/message/attachment", {"index": 0}),
                         ("/mail/compose", {"mode": "reply"}), ("/mail/compose", {"mode": "forward"})):
        response = mallory.http.get(path, params={"folder": "INBOX", "uid": uid, **params})
        assert response.status_code == 404, path
        assert "secret" not in response.text and "for bob only" not in response.text
    for folder in (f"../{bob.name}", f"/{bob.name}", "..", "a/../b"):
        response = mallory.http.get("/mail/message", params={"folder": folder, "uid": uid})
        assert response.status_code in (404, 422) and "secret" not in response.text, folder
    for path, data in (("/mail/flag", {"flagged": "1"}), ("/mail/seen", {"seen": "1"}), ("/mail/delete", {}),
                       ("/mail/move", {"to": "Trash"})):
        assert mallory.post(path, {"folder": "INBOX", "uid": uid, **data}).status_code == 404, path
    # Forwarding names the original by folder and uid: only the sender's own are found.
    forged = mallory.post("/mail/send", {"to": mallory.address, "subject": "gotcha", "forward_folder": "INBOX",
                                         "forward_uid": str(uid), "forward_attachment": "0"},
                          files=[("attachments", ("", b"", "application/octet-stream"))])
    assert forged.status_code == 404 and mallory.uids() == []
    # Nor may the From be anyone else's: the webmail sends as the session user only.
    assert bob.folder().count(f'<tr class="unread" data-uid="{uid}">') == 1
    assert "bob's secret" not in str(mallory.raw_messages("Sent"))


def test_size_limit_is_a_clear_error(make_server):
    server = make_server(env={"AGORA_MAIL_MAX_MESSAGE": "100K"})
    name, password = server.create_user("sizer")
    sizer = Mailer(server, name, password)
    try:
        fits = sizer.send(files=[("fits.bin", os.urandom(60_000), "application/octet-stream")],
                          to=sizer.address, subject="fits", body="x")
        assert fits.status_code == 303, fits.text
        # 90 KB of attachment is 120 KB encoded: over the limit, said in the form, kept filled in.
        over = sizer.send(files=[("big.bin", os.urandom(90_000), "application/octet-stream")],
                          to=sizer.address, subject="too big", body="keep this text")
        assert over.status_code == 413 and "mail.max_message" in over.text and "100 KiB" in over.text
        assert 'id="compose-error"' in over.text and "keep this text" in over.text
        assert 'name="subject" value="too big"' in over.text
        # Far over: refused from the declared length, before the form is read.
        far = sizer.send(files=[("huge.bin", os.urandom(400_000), "application/octet-stream")],
                         to=sizer.address, subject="huge", body="x")
        assert far.status_code == 413 and "mail.max_message" in far.text and "Traceback" not in far.text
        assert [m for m in sizer.raw_messages() if b"too big" in m or b"huge" in m] == []
    finally:
        sizer.close()


def test_attachments_larger_than_a_form_body(mailers):
    """Compose forms are limited by mail.max_message, not by http.max_json_body (1 MiB)."""
    alice, bob = mailers(), mailers()
    data = os.urandom(2 * 1024 * 1024)
    response = alice.send(files=[("two megabytes.bin", data, "application/octet-stream")],
                          to=bob.address, subject="big one", body="x")
    assert response.status_code == 303, (
        f"{response.status_code} {response.text[:300]}: /mail/send must be in web/app.py's STREAMING_ROUTES")
    [uid] = bob.uids()
    page = bob.open(uid)
    link = html.unescape(re.search(r'href="(/mail/message/attachment\?[^"]+)"', page).group(1))
    assert bob.http.get(link).content == data


def test_bad_input_comes_back_in_the_form(mailers):
    alice, bob = mailers(), mailers()
    for fields, status, says in (({"to": "not an address"}, 422, "not a mail address"),
                                 ({"to": "", "cc": ""}, 422, "add at least one recipient"),
                                 ({"to": bob.address, "cc": "a@b@"}, 422, "Cc:"),
                                 ({"to": "nobody-here@localhost"}, 422, "nobody-here@localhost")):
        response = alice.send(subject="kept", body="kept too", **fields)
        assert response.status_code == status, (fields, response.text[:500])
        assert says in html.unescape(response.text) and 'name="subject" value="kept"' in response.text
        assert "Traceback" not in response.text
    assert alice.uids("Sent") == [] and bob.uids() == []
    # A line break typed into a header field cannot add a header.
    injected = alice.send(to=bob.address, subject="hi\r\nBcc: mallory@localhost", body="x")
    assert injected.status_code == 303
    [raw] = bob.raw_messages()
    parsed = message_from_bytes(raw, policy=policy.default)
    assert parsed["Subject"] == "hi Bcc: mallory@localhost" and "Bcc" not in parsed
    for uid in ("²", "-1", "1e3", "99999999999"):
        assert bob.http.get("/mail/message", params={"folder": "INBOX", "uid": uid}).status_code == 404
    assert bob.http.get("/mail/compose", params={"mode": "sideways"}).status_code == 422
