"""agora.mail.message: ENVELOPE/BODYSTRUCTURE, sections, search text, rendering, composing.

The expected ENVELOPE, BODY, BODYSTRUCTURE and section values below are what Dovecot
2.3.19 answered for the same messages (APPENDed to a scratch Maildir and FETCHed with
a raw IMAP client), with one deliberate difference: we upper-case types, subtypes,
encodings, disposition types and parameter names where Dovecot repeats them as
written in the message.  Values (charsets, file names, ...) are as in the message.
"""
from __future__ import annotations

import itertools
import json
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agora.mail.message import (
    Attachment, Summary, attachment, body_text_for_search, compose, forward_subject, header_text_for_search,
    header_values, quote, render, reply_subject, section, summarize,
)


def crlf(text: str, encoding: str = "utf-8") -> bytes:
    return text.replace("\r\n", "\n").replace("\n", "\r\n").encode(encoding)


PLAIN = crlf("""\
Return-Path: <alice@example.org>
Message-ID: <1234@example.org>
Date: Tue, 5 Mar 2024 10:15:00 +0100
From: Alice Example <alice@example.org>
To: Bob <bob@example.com>, carol@example.com
Cc: "Dave, Jr." <dave@example.net>
Subject: Lunch
 tomorrow?
MIME-Version: 1.0
Content-Type: text/plain; charset="utf-8"
Content-Transfer-Encoding: 7bit

Hi Bob,

lunch tomorrow?
-- 
Alice
""")

ALTERNATIVE = crlf("""\
From: =?utf-8?q?J=C3=B6rg?= <jorg@example.de>
To: team@example.com
Subject: =?UTF-8?B?R3LDvMOfZQ==?= from =?iso-8859-1?q?J=F6rg?=
Date: Wed, 06 Mar 2024 08:00:00 -0000
Message-Id: <alt.1@example.de>
MIME-Version: 1.0
Content-Type: multipart/alternative; boundary="=_alt_boundary"

This is a multi-part message in MIME format.

--=_alt_boundary
Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: quoted-printable

Gr=C3=BC=C3=9Fe
--=_alt_boundary
Content-Type: text/html; charset=utf-8
Content-Transfer-Encoding: quoted-printable

<p>Gr=C3=BC=C3=9Fe</p><script>alert(1)</script><img src=3D"http://track.example/p.gif" onerror=3D"x()">
--=_alt_boundary--
""")

MIXED = crlf("""\
From: Alice <alice@example.org>
To: bob@example.com
Subject: Report
Date: Thu, 7 Mar 2024 12:00:00 +0000
Message-ID: <mixed.2@example.org>
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary=XYZ

--XYZ
Content-Type: text/plain

See attached.

--XYZ
Content-Type: application/pdf; name="report.pdf"
Content-Disposition: attachment; filename="report.pdf"
Content-Transfer-Encoding: base64
Content-ID: <part2@example.org>
Content-Description: The report
Content-Language: en, de
Content-Location: http://example.org/report.pdf

JVBERi0xLjQKJcfsj6IKMSAwIG9iago8PC9UeXBlL0NhdGFsb2c+PgplbmRvYmoKdHJhaWxlcgo8
PC9Sb290IDEgMCBSPj4KJSVFT0YK
--XYZ--
""")

NESTED = crlf("""\
From: Bob <bob@example.com>
To: Alice <alice@example.org>
Subject: Fwd: Report
Date: Fri, 8 Mar 2024 09:30:00 -0500
Message-ID: <nested.3@example.com>
In-Reply-To: <mixed.2@example.org>
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="outer"

--outer
Content-Type: text/plain; charset=us-ascii

Forwarding.
--outer
Content-Type: message/rfc822
Content-Disposition: inline

From: Alice <alice@example.org>
To: bob@example.com
Subject: Report
Date: Thu, 7 Mar 2024 12:00:00 +0000
Message-ID: <mixed.2@example.org>
MIME-Version: 1.0
Content-Type: multipart/alternative; boundary="inner"

--inner
Content-Type: text/plain

plain
--inner
Content-Type: text/html

<b>html</b>
--inner--

--outer--
""")

GROUPS = crlf("""\
From: Mary Smith <mary@x.test>
Sender: secretary@x.test
Reply-To: "Mary (work)" <mary.work@x.test>
To: A Group:Ed Jones <c@a.test>,joe@where.test,John <jdoe@one.test>;, undisclosed-recipients:;
Cc: (comment only) Pete(A nice \\) chap) <pete(his account)@silly.test(his host)>
Bcc: root
Subject: Groups
Message-ID: <grp@x.test>

body
""")

