"""Talking to another mail server for the outbound queue (``outbound.py``): the next
hop of a domain, one SMTP transaction with it, and the bounce (DSN) when it fails.

smtplib runs in a worker thread, one transaction per domain and attempt. TLS is
opportunistic, as between mail servers generally: STARTTLS when offered, without
certificate checks (most peers' certificates would not pass them); a peer whose TLS
fails gets the message in the clear rather than never.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import smtplib
import ssl
from dataclasses import dataclass
from datetime import datetime
from email.utils import format_datetime, formatdate, make_msgid

import dns.asyncresolver
import dns.exception
import dns.resolver

SMTP_PORT = 25
MAX_HEADERS_RETURNED = 64 * 1024  # of the original message, in a bounce
_ENHANCED = re.compile(r"^([245])\.\d{1,3}\.\d{1,3}\b")
_BARE_LF = re.compile(rb"(?<!\r)\n")


@dataclass(frozen=True)
class Result:
    """What happened to one recipient: an SMTP reply, real or made up (4xx for no answer)."""
    code: int
    text: str

    @property
    def ok(self) -> bool:
        return 200 <= self.code < 300

    @property
    def permanent(self) -> bool:
        return self.code >= 500

    @property
    def temporary(self) -> bool:
        return not self.ok and not self.permanent

    @property
    def status(self) -> str:
        match = _ENHANCED.match(self.text)
        if match:
            return match.group(0)
        return "5.0.0" if self.permanent else "4.0.0"


class _TLSFailed(Exception):
    pass


async def next_hops(domain: str, routes: dict[str, str], timeout: float) -> list[tuple[str, int]] | Result:
    """Where mail for ``domain`` goes, best first; or why it cannot go anywhere."""
    route = routes.get(domain)
    if route:
        host, _, port = route.rpartition(":")
        return [(host.strip("[]"), int(port))]
    try:
        answer = await dns.asyncresolver.resolve(domain, "MX", lifetime=timeout)
    except dns.resolver.NXDOMAIN:
        return Result(550, f"5.1.2 domain {domain} does not exist")
    except dns.resolver.NoAnswer:
        return [(domain, SMTP_PORT)]  # no MX: the domain's own address (RFC 5321 5.1)
    except (dns.exception.DNSException, OSError) as error:
        return Result(451, f"4.4.3 looking up {domain}: {error}")
    records = sorted(answer, key=lambda record: record.preference)
    hosts = [str(record.exchange).rstrip(".") for record in records]
    if hosts == [""]:
        return Result(556, f"5.1.10 {domain} accepts no mail (null MX)")
    return [(host, SMTP_PORT) for host in hosts if host]


async def deliver_to_domain(domain: str, sender: str, recipients: list[str], raw: bytes, *,
                            routes: dict[str, str], helo: str, timeout: float) -> dict[str, Result]:
    hops = await next_hops(domain, routes, timeout)
    if isinstance(hops, Result):
        return {address: hops for address in recipients}
    data = _BARE_LF.sub(b"\r\n", raw)
    last = Result(451, f"4.4.1 no mail server for {domain} answered")
    for host, port in hops:
        for tls in (True, False):
            try:
                return await asyncio.to_thread(_transaction, host, port, helo, sender, recipients,
                                               data, timeout, tls)
            except _TLSFailed as error:
                last = Result(451, f"4.7.0 {host}:{port}: TLS failed: {error.__cause__}")
                continue  # the same host, without TLS
            except (OSError, smtplib.SMTPException) as error:
                last = Result(451, f"4.4.1 {host}:{port}: {error or type(error).__name__}")
                break  # the next host
    return {address: last for address in recipients}


def _text(reply: bytes | str) -> str:
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)
    return " ".join(text.split())


def _transaction(host: str, port: int, helo: str, sender: str, recipients: list[str],
                 data: bytes, timeout: float, tls: bool) -> dict[str, Result]:
    """One SMTP transaction (blocking); raises for a failure before any recipient is
    answered for, returns each recipient's reply otherwise."""
    client = smtplib.SMTP(host, port, local_hostname=helo or None, timeout=timeout)
    try:
        client.ehlo_or_helo_if_needed()
        if tls and client.has_extn("starttls"):
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            try:
                client.starttls(context=context)
            except (ssl.SSLError, smtplib.SMTPException) as error:
                raise _TLSFailed() from error
            client.ehlo()
        options = []
        if client.has_extn("size"):
            options.append(f"SIZE={len(data)}")
        if not data.isascii() and client.has_extn("8bitmime"):
            options.append("BODY=8BITMIME")
        if not (sender + "".join(recipients)).isascii():
            if not client.has_extn("smtputf8"):
                refused = Result(553, "5.6.7 the receiving server does not take UTF-8 addresses")
                return {address: refused for address in recipients}
            options.append("SMTPUTF8")
        code, reply = client.mail(sender, options)
        if code != 250:
            result = Result(code, _text(reply))
            return {address: result for address in recipients}
        results: dict[str, Result] = {}
        accepted = []
        for address in recipients:
            code, reply = client.rcpt(address)
            results[address] = Result(code, _text(reply))
            if 200 <= code < 300:
                accepted.append(address)
        if not accepted:
            return results
        try:
            code, reply = client.data(data)
        except smtplib.SMTPDataError as error:
            code, reply = error.smtp_code, error.smtp_error
        for address in accepted:
            results[address] = Result(code, _text(reply))
        return results
    finally:
        # After the reply to DATA, nothing that goes wrong may turn a delivery into a retry.
        try:
            client.quit()
        except Exception:
            pass
        client.close()


