"""One FTP session on pyftpdlib: login through core.identity, uploads through the store.

pyftpdlib implements the protocol; what is ours is here: the login (every password goes
to :meth:`Identity.authenticate`), STOR/APPE/REST+STOR written through an atomic
:class:`Upload` that is committed only when the transfer really completed, the active
mode policy, and the mapping of domain errors to FTP replies.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ipaddress
import logging
import socket
import sys
import threading

from OpenSSL import SSL
from pyftpdlib.handlers import FTPHandler
from pyftpdlib.handlers.ftps.control import TLS_FTPHandler
from pyftpdlib.handlers.ftps.data import TLS_DTPHandler

from agora.core.database import unavailable
from agora.core.errors import AgoraError, AuthenticationFailed, EncryptionRequired, NotFound, RateLimited
from agora.core.identity import ClientInfo, User
from agora.core.runtime import Runtime
from agora.files.access import user_files
from agora.files.ftp_fs import StoreFS, UploadFile, reply_for

log = logging.getLogger("agora.ftp")
quiet = logging.getLogger("pyftpdlib").debug  # for the replies pyftpdlib logs itself

# Names FTP clients send for anonymous access; refused without asking the directory.
ANONYMOUS = {"anonymous", "ftp"}
# How long a session waits for the event loop to check a password (hashing queues
# under load; see identity.max_concurrent_hashes).
LOGIN_TIMEOUT = 60.0
# MFMT would need the store to set times and SITE CHMOD to keep modes: neither is
# offered, so neither is advertised.
NOT_OFFERED = {"MFMT", "SITE CHMOD"}
# How often a logged-in session looks whether its account has ended (core/sessions.py
# tells it from the event loop's thread; the session acts in its own).
ACCOUNT_POLL = 0.2


def plain_address(address: str) -> str:
    """An IPv4 client of a dual-stack listener is ::ffff:a.b.c.d; identity wants a.b.c.d."""
    try:
        ip = ipaddress.ip_address(address.split("%")[0])
    except ValueError:
        return address
    mapped = getattr(ip, "ipv4_mapped", None)
    return str(mapped) if mapped else address


class Authorizer:
    """What pyftpdlib asks of an authorizer, plus the login itself.

    Every permission is granted: a session can name nothing outside its user's own tree
    (the filesystem adapter sees to that), and in it the user may do everything.
    """

    PERMS = "elradfmw"

    def __init__(self, runtime: Runtime, loop: asyncio.AbstractEventLoop):
        self.runtime = runtime
        self.loop = loop

    def login(self, name: str, password: str, client: ClientInfo) -> User:
        """Check a password on the server's event loop (sessions run in threads of their own)."""
        future = asyncio.run_coroutine_threadsafe(
            self.runtime.identity.authenticate(name, password, client), self.loop)
        try:
            return future.result(LOGIN_TIMEOUT)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise

    def has_perm(self, username: str, perm: str, path: str | None = None) -> bool:
        return perm in self.PERMS

    def get_perms(self, username: str) -> str:
        return self.PERMS

    def get_home_dir(self, username: str) -> str:
        return "/"

    def get_msg_login(self, username: str) -> str:
        return f"Logged in as {username}."

    def get_msg_quit(self, username: str) -> str:
        return "Goodbye."

    def impersonate_user(self, username: str, password: str) -> None:
        pass  # one process user for everyone; the store keeps users apart

    def terminate_impersonation(self, username: str) -> None:
        pass


class UploadCommit:
    """Mixed into pyftpdlib's data handlers: settle an upload when its data connection
    closes, before the reply goes out, so that 226 is sent only once the file is on disk.

    In stream mode the end of a file is the end of the connection, and pyftpdlib takes
    a reset connection for one that ended too. A client that dies mid-upload is told
    apart by two signs: its data connection was reset rather than closed, or its control
    connection is gone as well.
    """

    def __init__(self, sock, cmd_channel):
        super().__init__(sock, cmd_channel)
        if not self.connected:
            # Reset before it was even accepted; pyftpdlib would leave a queued
            # transfer waiting for a connection that will not come.
            cmd_channel.data_connection_failed()

    def handle_error(self):
        error = sys.exc_info()[1]
        if isinstance(error, AgoraError):  # quota, files.max_upload
            self._resp = (reply_for(error), quiet)
            self._error = True  # no TLS goodbye on a connection we are cutting short
            self.close()
            return
        super().handle_error()

    def close(self):
        upload = self.file_obj
        if not self._closed and self.receive and isinstance(upload, UploadFile) and not upload.closed:
            # pyftpdlib closes from inside its ``except`` when a read fails (ECONNRESET...).
            lost = _connection_error(sys.exc_info()[1])
            if self.transfer_finished and not lost and not self.cmd_channel.client_gone():
                self._commit(upload)
            else:
                upload.close()
                if self.transfer_finished:  # pyftpdlib took the loss for the end of the file
                    self.transfer_finished = False
                    self._resp = ("426 Connection lost; transfer aborted, nothing stored.", quiet)
                log.info("%s: upload of %s abandoned; the previous version is kept",
                         self.cmd_channel.username, upload.name)
        super().close()

    def _commit(self, upload: UploadFile) -> None:
        try:
            upload.commit()
        except AgoraError as error:
            self._resp = (reply_for(error), quiet)
            self.transfer_finished = False
        except OSError as error:
            log.warning("%s: could not store %s: %s", self.cmd_channel.username, upload.name, error)
            self._resp = ("451 Local error: the file could not be stored.", quiet)
            self.transfer_finished = False