NO_DATE = crlf("""\
From: someone@example.com
Subject: no date here

just text without a final newline""")

RFC2231 = crlf("""\
From: a@b.c
Subject: params
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="b1"; foo=bar

pre
--b1
Content-Type: application/octet-stream; name*=utf-8''%C3%A4rger.txt
Content-Disposition: attachment; filename*0*=utf-8''%C3%A4r; filename*1="ger.txt"; size=5

aGVsbG8=
--b1
Content-Type: text/plain; charset=iso-8859-1; format=flowed
Content-Transfer-Encoding: 8bit

caf\xe9
--b1--
epilogue
""", "latin-1")

DIGEST = crlf("""\
From: list@x.test
Subject: digest
Content-Type: multipart/digest; boundary=d

--d

From: a@x.test
Subject: one

one
--d
Content-Type: text/plain

two
--d--
""")

ODD_HEADERS = crlf("""\
From: a@b.c (John Q)
To: <@r1,@r2:c@d.test>
Cc: "" <e@f.test>, g@h.test (only comment)
Subject: 
Message-ID:   <  spaced@id >  
In-Reply-To: <a@b> <c@d>
Date: garbage
Content-Type: TEXT/Plain; CHARSET=UTF-8; Name="A B"
Content-Transfer-Encoding: BASE64
Content-Disposition: INLINE; FILENAME=x.txt
Content-Language: EN
Content-MD5: abc

aGVsbG8=
""")

TEXT_ASCII = ["TEXT", "PLAIN", ["CHARSET", "us-ascii"], None, None, "7BIT"]
ALICE = [["Alice", None, "alice", "example.org"]]


# --- ENVELOPE, BODY and BODYSTRUCTURE as Dovecot gives them ----------------------------------

def test_plain_message():
    s = summarize(PLAIN)
    assert s.envelope == [
        "Tue, 5 Mar 2024 10:15:00 +0100", "Lunch tomorrow?",
        [["Alice Example", None, "alice", "example.org"]], [["Alice Example", None, "alice", "example.org"]],
        [["Alice Example", None, "alice", "example.org"]],
        [["Bob", None, "bob", "example.com"], [None, None, "carol", "example.com"]],
        [["Dave, Jr.", None, "dave", "example.net"]], None, None, "<1234@example.org>"]
    assert s.body == ["TEXT", "PLAIN", ["CHARSET", "utf-8"], None, None, "7BIT", 40, 5]
    assert s.bodystructure == ["TEXT", "PLAIN", ["CHARSET", "utf-8"], None, None, "7BIT", 40, 5,
                               None, None, None, None]
    assert s.message_id == "<1234@example.org>"
    assert s.subject == "Lunch tomorrow?"
    assert s.from_ == "Alice Example <alice@example.org>"
    assert s.to == "Bob <bob@example.com>, carol@example.com"
    assert s.cc == '"Dave, Jr." <dave@example.net>'
    assert s.date == datetime(2024, 3, 5, 9, 15, tzinfo=timezone.utc)
    assert s.date.utcoffset() == timedelta(hours=1)
    assert s.has_attachments is False


def test_alternative_with_encoded_words():
    s = summarize(ALTERNATIVE)
    jorg = [["=?utf-8?q?J=C3=B6rg?=", None, "jorg", "example.de"]]  # IMAP sends RFC 2047 words as is
    assert s.envelope == [
        "Wed, 06 Mar 2024 08:00:00 -0000", "=?UTF-8?B?R3LDvMOfZQ==?= from =?iso-8859-1?q?J=F6rg?=",
        jorg, jorg, jorg, [[None, None, "team", "example.com"]], None, None, None, "<alt.1@example.de>"]
    assert s.bodystructure == [
        ["TEXT", "PLAIN", ["CHARSET", "utf-8"], None, None, "QUOTED-PRINTABLE", 15, 0, None, None, None, None],
        ["TEXT", "HTML", ["CHARSET", "utf-8"], None, None, "QUOTED-PRINTABLE", 103, 0, None, None, None, None],
        "ALTERNATIVE", ["BOUNDARY", "=_alt_boundary"], None, None, None]
    assert s.body == [
        ["TEXT", "PLAIN", ["CHARSET", "utf-8"], None, None, "QUOTED-PRINTABLE", 15, 0],
        ["TEXT", "HTML", ["CHARSET", "utf-8"], None, None, "QUOTED-PRINTABLE", 103, 0], "ALTERNATIVE"]
    assert s.subject == "Grüße from Jörg"
    assert s.from_ == "Jörg <jorg@example.de>"
    assert s.date == datetime(2024, 3, 6, 8, 0, tzinfo=timezone.utc)


