"""What SEARCH BODY/TEXT match against: the MIME-only parse gives the tree (and so the
body text) the full parse gives, on generated messages in every encoding and charset
and with odd field names; fold() matches as casefold() does; the body text cache keeps
to its budget. The same over IMAP is in test_mail_imap_server.py."""

from __future__ import annotations

import base64
import binascii
import re
from unittest import mock

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agora.mail import mime_structure as ms
from agora.mail.imap.cache import BodyTexts
from agora.mail.imap.search import fold
from agora.mail.message import body_text_for_search
from test_mail_message import SAMPLES, mutated

FULL_PARSE = ms.parse


def body_text_by_full_parse(raw: bytes) -> str:
    """body_text_for_search as it was before the MIME-only parse: every field read."""
    with mock.patch.object(ms, "parse", lambda data, mime_only=False: FULL_PARSE(data)):
        return body_text_for_search(raw)


def assert_same_tree(fast: ms.Part, full: ms.Part) -> None:
    assert (fast.start, fast.header_end, fast.body_start, fast.body_end) == (
        full.start, full.header_end, full.body_start, full.body_end)
    assert (fast.mtype, fast.subtype, fast.params, fast.kind, fast.mime) == (
        full.mtype, full.subtype, full.params, full.kind, full.mime)
    assert fast.fields == [f for f in full.fields if f.name.startswith("content-") or f.name == "mime-version"]
    assert len(fast.children) == len(full.children)
    for a, b in zip(fast.children, full.children):
        assert_same_tree(a, b)


def assert_agrees(raw: bytes) -> None:
    assert_same_tree(ms.parse(raw, mime_only=True), FULL_PARSE(raw))
    assert body_text_for_search(raw) == body_text_by_full_parse(raw)


# -- generated messages --------------------------------------------------------------------

TEXTS = ["Hello Zoë, the zephyrine report is ready.", "Grüße aus Köln — Straße", "Привет, мир", "naïve café",
         "日本語のテキスト", "plain ascii words only", "a = b; c=3D d\tand a long line " + "x" * 90]
CHARSETS = ["utf-8", "UTF-8", "iso-8859-1", "koi8-r", "windows-1252", "us-ascii", "shift_jis", "x-unknown", ""]
ENCODINGS = ["", "7bit", "8bit", "quoted-printable", "Quoted-Printable", "base64", "BASE64", "binary", "x-bogus"]
TYPES = ["text/plain", "TEXT/PLAIN", "text/html", "text/enriched", "application/octet-stream", "text", "image/png"]
# What may stand around a field name: ASCII and Unicode whitespace (UTF-8 and Latin-1),
# a letter whose lower case is ASCII (KELVIN SIGN), and bytes that are no whitespace.
AROUND = [b"", b" ", b"\t", b"\r", b"\x0b", b"\x1f", b"\xa0", b"\x85", b"\xc2\xa0", b"\xe2\x80\x83", b"\xe3\x80\x80",
          b"\xc3\xa9", b"\xe2\x84\xaa", b"x", b"\xff"]
NAMES = [b"Content-Type", b"content-type", b"CONTENT-TYPE", b"Content-Transfer-Encoding", b"MIME-Version",
         b"Content-Disposition", b"Content-\xe2\x84\xaaind", b"Content-", b"Content-Typo", b"ContentType"]
OTHER_FIELDS = [b"From: Jo\xc3\xabl <joel@example.org>", b"To: =?utf-8?q?Zo=C3=AB?= <zoe@example.org>",
                b"Subject: content-type: text/html", b"X-Note: a\r\n Content-Type: text/html",
                b"Received: from a\n\tContent-Transfer-Encoding: base64", b"Subject: Stra\xdfe", b"No colon here",
                b": empty name", b"Date: Mon, 1 Jan 2024 10:00:00 +0000"]


def encode_body(text: str, charset: str, encoding: str) -> bytes:
    data = text.encode(charset or "utf-8", "replace") if charset.lower() not in ("x-unknown", "") else text.encode()
    if encoding.lower() == "base64":
        return base64.encodebytes(data)
    if encoding.lower() == "quoted-printable":
        return binascii.b2a_qp(data)
    return data


@st.composite
def mime_field(draw, name: bytes, value: bytes) -> bytes:
    before, after = draw(st.sampled_from(AROUND)), draw(st.sampled_from(AROUND))
    fold_it = draw(st.booleans()) and b";" in value
    if fold_it:
        value = value.replace(b"; ", b";\r\n\t", 1)
    return before + name + after + b": " + value


@st.composite
def leaf(draw, depth: int = 0) -> bytes:
    text = draw(st.sampled_from(TEXTS))
    charset, encoding = draw(st.sampled_from(CHARSETS)), draw(st.sampled_from(ENCODINGS))
    ctype = draw(st.sampled_from(TYPES))
    if ctype == "text/html":
        text = f"<html><body><p>{text}</p><script>hidden()</script> &amp; &#122;</body></html>"
    value = ctype.encode() + (f'; charset="{charset}"'.encode() if charset else b"")
    fields = [draw(st.sampled_from(OTHER_FIELDS)) for _ in range(draw(st.integers(0, 3)))]
    fields.append(draw(mime_field(draw(st.sampled_from(NAMES[:3])), value)))
    if encoding:
        fields.append(draw(mime_field(b"Content-Transfer-Encoding", encoding.encode())))
    for _ in range(draw(st.integers(0, 3))):  # decoys and repeats: the first real one counts
        fields.insert(draw(st.integers(0, len(fields))),
                      draw(mime_field(draw(st.sampled_from(NAMES)), draw(st.sampled_from([b"text/html", b"base64"])))))
    return b"\r\n".join(fields) + b"\r\n\r\n" + encode_body(text, charset, encoding)


