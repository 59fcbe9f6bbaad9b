"""Modified UTF-7, the encoding of IMAP mailbox names (RFC 3501 section 5.1.3).

Printable ASCII stands for itself except "&", which is "&-"; any other run of characters
is "&" + base64 of its UTF-16BE with "," for "/" and no padding + "-".
"""

from __future__ import annotations

import base64
import binascii


def encode(name: str) -> bytes:
    out = bytearray()
    pending: list[str] = []

    def flush() -> None:
        if pending:
            data = "".join(pending).encode("utf-16-be")
            out.extend(b"&" + base64.b64encode(data).rstrip(b"=").replace(b"/", b",") + b"-")
            pending.clear()

    for char in name:
        if 0x20 <= ord(char) <= 0x7E:
            flush()
            out.extend(b"&-" if char == "&" else char.encode("ascii"))
        else:
            pending.append(char)
    flush()
    return bytes(out)


def decode(data: bytes) -> str:
    """The name ``data`` encodes; ValueError unless it is valid modified UTF-7."""
    out: list[str] = []
    i, n = 0, len(data)
    while i < n:
        byte = data[i]
        if byte != 0x26:  # "&"
            if not 0x20 <= byte <= 0x7E:
                raise ValueError("mailbox names are 7-bit (modified UTF-7)")
            out.append(chr(byte))
            i += 1
            continue
        end = data.find(b"-", i + 1)
        if end < 0:
            raise ValueError("unterminated modified UTF-7 sequence")
        chunk = data[i + 1:end]
        i = end + 1
        if not chunk:
            out.append("&")
            continue
        if len(chunk) % 4 == 1:
            raise ValueError("bad modified UTF-7 sequence")
        try:
            raw = base64.b64decode(chunk.replace(b",", b"/") + b"=" * (-len(chunk) % 4), validate=True)
            text = raw.decode("utf-16-be")
        except (binascii.Error, UnicodeDecodeError):
            raise ValueError("bad modified UTF-7 sequence") from None
        # Printable ASCII must not be encoded (and the encoding must be the shortest).
        if any(0x20 <= ord(c) <= 0x7E for c in text) or len(raw) % 2:
            raise ValueError("bad modified UTF-7 sequence")
        out.append(text)
    return "".join(out)