def test_mixed_with_attachment_carries_extension_data():
    s = summarize(MIXED)
    assert s.bodystructure == [
        TEXT_ASCII + [15, 1, None, None, None, None],
        ["APPLICATION", "PDF", ["NAME", "report.pdf"], "<part2@example.org>", "The report", "BASE64", 106,
         None, ["ATTACHMENT", ["FILENAME", "report.pdf"]], ["en", "de"], "http://example.org/report.pdf"],
        "MIXED", ["BOUNDARY", "XYZ"], None, None, None]
    assert s.body == [TEXT_ASCII + [15, 1], ["APPLICATION", "PDF", ["NAME", "report.pdf"], "<part2@example.org>",
                                             "The report", "BASE64", 106], "MIXED"]
    assert s.has_attachments is True


def test_nested_message_rfc822():
    s = summarize(NESTED)
    inner_envelope = ["Thu, 7 Mar 2024 12:00:00 +0000", "Report", ALICE, ALICE, ALICE,
                      [[None, None, "bob", "example.com"]], None, None, None, "<mixed.2@example.org>"]
    bob = [["Bob", None, "bob", "example.com"]]
    assert s.envelope == ["Fri, 8 Mar 2024 09:30:00 -0500", "Fwd: Report", bob, bob, bob, ALICE, None, None,
                          "<mixed.2@example.org>", "<nested.3@example.com>"]
    assert s.bodystructure == [
        TEXT_ASCII + [11, 0, None, None, None, None],
        ["MESSAGE", "RFC822", None, None, None, "7BIT", 324, inner_envelope,
         [TEXT_ASCII + [5, 0, None, None, None, None],
          ["TEXT", "HTML", ["CHARSET", "us-ascii"], None, None, "7BIT", 11, 0, None, None, None, None],
          "ALTERNATIVE", ["BOUNDARY", "inner"], None, None, None],
         17, None, ["INLINE", None], None, None],
        "MIXED", ["BOUNDARY", "outer"], None, None, None]
    assert s.body == [
        TEXT_ASCII + [11, 0],
        ["MESSAGE", "RFC822", None, None, None, "7BIT", 324, inner_envelope,
         [TEXT_ASCII + [5, 0], ["TEXT", "HTML", ["CHARSET", "us-ascii"], None, None, "7BIT", 11, 0], "ALTERNATIVE"],
         17],
        "MIXED"]


def test_group_addresses_comments_and_defaults():
    s = summarize(GROUPS)
    assert s.envelope == [
        None, "Groups", [["Mary Smith", None, "mary", "x.test"]], [[None, None, "secretary", "x.test"]],
        [["Mary (work)", None, "mary.work", "x.test"]],
        [[None, None, "A Group", None], ["Ed Jones", None, "c", "a.test"], [None, None, "joe", "where.test"],
         ["John", None, "jdoe", "one.test"], [None, None, None, None],
         [None, None, "undisclosed-recipients", None], [None, None, None, None]],
        [["Pete", None, "pete", "silly.test"]], [[None, None, "root", "MISSING_DOMAIN"]], None, "<grp@x.test>"]
    assert s.to == ("A Group: Ed Jones <c@a.test>, joe@where.test, John <jdoe@one.test>;, "
                    "undisclosed-recipients:;")
    assert s.date is None


def test_no_date_and_no_content_type():
    s = summarize(NO_DATE)
    someone = [[None, None, "someone", "example.com"]]
    assert s.envelope == [None, "no date here", someone, someone, someone, None, None, None, None, None]
    assert s.bodystructure == TEXT_ASCII + [33, 0, None, None, None, None]
    assert s.date is None and s.message_id is None and s.to == "" and s.cc == ""


def test_odd_headers_kept_raw_and_comment_names():
    s = summarize(ODD_HEADERS)
    john = [["John Q", None, "a", "b.c"]]
    assert s.envelope == [
        "garbage", "", john, john, john, [[None, "@r1,@r2", "c", "d.test"]],
        [[None, None, "e", "f.test"], ["only comment", None, "g", "h.test"]], None,
        "<a@b> <c@d>", "<  spaced@id >  "]
    assert s.bodystructure == ["TEXT", "PLAIN", ["CHARSET", "UTF-8", "NAME", "A B"], None, None, "BASE64", 10, 1,
                               "abc", ["INLINE", ["FILENAME", "x.txt"]], ["EN"], None]
    assert s.date is None and s.message_id == "<  spaced@id >"


