"""SMTP's fast reading of <local@domain> paths agrees with the email package's parser
(aiosmtpd's own), and malformed paths are syntax errors, never exceptions."""

from __future__ import annotations

from aiosmtpd.smtp import SMTP
from hypothesis import given, settings, strategies as st

from agora.mail.smtp import SMTPSession


def session() -> SMTPSession:
    bare = SMTPSession.__new__(SMTPSession)  # _getaddr needs no connection
    bare.local_part_limit = 64
    return bare


def library(arg: str):
    try:
        return SMTP._getaddr(session(), arg)
    except Exception:
        return None, None  # what our _getaddr makes of the library's crashes


PATHS = ["<a@b.example>", "<a.b@c.example> SIZE=100", " <x+y@host-1.example> BODY=8BITMIME",
         "<a..b@c>", "<.a@b>", "<a@b..c>", "<a@-b>", '<"q"@b>', "<a@[1.2.3.4]>", "<a@b>x",
         "<a@b> (comment) SIZE=1", "<a@b>\t SIZE=1", "<" + "a" * 70 + "@b>", "x@", "x@[", "<@", "1@["]


def test_known_paths_read_as_the_library_reads_them():
    for path in PATHS:
        assert session()._getaddr(path) == library(path), path


@settings(max_examples=3000, deadline=None)
@given(st.text(st.sampled_from(list("ab.@<> -+=\"[]()1\t_é")), max_size=24))
def test_any_path_reads_as_the_library_reads_it(path):
    stripped = path.lstrip()
    if stripped.startswith("<>") or (stripped.startswith("<") and ">" not in stripped):
        return  # the null sender and unclosed brackets: decided before either parser
    assert session()._getaddr(path) == library(path)