def _connection_error(error: BaseException | None) -> bool:
    if isinstance(error, SSL.SysCallError):
        return error.args[0] > 0  # an errno; -1 is an EOF without TLS close_notify
    return isinstance(error, OSError)


class TLSDataHandler(UploadCommit, TLS_DTPHandler):
    """Data connections, in clear or (after PROT P) in TLS."""


class Session(TLS_FTPHandler):
    """The control connection of one client. Configured per server by ``session_class``."""

    abstracted_fs = StoreFS
    dtp_handler = TLSDataHandler
    proto_cmds = {name: spec for name, spec in FTPHandler.proto_cmds.items() if name not in NOT_OFFERED}
    proto_cmds.update({name: TLS_FTPHandler.proto_cmds[name] for name in ("AUTH", "PBSZ", "PROT")})
    banner = "Agora FTP ready."
    max_login_attempts = 3
    # A wrong password is answered after this pause; identity's rate limit does the rest.
    auth_failed_timeout = 1
    permit_foreign_addresses = False  # no FXP: data goes to the client's own address
    # Set by session_class:
    active_mode = "off"
    max_upload = 0
    registry: "Sessions"

    def __init__(self, conn, server, ioloop=None):
        self.files = None
        self.hold = None                          # the account's hold (core/sessions.py)
        self.account_ended: str | None = None     # set from the event loop's thread
        self._account_poll = None
        # The TCP socket under any TLS layer, to see whether the client is still there.
        self._tcp = conn
        super().__init__(conn, server, ioloop)
        # No inode numbers or Unix modes are kept by the store: not offered in MLSD.
        self._current_facts = ["type", "perm", "size", "modify"]
        self._available_facts = list(self._current_facts)

    # -- the session's life ---------------------------------------------------------------

    def on_connect(self):
        self.registry.add(self)

    def add_channel(self, map=None, events=None):
        super().add_channel(map, events)
        # The session is made by the accepting thread, then moved to a loop (and thread)
        # of its own: its idle timer must move with it.
        idler = getattr(self, "_idler", None)
        if idler is not None and not idler.cancelled and idler._sched is not self.ioloop.sched:
            idler.cancel()
            self._idler = self.ioloop.call_later(self.timeout, self.handle_timeout,
                                                 _errback=self.handle_error)

    def close(self):
        super().close()
        self.registry.discard(self)
        if self._account_poll is not None:
            self._account_poll.cancel()
        if self.hold is not None:
            self.hold.close()

    def end_account(self, reason: str) -> None:
        self.account_ended = reason

    def _check_account(self) -> None:
        """421 and close, aborting a transfer in flight (nothing of it is stored)."""
        if self.account_ended and not self._closed:
            self._account_poll.cancel()
            if self.data_channel is not None:
                self.data_channel.close()
            self.respond(f"421 Logged out: {self.account_ended}.")
            self.close_when_done()

    def process_command(self, cmd, *args, **kwargs):
        if self.registry.draining and cmd != "QUIT":
            self.respond("421 The server is shutting down.")
            self.close_when_done()
            return
        super().process_command(cmd, *args, **kwargs)

    def client_gone(self) -> bool:
        try:
            return self._tcp.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True

    def _drop_queued_transfer(self) -> bool:
        """Forget a RETR/STOR still waiting for its data connection; closing its file
        aborts an upload."""
        queued = self._in_dtp_queue or self._out_dtp_queue
        self._in_dtp_queue = self._out_dtp_queue = None
        if queued:
            file = queued[0] if len(queued) == 2 else queued[2]
            if file is not None:
                file.close()
        return queued is not None

    def data_connection_failed(self) -> None:
        if self._drop_queued_transfer():
            self.respond("425 The data connection was lost before the transfer began.")

    def ftp_ABOR(self, line):
        # pyftpdlib keeps a transfer queued before its data connection came, and would
        # start it on the next one.
        self._drop_queued_transfer()
        super().ftp_ABOR(line)

    @property
    def busy(self) -> bool:
        # getattr: close() deletes some of these, maybe in another thread right now.
        return any(getattr(self, name, None) is not None
                   for name in ("data_channel", "_in_dtp_queue", "_out_dtp_queue"))

    # -- login --------------------------------------------------------------------------

    def ftp_PASS(self, line):
        if self.authenticated:
            self.respond("503 User already authenticated.")
            return
        if not self.username:
            self.respond("503 Login with USER first.")
            return
        if self.username.lower() in ANONYMOUS:
            self.handle_auth_failed("Anonymous access is not allowed.", "")
            return
        client = ClientInfo(address=plain_address(self.remote_ip), protocol="ftp",
                            secure=self._ssl_established)
        try:
            user = self.authorizer.login(self.username, line, client)
        except RateLimited as error:
            self.respond(f"421 {error.detail}; closing the connection.")
            self.close_when_done()
            return
        except EncryptionRequired:
            self.respond("530 Passwords are accepted only over TLS from this address: use AUTH TLS first.")
            self.username = ""
            return
        except AuthenticationFailed:
            log.info("ftp login failed for %r from %s", self.username, client.address)
            self.handle_auth_failed("Wrong user name or password.", "")
            return
        except concurrent.futures.TimeoutError:
            self.respond("421 The server is too busy to check passwords; try again later.")
            self.close_when_done()
            return
        except Exception as error:
            if not unavailable(error):
                raise
            log.warning("ftp login of %r: the database is unavailable: %s", self.username, type(error).__name__)
            self.respond("421 Service temporarily unavailable; try again later.")
            self.close_when_done()
            return
        self.files = user_files(self.authorizer.runtime, user)
        self.hold = self.authorizer.runtime.identity.sessions.open(user, "ftp", self.end_account)
        self._account_poll = self.ioloop.call_every(ACCOUNT_POLL, self._check_account, _errback=self.handle_error)
        log.info("ftp login %s from %s%s", user.name, client.address, " (TLS)" if client.secure else "")
        self.handle_auth_success("/", "", self.authorizer.get_msg_login(user.name))

    # -- data connections ---------------------------------------------------------------

    def _active_allowed(self) -> bool:
        if self.active_mode == "on":
            return True
        return self.active_mode == "loopback" and ClientInfo(plain_address(self.remote_ip), "ftp").loopback

    def ftp_PORT(self, line):
        if not self._active_allowed():
            self.respond("502 Active mode is not available here: use PASV or EPSV.")
            return
        super().ftp_PORT(line)

    def ftp_EPRT(self, line):
        if not self._active_allowed():
            self.respond("502 Active mode is not available here: use PASV or EPSV.")
            return
        super().ftp_EPRT(line)

    # -- uploads ------------------------------------------------------------------------

    def ftp_STOR(self, file, mode="w"):
        """STOR, REST+STOR and (with mode "a") APPE, each written as one atomic Upload."""
        rest = self._restart_position
        self._restart_position = 0
        try:
            size = self._size(file)
            if "a" in mode:
                offset = size or 0  # append: keep all of the current version
            elif rest and (size is None or rest > size):
                self.respond(f"554 Cannot restart at byte {rest}: the file has {size or 0} bytes.")
                return
            else:
                offset = rest
            upload = UploadFile(self.files.upload(file, offset=offset), file, self.max_upload)
        except AgoraError as error:
            self.respond(reply_for(error))
            return
        command = "APPE" if "a" in mode else "STOR"
        if self.data_channel is not None:
            self.respond("125 Data connection already open. Transfer starting.")
            self.data_channel.file_obj = upload
            self.data_channel.enable_receiving(self._current_type, command)
        else:
            self.respond("150 File status okay. About to open data connection.")
            self._in_dtp_queue = (upload, command)
        return file

    def _size(self, path: str) -> int | None:
        try:
            return self.files.stat(path).size
        except NotFound:
            return None