def test_rfc2231_parameters_merged_like_dovecot():
    s = summarize(RFC2231)
    assert s.bodystructure == [
        ["APPLICATION", "OCTET-STREAM", ["NAME*", "utf-8''%C3%A4rger.txt"], None, None, "7BIT", 8, None,
         ["ATTACHMENT", ["SIZE", "5", "FILENAME*", "utf-8''%C3%A4rger.txt"]], None, None],
        ["TEXT", "PLAIN", ["CHARSET", "iso-8859-1", "FORMAT", "flowed"], None, None, "8BIT", 4, 0,
         None, None, None, None],
        "MIXED", ["BOUNDARY", "b1", "FOO", "bar"], None, None, None]
    assert [a.filename for a in render(RFC2231).attachments] == ["ärger.txt"]


def test_digest_parts_default_to_message_rfc822():
    s = summarize(DIGEST)
    a = [[None, None, "a", "x.test"]]
    assert s.body == [
        ["MESSAGE", "RFC822", None, None, None, "7BIT", 35, [None, "one", a, a, a, None, None, None, None, None],
         TEXT_ASCII + [3, 0], 3],
        TEXT_ASCII + [3, 0], "DIGEST"]


@pytest.mark.parametrize("raw, body", [
    # boundary never found: one empty part, as Dovecot
    (crlf('From: a@b\nContent-Type: multipart/mixed; boundary="never"\n\ntext with no boundary at all\n'),
     [TEXT_ASCII + [0, 0], "MIXED"]),
    # a boundary that is a prefix of the inner one: the longest match wins
    (crlf("Content-Type: multipart/mixed; boundary=abc\n\n--abc\nContent-Type: multipart/alternative; "
          "boundary=abcdef\n\n--abcdef\nContent-Type: text/plain\n\nx\n--abcdef--\n--abc\n"
          "Content-Type: text/plain\n\ny\n--abc--\n"),
     [[TEXT_ASCII + [1, 0], "ALTERNATIVE"], TEXT_ASCII + [1, 0], "MIXED"]),
    # the same boundary reused inside: the inner close ends the inner multipart
    (crlf("Content-Type: multipart/mixed; boundary=a\n\n--a\nContent-Type: multipart/mixed; boundary=a\n\n"
          "--a\n\nin\n--a--\n--a\n\nout\n--a--\n"),
     [[TEXT_ASCII + [2, 0], "MIXED"], TEXT_ASCII + [3, 0], "MIXED"]),
    # parts without a blank line after their header, and an empty one
    (crlf("Content-Type: multipart/mixed; boundary=z\n\n--z\n--z\nContent-Type: text/plain\n--z--\n"),
     [TEXT_ASCII + [0, 0], TEXT_ASCII + [0, 0], "MIXED"]),
    # Content-* fields without MIME-Version or Content-Type do not count (Dovecot)
    (crlf("Subject: x\nContent-Transfer-Encoding: base64\nContent-ID: <x>\n\nAAAA\n"), TEXT_ASCII + [6, 1]),
    # an invalid Content-Type is text/plain (RFC 2045 5.2)
    (crlf("Content-Type: garbage\n\nx\n"), TEXT_ASCII + [3, 1]),
    # bare LF line ends: sizes are the raw bytes
    (b"Content-Type: multipart/mixed; boundary=q\n\n--q\n\nline1\nline2\n--q--\n", [TEXT_ASCII + [11, 1], "MIXED"]),
])
def test_structure_of_unusual_messages(raw, body):
    assert summarize(raw).body == body


def test_summary_json_round_trip():
    for raw in (PLAIN, NESTED, GROUPS, NO_DATE, b""):
        s = summarize(raw)
        again = Summary.from_json(s.to_json())
        assert again == s
        assert json.loads(s.to_json())["from_"] == s.from_


# --- sections -------------------------------------------------------------------------------

INNER = NESTED[NESTED.index(b"From: Alice"):NESTED.index(b"\r\n--outer--")]