@st.composite
def entity(draw, depth: int = 0) -> bytes:
    kind = draw(st.sampled_from(["leaf", "leaf", "multipart", "message"] if depth < 3 else ["leaf"]))
    if kind == "leaf":
        return draw(leaf())
    if kind == "message":
        return b"Content-Type: message/rfc822\r\n\r\n" + draw(entity(depth + 1))
    boundary = draw(st.sampled_from([b"b1", b"=_part_1", b"sep"])) + str(depth).encode()
    subtype = draw(st.sampled_from([b"mixed", b"alternative", b"digest"]))
    parts = [draw(entity(depth + 1)) for _ in range(draw(st.integers(1, 3)))]
    body = b"".join(b"--" + boundary + b"\r\n" + p + b"\r\n" for p in parts) + b"--" + boundary + b"--\r\n"
    return b'Content-Type: multipart/' + subtype + b'; boundary="' + boundary + b'"\r\n\r\npreamble\r\n' + body


@st.composite
def messages(draw) -> bytes:
    top = [draw(st.sampled_from(OTHER_FIELDS)) for _ in range(draw(st.integers(0, 4)))]
    if draw(st.booleans()):
        top.append(b"MIME-Version: 1.0")
    raw = b"\r\n".join(top) + (b"\r\n" if top else b"") + draw(entity())
    if draw(st.booleans()):
        raw = b" " + raw  # a first line that looks like a continuation is a field all the same
    return raw.replace(b"\r\n", b"\n") if draw(st.booleans()) else raw


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages())
def test_mime_only_parse_agrees_with_the_full_parse_on_generated_messages(raw):
    assert_agrees(raw)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mime_only_parse_agrees_on_mutated_messages(raw):
    assert_agrees(raw)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2000))
def test_mime_only_parse_agrees_on_random_bytes(raw):
    assert_agrees(raw)


def test_mime_only_parse_agrees_on_the_samples():
    for raw in SAMPLES:
        assert_agrees(raw)


def test_a_field_name_in_unicode_whitespace_still_counts():
    for space in ("\u00a0", "\u2003", "\u3000"):
        for encoding in ("utf-8", "latin-1"):
            try:
                name = f"{space}Content-Transfer-Encoding{space}".encode(encoding)
            except UnicodeEncodeError:
                continue
            raw = b"Subject: x\r\n" + name + b": base64\r\n\r\n" + base64.encodebytes(b"zephyrine")
            assert "zephyrine" in body_text_for_search(raw), (space, encoding)
            assert_agrees(raw)


@given(st.text(st.sampled_from(["a", ":", " ", "\t", "\r", "\n", "é"]), max_size=40))
def test_unfolding_takes_out_exactly_the_line_breaks_before_a_space_or_tab(value):
    raw = ("X-Field:" + value + "\n").encode()
    first = ms.parse_fields(raw, 0, len(raw))[0]
    unfolded = re.sub(r"\r?\n(?=[ \t])", "", raw[len(b"X-Field:"):first.end].decode())
    assert first.value == unfolded.rstrip("\r\n").lstrip(" \t")


# -- matching ------------------------------------------------------------------------------

ODD_TEXT = st.text(st.characters(blacklist_categories=()), max_size=30)  # surrogates too


@given(ODD_TEXT, ODD_TEXT, ODD_TEXT)
def test_fold_matches_as_casefold_does(needle, before, after):
    haystack = before + needle.swapcase() + after
    assert (fold(needle) in fold(haystack)) == (needle.casefold() in haystack.casefold())
    assert (fold(needle) in fold(before)) == (needle.casefold() in before.casefold())
    assert fold(before) + fold(after) == fold(before + after)  # so TEXT may join folded pieces


@given(st.text(max_size=20), st.text(max_size=200))
def test_fold_finds_what_casefold_finds(needle, haystack):
    assert (fold(needle) in fold(haystack)) == (needle.casefold() in haystack.casefold())


# -- the cache -----------------------------------------------------------------------------


def test_body_texts_keep_to_their_budget_least_recently_used_out():
    texts = BodyTexts(3 * (100 + BodyTexts.ENTRY_OVERHEAD))
    for uid in (1, 2, 3):
        texts.put((1, 7, uid), bytes([uid]) * 100)
    assert texts.get((1, 7, 1)) == b"\x01" * 100  # now the most recently used
    texts.put((1, 7, 4), b"\x04" * 100)
    assert texts.get((1, 7, 2)) is None and texts.get((1, 7, 1)) is not None and texts.get((1, 7, 4)) is not None
    assert texts.size == 3 * (100 + BodyTexts.ENTRY_OVERHEAD)
    texts.put((1, 7, 5), b"x" * 10_000)  # larger than the whole budget: not kept, nothing dropped
    assert texts.get((1, 7, 5)) is None and texts.get((1, 7, 3)) is not None
    nothing = BodyTexts(0)
    nothing.put((1, 7, 1), b"")
    assert nothing.get((1, 7, 1)) is None and nothing.size == 0