class ImplicitSession(Session):
    """Implicit FTPS (what curl means by ftps://): TLS from the first byte, the banner
    inside it.

    pyftpdlib knows only AUTH TLS, so the connection is secured as if AUTH had just
    been answered, and the 220 waits for the handshake. PBSZ and PROT then work as on
    an explicit session, and the control channel counts as secure for the login.
    """

    def handle(self):
        self.on_connect()
        if not self._closed and not self._closing:
            self.secure_connection(self.ssl_context)

    def handle_ssl_established(self):
        self.respond(f"220 {self.banner}")

    def handle_max_cons(self):
        # A 421 in clear would reach a client expecting a TLS handshake as garbage.
        self.close()

    def handle_max_cons_per_ip(self):
        self.close()

    def handle_failed_ssl_handshake(self):
        log.info("ftps: TLS handshake failed from %s", plain_address(self.remote_ip))
        self.close()


class Sessions:
    """The open sessions of one server, seen from the thread that stops it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: set[Session] = set()
        self.draining = False

    def add(self, session: Session) -> None:
        with self._lock:
            self._open.add(session)

    def discard(self, session: Session) -> None:
        with self._lock:
            self._open.discard(session)

    def __len__(self) -> int:
        return len(self._open)

    def transferring(self) -> bool:
        with self._lock:
            return any(session.busy for session in self._open)