@pytest.mark.parametrize("raw, spec, expected", [
    (NESTED, "", NESTED),
    (NESTED, "HEADER", NESTED[:NESTED.index(b"\r\n\r\n") + 4]),
    (NESTED, "TEXT", NESTED[NESTED.index(b"\r\n\r\n") + 4:]),
    (NESTED, "1", b"Forwarding."),
    (NESTED, "1.MIME", b"Content-Type: text/plain; charset=us-ascii\r\n\r\n"),
    (NESTED, "1.1", b"Forwarding."),  # a leaf's ".1" is itself (as Dovecot)
    (NESTED, "1.HEADER", b""),        # HEADER/TEXT only for message/rfc822 parts
    (NESTED, "2", INNER),
    (NESTED, "2.MIME", b"Content-Type: message/rfc822\r\nContent-Disposition: inline\r\n\r\n"),
    (NESTED, "2.HEADER", INNER[:INNER.index(b"\r\n\r\n") + 4]),
    (NESTED, "2.TEXT", b"--inner\r\nContent-Type: text/plain\r\n\r\nplain\r\n--inner\r\nContent-Type: text/html"
                       b"\r\n\r\n<b>html</b>\r\n--inner--\r\n"),
    (NESTED, "2.1", b"plain"),
    (NESTED, "2.2", b"<b>html</b>"),
    (NESTED, "2.2.MIME", b"Content-Type: text/html\r\n\r\n"),
    (NESTED, "2.2.TEXT", b""),
    (NESTED, "2.3", b""),
    (NESTED, "3", b""),
    (NESTED, "3.MIME", b""),
    (NESTED, "99999999999999999999", b""),
    (NESTED, "HEADER.FIELDS (FROM TO)", b"From: Bob <bob@example.com>\r\nTo: Alice <alice@example.org>\r\n\r\n"),
    (NESTED, 'header.fields ("From" to)', b"From: Bob <bob@example.com>\r\nTo: Alice <alice@example.org>\r\n\r\n"),
    (NESTED, "HEADER.FIELDS.NOT (FROM TO SUBJECT DATE MESSAGE-ID IN-REPLY-TO MIME-VERSION)",
     b'Content-Type: multipart/mixed; boundary="outer"\r\n\r\n'),
    (NESTED, "2.HEADER.FIELDS (SUBJECT)", b"Subject: Report\r\n\r\n"),
    (NESTED, "2.HEADER.FIELDS.NOT (FROM TO DATE MESSAGE-ID MIME-VERSION CONTENT-TYPE)", b"Subject: Report\r\n\r\n"),
    (NESTED, "1.HEADER.FIELDS (SUBJECT)", b""),
    (NESTED, "HEADER.FIELDS (NOSUCH)", b"\r\n"),
    (PLAIN, "1", PLAIN[PLAIN.index(b"Hi Bob"):]),     # a single-part message: part 1 is its body
    (PLAIN, "1.MIME", PLAIN[:PLAIN.index(b"Hi Bob")]),
    (PLAIN, "1.1", b""),
    (PLAIN, "2", b""),
    (PLAIN, "HEADER.FIELDS (SUBJECT)", b"Subject: Lunch\r\n tomorrow?\r\n\r\n"),  # folding kept
    (DIGEST, "1", b"From: a@x.test\r\nSubject: one\r\n\r\none"),
    (DIGEST, "1.MIME", b"\r\n"),
    (DIGEST, "1.TEXT", b"one"),
    (DIGEST, "1.HEADER.FIELDS (SUBJECT)", b"Subject: one\r\n\r\n"),
    (b"From: x@y.z\r\nSubject: only header\r\n", "HEADER.FIELDS.NOT (FROM)", b"Subject: only header\r\n"),
    (b"From: x@y.z\r\nSubject: only header\r\n", "TEXT", b""),
    # the blank line right before a boundary belongs to the boundary (Dovecot)
    (crlf("Content-Type: multipart/mixed; boundary=a\n\n--a\nContent-Type: text/plain\n\n--a--\n"),
     "1.MIME", b"Content-Type: text/plain\r\n"),
    (b"Subject: lf\n\nbody\n", "TEXT", b"body\n"),
])
def test_section(raw, spec, expected):
    got = section(raw, spec)
    assert got == expected
    if "FIELDS" not in spec.upper():
        assert got in raw  # a byte-exact slice


@pytest.mark.parametrize("spec", ["MIME", "0", "1.", ".1", "1..2", "01", "FOO", "1.FOO", "HEADER.FIELDS",
                                  "HEADER.FIELDS ()", "HEADER.FIELDS (FROM", "TEXT.1", "1.MIME.1", "HEADER "])