def dsn(hostname: str, sender: str, arrived: datetime, raw: bytes, failed: dict[str, Result],
        expired: bool) -> bytes:
    """A delivery status notification (RFC 3464) telling ``sender`` which recipients
    of ``raw`` failed and why, with the original's header."""
    boundary = "agora-dsn-" + secrets.token_hex(12)
    end = raw.find(b"\r\n\r\n")
    headers = raw[:end + 2] if end >= 0 else raw
    headers = _BARE_LF.sub(b"\r\n", headers[:MAX_HEADERS_RETURNED])
    why = ("It could not be delivered in the time allowed and has been given up:"
           if expired else "It could not be delivered to these recipients:")
    human = "\r\n".join([
        f"This is the mail system at {hostname}.", "",
        "Your message was not delivered to one or more of its recipients.", why, "",
        *(f"<{address}>: {result.code} {result.text}" for address, result in failed.items()), ""])
    report = [f"Reporting-MTA: dns; {hostname}",
              f"Arrival-Date: {format_datetime(arrived, usegmt=True)}", ""]
    for address, result in failed.items():
        report += [f"Final-Recipient: rfc822; {address}", "Action: failed",
                   f"Status: {result.status}",
                   f"Diagnostic-Code: smtp; {result.code} {result.text}"[:990], ""]
    head = "\r\n".join([
        f"From: Mail Delivery System <MAILER-DAEMON@{hostname}>",
        f"To: <{sender}>",
        "Subject: Undelivered Mail Returned to Sender",
        f"Date: {formatdate(usegmt=True)}",
        f"Message-ID: {make_msgid('dsn', domain=hostname)}",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"',
        "", "This is a MIME-encapsulated message.", "",
        f"--{boundary}",
        "Content-Type: text/plain; charset=utf-8",
        "Content-Transfer-Encoding: 8bit", "", human,
        f"--{boundary}",
        "Content-Type: message/delivery-status", "", "\r\n".join(report),
        f"--{boundary}",
        "Content-Type: text/rfc822-headers", "", ""])
    return head.encode("utf-8", "replace") + headers + f"\r\n--{boundary}--\r\n".encode()