def test_bad_section_spec_raises_value_error(spec):
    with pytest.raises(ValueError):
        section(NESTED, spec)


# --- search ---------------------------------------------------------------------------------

def test_header_values_are_decoded():
    assert header_values(ALTERNATIVE, "Subject") == ["Grüße from Jörg"]
    assert header_values(ALTERNATIVE, "FROM") == ["Jörg <jorg@example.de>"]
    assert header_values(PLAIN, "subject") == ["Lunch tomorrow?"]
    assert header_values(PLAIN, "x-nothing") == []
    raw = crlf("To: a@b\nto: c@d\nSubject: =?utf-8?b?w6Q=?==?utf-8?b?w7Y=?=\n\nx\n")
    assert header_values(raw, "to") == ["a@b", "c@d"]
    assert header_values(raw, "subject") == ["äö"]
    # a multi-byte character split across two encoded words
    assert header_values(crlf("Subject: =?utf-8?q?=C3?= =?utf-8?q?=A4x?=\n\n"), "subject") == ["äx"]


def test_search_texts():
    body = body_text_for_search(ALTERNATIVE)
    assert "Grüße" in body
    assert "<p>" not in body and "alert" not in body  # HTML as text, scripts dropped
    assert "Grüße from Jörg" not in body  # headers are not body
    assert "Grüße from Jörg" in header_text_for_search(ALTERNATIVE)
    assert "café" in body_text_for_search(RFC2231)
    assert "hello" in body_text_for_search(ODD_HEADERS)  # base64 decoded
    nested = body_text_for_search(NESTED)
    assert "Forwarding." in nested and "plain" in nested and "html" in nested  # attached message too


# --- rendering ------------------------------------------------------------------------------

def test_render_sanitises_html():
    raw = crlf("""\
From: x@y.z
Subject: html
Content-Type: text/html; charset=utf-8

<p onclick="steal()">Hi <b>there</b></p>
<script>alert('x')</script><style>p { background: url(http://track.example/s.png) }</style>
<img src="http://track.example/pixel.gif" width="1"><img src="https://cdn.example/a.png">
<img src="x" onerror="alert(1)"><img src="cid:logo@x">
<a href="https://example.org/page">link</a><a href="javascript:alert(1)">js</a>
<a href="mailto:bob@example.com">mail</a><a href="/relative">rel</a>
<iframe src="https://evil.example"></iframe><form action="https://evil.example"><input></form>
<div style="background-image: url(https://track.example/bg.png)">styled</div>
""")
    r = render(raw)
    html = r.html
    assert r.text is None
    assert "Hi <b>there</b>" in html
    for bad in ("script", "alert", "onclick", "onerror", "track.example", "cdn.example", "javascript:",
                "/relative", "iframe", "evil.example", "style=", "<style", "<form"):
        assert bad not in html, bad
    assert 'src="cid:logo@x"' in html
    assert '<a href="https://example.org/page" target="_blank" rel="noopener noreferrer">link</a>' in html
    assert 'href="mailto:bob@example.com"' in html
    assert "<div>styled</div>" in html


def test_render_alternative_and_attachments():
    r = render(ALTERNATIVE)
    assert r.text == "Grüße"
    assert "<p>Grüße</p>" in r.html and "script" not in r.html and "track.example" not in r.html
    assert r.attachments == []
    assert r.summary == summarize(ALTERNATIVE)

    r = render(MIXED)
    assert r.text == "See attached.\n"
    assert r.html is None
    assert r.attachments == [Attachment(0, "report.pdf", "application/pdf", 78)]
    name, ctype, data = attachment(MIXED, 0)
    assert (name, ctype, len(data)) == ("report.pdf", "application/pdf", 78)
    assert data.startswith(b"%PDF-1.4\n") and data.endswith(b"%%EOF\n")
    with pytest.raises(IndexError):
        attachment(MIXED, 1)
    with pytest.raises(IndexError):
        attachment(PLAIN, 0)

    r = render(NESTED)  # an attached message is an attachment, named by its subject
    assert r.text == "Forwarding."
    assert r.attachments == [Attachment(0, "Report.eml", "message/rfc822", len(INNER))]
    assert attachment(NESTED, 0) == ("Report.eml", "message/rfc822", INNER)


def test_render_charsets_and_hostile_filenames():
    raw = crlf("""\
Content-Type: multipart/mixed; boundary=b

--b
Content-Type: text/plain; charset=x-no-such-charset
Content-Transfer-Encoding: quoted-printable

caf=C3=A9 =
soft break
--b
Content-Type: application/octet-stream
Content-Disposition: attachment; filename="../../etc/passwd"

root
--b
Content-Type: image/png
Content-Transfer-Encoding: base64

iVBORw0KGgo
--b--
""")
    r = render(raw)
    assert r.text == "café soft break"
    assert [(a.filename, a.content_type) for a in r.attachments] == [
        ("passwd", "application/octet-stream"), ("attachment-2.png", "image/png")]
    assert attachment(raw, 1)[2] == b"\x89PNG\r\n\x1a\n"  # missing padding tolerated


# --- composing ------------------------------------------------------------------------------

def test_compose_round_trip():
    when = datetime(2024, 3, 5, 10, 0, tzinfo=timezone.utc)
    raw = compose(
        sender="Jörg Müller <jorg@example.de>", to=["Bob <bob@example.com>", "carol@example.com"],
        cc=["dave@example.net"], bcc=["secret@example.net"],
        subject="Grüße aus Köln – ein langer Betreff, der sicher gefaltet werden muss, weil er lang ist",
        text="Hallo Bob,\nschöne Grüße!\n" + "x" * 200 + "\n",
        attachments=[("bericht ä.pdf", "application/pdf", b"%PDF-1.4 fake"), ("a.txt", "text/plain", b"hi\n")],
        in_reply_to="<orig@example.com>", references=["<first@example.com>"], domain="example.de", date=when)
    assert b"\r\n" in raw and b"\n" not in raw.replace(b"\r\n", b"")  # CRLF only
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998
    raw[:raw.index(b"\r\n\r\n")].decode("ascii")  # headers RFC 2047-encoded
    assert b"secret@example.net" not in raw and b"Bcc" not in raw
    assert raw.count(b"MIME-Version: 1.0") == 1
    s = summarize(raw)
    assert s.subject == "Grüße aus Köln – ein langer Betreff, der sicher gefaltet werden muss, weil er lang ist"
    assert s.from_ == "Jörg Müller <jorg@example.de>"
    assert s.to == "Bob <bob@example.com>, carol@example.com"
    assert s.cc == "dave@example.net"
    assert s.date == when
    assert s.message_id.startswith("<") and s.message_id.endswith("@example.de>")
    assert s.envelope[8] == "<orig@example.com>"
    assert header_values(raw, "references") == ["<first@example.com> <orig@example.com>"]
    r = render(raw)
    assert r.text == "Hallo Bob,\nschöne Grüße!\n" + "x" * 200 + "\n"
    assert [(a.filename, a.content_type, a.size) for a in r.attachments] == [
        ("bericht ä.pdf", "application/pdf", 13), ("a.txt", "text/plain", 3)]
    assert attachment(raw, 0) == ("bericht ä.pdf", "application/pdf", b"%PDF-1.4 fake")
    assert s.bodystructure[-5:-4] == ["MIXED"]


def test_compose_plain_message_gets_fresh_ids():
    a = compose(sender="a@b.c", to=["d@e.f"], subject="hi", text="plain ascii\n")
    b = compose(sender="a@b.c", to=["d@e.f"], subject="hi", text="plain ascii\n")
    assert summarize(a).message_id != summarize(b).message_id
    assert summarize(a).message_id.endswith("@localhost>")
    assert summarize(a).date is not None
    assert render(a).text == "plain ascii\n" and render(a).attachments == []


def test_reply_forward_and_quote():
    assert reply_subject("Lunch") == "Re: Lunch"
    assert reply_subject("Re: Lunch") == "Re: Lunch"
    assert reply_subject("RE: re:Aw: Lunch") == "Re: Lunch"
    assert reply_subject("Fwd: Lunch") == "Re: Fwd: Lunch"
    assert reply_subject("") == "Re: "
    assert forward_subject("Lunch") == "Fwd: Lunch"
    assert forward_subject("Fwd: FW: Lunch") == "Fwd: Lunch"
    assert forward_subject("Re: Lunch") == "Fwd: Re: Lunch"
    when = datetime(2024, 3, 5, 10, 15, tzinfo=timezone.utc)
    assert quote("Hi Bob,\n\n> earlier\nbye\n", "Alice <alice@example.org>", when) == (
        "On Tue, 05 Mar 2024 10:15, Alice <alice@example.org> wrote:\n> Hi Bob,\n>\n>> earlier\n> bye\n")
    assert quote("x", "Alice", None) == "Alice wrote:\n> x\n"


# --- never raise on malformed input ---------------------------------------------------------

TOKENS = [b"\r\n", b"\n", b"\r", b"\r\n\r\n", b"--", b"--outer", b"--inner--", b"--XYZ", b"--b1--", b":", b";",
          b'"', b"(", b")", b"<", b">", b"@", b",", b"\\", b"=?utf-8?q?", b"=?x?b?", b"?=", b"\xff\xfe\x00",
          b"\xc3", b" ", b"\t", b"Content-Type: multipart/mixed; boundary=", b"Content-Type: message/rfc822\r\n",
          b"boundary*0*=utf-8''", b"Content-Transfer-Encoding: base64\r\n", b"To: g: a@b;, ", b"=\r\n", b"=XY"]

SAMPLES = [PLAIN, ALTERNATIVE, MIXED, NESTED, GROUPS, NO_DATE, RFC2231, DIGEST, ODD_HEADERS]
SAMPLES += [raw.replace(b"\r\n", b"\n") for raw in SAMPLES]  # bare LF line ends too


@st.composite
def mutated(draw):
    raw = bytearray(draw(st.sampled_from(SAMPLES)))
    for _ in range(draw(st.integers(1, 8))):
        pos = draw(st.integers(0, len(raw)))
        kind = draw(st.sampled_from(["insert", "delete", "replace"]))
        piece = draw(st.one_of(st.sampled_from(TOKENS), st.binary(max_size=12)))
        if kind == "insert":
            raw[pos:pos] = piece
        elif kind == "delete":
            del raw[pos:pos + draw(st.integers(1, 40))]
        else:
            raw[pos:pos + len(piece)] = piece
    return bytes(raw)


def _numbered_parts(bs: list, number: list[int]):
    """(part number, BODYSTRUCTURE node) of every non-multipart part, numbered as IMAP does."""
    if isinstance(bs[0], list):  # a multipart: its parts, then the subtype and extension data
        for i, child in enumerate(itertools.takewhile(lambda v: isinstance(v, list), bs)):
            yield from _numbered_parts(child, number + [i + 1])
        return
    number = number or [1]
    yield number, bs
    if bs[0] == "MESSAGE" and bs[1] == "RFC822":  # its message's parts are numbered below it
        inner = bs[8]
        yield from _numbered_parts(inner, number if isinstance(inner[0], list) else number + [1])


def _check(raw: bytes) -> None:
    s = summarize(raw)
    assert Summary.from_json(s.to_json()) == s
    assert len(s.envelope) == 10
    for number, node in _numbered_parts(s.bodystructure, []):
        spec = ".".join(map(str, number))
        data = section(raw, spec)
        assert len(data) == node[6], spec  # BODYSTRUCTURE sizes agree with BODY[n]
        if node[0] == "TEXT":
            assert data.count(b"\n") == node[7], spec
        assert section(raw, spec + ".MIME") in raw
    for spec in ("", "HEADER", "TEXT", "1", "2.1", "1.MIME", "2.HEADER", "HEADER.FIELDS (FROM SUBJECT)",
                 "1.HEADER.FIELDS.NOT (TO)"):
        assert isinstance(section(raw, spec), bytes)
    r = render(raw)
    for a in r.attachments:
        assert attachment(raw, a.index)[0] == a.filename
        assert len(attachment(raw, a.index)[2]) == a.size
    header_values(raw, "from")
    header_text_for_search(raw)
    body_text_for_search(raw)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutated_messages_never_raise(raw):
    _check(raw)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=3000))
def test_random_bytes_never_raise(raw):
    _check(raw)


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=400), st.text(max_size=200))
def test_random_text_headers_never_raise(subject, body):
    raw = ("Subject: " + subject + "\r\nFrom: " + body + "\r\nContent-Type: " + subject + "\r\n\r\n" + body)
    _check(raw.encode("utf-8", "surrogatepass"))


def test_pathological_inputs_stay_fast_and_sane():
    many = b"Content-Type: multipart/mixed; boundary=a\r\n\r\n" + b"--a\r\nX: y\r\n" * 20000
    assert len(summarize(many).body) == 20001
    deep = b"".join(b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n" % (i, i) for i in range(300))
    summarize(deep)
    render(deep)
    huge_header = b"Subject: " + b"x" * 1_000_000 + b"\r\n" + b" y\r\n" * 50000 + b"\r\nbody"
    assert summarize(huge_header).subject.startswith("xxx")
