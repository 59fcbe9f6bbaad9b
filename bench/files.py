"""Files and sites: Agora against vsftpd and nginx on this machine, in one run.

    python bench/files.py [--seconds 5] [--rounds 3] [--access-log] [--keep]

Needs root (it installs Debian's nginx, vsftpd and wrk when absent, and makes a
system user for vsftpd). It starts `python -m agora serve` on ephemeral ports in a
temporary data dir, nginx (one worker) and vsftpd on loopback ports serving the very
same files, and measures:

  (a) a 1 GiB download over FTP (Agora vs vsftpd) and over HTTP (Agora's /~user/ site
      and /api/v1/files/content vs nginx), read by a minimal client into one buffer;
      for HTTP also each server's CPU time per GiB;
  (b) 1000 files of 10 KiB over FTP in one session (ftplib), download and upload;
  (c) wrk on a 5.5 KiB page of a user's site and on a 100 MB file (nginx with one
      worker process, as Agora runs one).

Each figure is the best of --rounds runs, the servers taking turns, so that a noisy
neighbour hurts both alike. Absolute numbers on a shared machine mean little; the
Agora/peer ratios are the result. Access logs are off on both sides unless
--access-log (Agora logs each request at INFO; nginx then logs to a file).
"""

from __future__ import annotations

import argparse
import ftplib
import io
import json
import os
import re
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from common import api, agora_env, cpu_seconds, free_port, install_packages, start_agora, stop, wait_port

GIB = 1024**3
MB = 1000**2
PAGE_SIZE = 5632  # 5.5 KiB
SMALL_FILES = 1000
SMALL_SIZE = 10 * 1024
FTP_USER = "agorabench"  # the system user vsftpd logs in
TOOLS = {"nginx": "nginx", "vsftpd": "vsftpd", "wrk": "wrk"}


# -- setting up ---------------------------------------------------------------------


def ensure_tools() -> None:
    install_packages(package for tool, package in TOOLS.items()
                     if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists())


def write_file(path: Path, size: int) -> None:
    """``size`` bytes that do not compress (a random block repeated: fast to make)."""
    block = os.urandom(1024 * 1024)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as out:
        left = size
        while left:
            out.write(block[:min(left, len(block))])
            left -= min(left, len(block))


def make_page() -> bytes:
    head = b"<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>Bench</title></head><body>\n"
    tail = b"</body></html>\n"
    line = b"<p>A paragraph of a small page on a user's site, for the benchmark.</p>\n"
    body = (line * (PAGE_SIZE // len(line) + 1))[:PAGE_SIZE - len(head) - len(tail)]
    return head + body + tail


@dataclass
class Agora:
    data_dir: Path
    password: str = field(default_factory=lambda: "pw-" + secrets.token_hex(8))
    proc: subprocess.Popen | None = None
    ports: dict[str, int] = field(default_factory=dict)
    token: str = ""

    def start(self, access_log: bool) -> None:
        self.proc, self.ports = start_agora(
            self.data_dir, agora_env(self.password, "info" if access_log else "warning"),
            ("http", "https", "ftp"), log=self.data_dir.parent / "agora.log", required=("http",))

    def call(self, method: str, path: str, body: dict | None = None, token: str | None = None) -> dict:
        return api(self.ports['http'], method, path, body, token, timeout=30)

    def add_user(self, name: str, password: str) -> None:
        admin = self.call("POST", "/api/v1/tokens", {"username": "admin", "password": self.password, "name": "b"})
        self.call("POST", "/api/v1/users", {"name": name, "password": password, "quota_bytes": 8 * GIB},
                  token=admin["token"])
        self.token = self.call("POST", "/api/v1/tokens", {"username": name, "password": password,
                                                          "name": "bench"})["token"]

    def stop(self) -> None:
        stop(self.proc)


def start_nginx(work: Path, root: Path, access_log: bool) -> tuple[subprocess.Popen, int]:
    port = free_port()
    conf = work / "nginx.conf"
    log = f"access_log {work / 'nginx-access.log'};" if access_log else "access_log off;"
    temp = " ".join(f"{kind}_temp_path {work / ('nginx-' + kind)};"
                    for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    conf.write_text(f"""
user root;
worker_processes 1;
daemon off;
pid {work / 'nginx.pid'};
error_log {work / 'nginx-error.log'};
events {{ worker_connections 4096; }}
http {{
  include /etc/nginx/mime.types;
  default_type application/octet-stream;
  {log}
  {temp}
  sendfile on;
  tcp_nopush on;
  keepalive_requests 1000000;
  server {{ listen 127.0.0.1:{port}; root {root}; }}
}}
""")
    proc = subprocess.Popen(["nginx", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    return proc, port


def ensure_ftp_user(home: Path, password: str) -> bool:
    """The system user vsftpd logs in; returns whether it was made here."""
    made = False
    try:
        subprocess.run(["id", FTP_USER], check=True, capture_output=True)
    except subprocess.CalledProcessError:
        subprocess.run(["useradd", "-M", "-d", str(home), "-s", "/bin/bash", FTP_USER], check=True)
        made = True
    subprocess.run(["chpasswd"], input=f"{FTP_USER}:{password}", text=True, check=True)
    return made


def start_vsftpd(work: Path, root: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    low = free_port()
    conf = work / "vsftpd.conf"
    conf.write_text(f"""
listen=YES
listen_ipv6=NO
listen_address=127.0.0.1
listen_port={port}
background=NO
anonymous_enable=NO
local_enable=YES
write_enable=YES
local_umask=022
chroot_local_user=YES
allow_writeable_chroot=YES
local_root={root}
pasv_enable=YES
pasv_address=127.0.0.1
pasv_min_port={low}
pasv_max_port={low + 50}
seccomp_sandbox=NO
secure_chroot_dir=/var/run/vsftpd/empty
pam_service_name=vsftpd
userlist_enable=NO
xferlog_enable=NO
use_localtime=YES
""")
    Path("/var/run/vsftpd/empty").mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(["vsftpd", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    return proc, port


# -- measuring ----------------------------------------------------------------------


RECV = memoryview(bytearray(4 * 1024 * 1024))


def _drain(sock: socket.socket, size: int | None) -> int:
    """Read to the end (or ``size`` bytes) into one reused buffer: a client this cheap
    leaves the servers as the only bottleneck (curl's 16 KiB reads were one)."""
    total = 0
    while size is None or total < size:
        count = sock.recv_into(RECV)
        if not count:
            break
        total += count
    return total


def http_speed(port: int, path: str, headers: dict[str, str] | None = None) -> float:
    """Bytes per second of one HTTP/1.1 download."""
    extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
    with socket.create_connection(("127.0.0.1", port), timeout=120) as sock:
        started = time.perf_counter()
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: bench\r\n{extra}Connection: close\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(65536)
            if not chunk:
                raise RuntimeError(f"GET {path}: connection closed")
            head += chunk
        head, _, body = head.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"GET {path}: {head.splitlines()[0].decode()}")
        length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
        received = len(body) + _drain(sock, length - len(body))
        elapsed = time.perf_counter() - started
    if received != length:
        raise RuntimeError(f"GET {path}: {received} of {length} bytes")
    return received / elapsed


def ftp_speed(port: int, user: str, password: str, path: str) -> float:
    """Bytes per second of one FTP download (passive, binary)."""
    ftp = ftplib.FTP()
    ftp.connect("127.0.0.1", port, timeout=120)
    ftp.login(user, password)
    ftp.voidcmd("TYPE I")
    size = ftp.size(path)
    started = time.perf_counter()
    with ftp.transfercmd(f"RETR {path}") as conn:
        received = _drain(conn, None)
    ftp.voidresp()
    elapsed = time.perf_counter() - started
    ftp.quit()
    if received != size:
        raise RuntimeError(f"RETR {path}: {received} of {size} bytes")
    return received / elapsed


def wrk(url: str, seconds: int, connections: int) -> float:
    result = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", url], capture_output=True, text=True,
                            timeout=seconds + 60)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", result.stdout)
    if errors:
        raise RuntimeError(f"wrk {url}: {errors.group(1)} error responses")
    match = re.search(r"Requests/sec:\s+([\d.]+)", result.stdout)
    if not match:
        raise RuntimeError(f"wrk {url}: {result.stdout}{result.stderr}")
    return float(match.group(1))


def ftp_many(port: int, user: str, password: str, folder: str, names: list[str], upload: bool) -> float:
    """Files per second through one FTP session."""
    ftp = ftplib.FTP()
    ftp.connect("127.0.0.1", port, timeout=60)
    ftp.login(user, password)
    ftp.cwd(folder)
    payload = os.urandom(SMALL_SIZE)
    started = time.perf_counter()
    for name in names:
        if upload:
            ftp.storbinary(f"STOR {name}", io.BytesIO(payload))
        else:
            ftp.retrbinary(f"RETR {name}", lambda chunk: None, blocksize=65536)
    elapsed = time.perf_counter() - started
    ftp.quit()
    return len(names) / elapsed


def costed(pid: int, run, costs: list[float]):
    """``run``, also noting the CPU time process ``pid`` spends on each call in ``costs``:
    the work a server does for the same bytes, which a throughput shared with a busy
    neighbour hides."""
    def measured() -> float:
        before = cpu_seconds(pid)
        result = run()
        costs.append(cpu_seconds(pid) - before)
        return result
    return measured


def best(rounds: int, *runs):
    """Run each measurement ``rounds`` times, taking turns; the best of each."""
    results: list[list[float]] = [[] for _ in runs]
    for _ in range(rounds):
        for i, run in enumerate(runs):
            results[i].append(run())
    return [max(r) for r in results]


@dataclass
class Row:
    test: str
    unit: str
    agora: float | None
    peer: float | None
    peer_name: str
    target: float | None
    note: str = ""

    @property
    def ratio(self) -> float | None:
        return self.agora / self.peer if self.agora and self.peer else None


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "n/a"
    if unit == "B/s":
        return f"{value / 1e9:.2f} GB/s" if value >= 1e8 else f"{value / 1e6:.1f} MB/s"
    return f"{value:,.0f} {unit}"


def print_table(rows: list[Row]) -> None:
    print()
    header = f"{'test':44} {'Agora':>13} {'peer':>22} {'ratio':>7} {'target':>7}"
    print(header)
    print("-" * len(header))
    for row in rows:
        ratio = f"{row.ratio:.2f}x" if row.ratio else "n/a"
        target = f">={row.target}x" if row.target else ""
        peer = f"{fmt(row.peer, row.unit)} {row.peer_name}"
        print(f"{row.test:44} {fmt(row.agora, row.unit):>13} {peer:>22} {ratio:>7} {target:>7}")
        if row.note:
            print(f"{'':44} {row.note}")


# -- the run ------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=5, help="length of each wrk run")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each measurement (the best counts)")
    parser.add_argument("--access-log", action="store_true", help="log each request on both sides")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench: run as root (installs packages, runs vsftpd with a system user)")
    ensure_tools()

    work = Path(tempfile.mkdtemp(prefix="agora-bench-"))
    os.chmod(work, 0o755)
    agora = Agora(work / "data")
    procs: list[subprocess.Popen] = []
    made_user = False
    rows: list[Row] = []
    try:
        agora.start(args.access_log)
        password = "pw-" + secrets.token_hex(8)
        agora.add_user("bench", password)
        tree = agora.data_dir / "files" / "bench"
        public = tree / "public"
        print(f"making the files in {public} ...", flush=True)
        (public / "index.html").parent.mkdir(parents=True, exist_ok=True)
        (public / "index.html").write_bytes(make_page())
        write_file(public / "big.bin", GIB)
        write_file(public / "hundred.bin", 100 * MB)
        small = public / "small"
        small.mkdir()
        names = [f"f{i:04d}.bin" for i in range(SMALL_FILES)]
        for name in names:
            (small / name).write_bytes(os.urandom(SMALL_SIZE))
        for folder in ("up-agora", "up-vsftpd"):
            (public / folder).mkdir()
        # The reference servers read the same files: the data dir is 0700 for Agora.
        for path in (agora.data_dir, agora.data_dir / "files", tree):
            os.chmod(path, 0o755)
        made_user = ensure_ftp_user(tree, password)
        shutil.chown(public / "up-vsftpd", FTP_USER)

        nginx, nginx_port = start_nginx(work, public, args.access_log)
        procs.append(nginx)
        vsftpd, vsftpd_port = start_vsftpd(work, tree)
        procs.append(vsftpd)
        site = f"http://127.0.0.1:{agora.ports['http']}/~bench"
        peer = f"http://127.0.0.1:{nginx_port}"
        auth = {"Authorization": f"Bearer {agora.token}"}
        agora_ftp = agora.ports.get("ftp")
        print(f"agora {agora.ports}, nginx {nginx_port}, vsftpd {vsftpd_port}", flush=True)

        # Warm the page cache and the servers' own caches before anything is timed.
        for path in ("/~bench/big.bin", "/~bench/hundred.bin", "/~bench/index.html"):
            http_speed(agora.ports["http"], path)

        print("(a) 1 GiB downloads ...", flush=True)
        rounds = args.rounds
        http_port = agora.ports["http"]
        nginx_worker = int(Path(f"/proc/{nginx.pid}/task/{nginx.pid}/children").read_text().split()[0])
        cpu: dict[str, list[float]] = {"site": [], "api": [], "nginx": []}
        agora_site, agora_api, nginx_big = best(
            rounds, costed(agora.proc.pid, lambda: http_speed(http_port, "/~bench/big.bin"), cpu["site"]),
            costed(agora.proc.pid, lambda: http_speed(http_port, "/api/v1/files/content/public/big.bin", auth),
                   cpu["api"]),
            costed(nginx_worker, lambda: http_speed(nginx_port, "/big.bin"), cpu["nginx"]))
        cpu_note = "server CPU per GiB: Agora {:.2f} s, nginx {:.2f} s (median)"
        vsftpd_big_run = lambda: ftp_speed(vsftpd_port, FTP_USER, password, "/public/big.bin")  # noqa: E731
        if agora_ftp:
            agora_ftp_big, vsftpd_big = best(
                rounds, lambda: ftp_speed(agora_ftp, "bench", password, "/public/big.bin"), vsftpd_big_run)
        else:
            agora_ftp_big, vsftpd_big = None, best(rounds, vsftpd_big_run)[0]
        no_ftp = "" if agora_ftp else "Agora's FTP listener is not running (no 'ftp' in ports.json)"
        rows += [Row("(a) 1 GiB over FTP", "B/s", agora_ftp_big, vsftpd_big, "vsftpd", 0.9, no_ftp),
                 Row("(a) 1 GiB over HTTP, site /~user/", "B/s", agora_site, nginx_big, "nginx", 0.9,
                     cpu_note.format(statistics.median(cpu["site"]), statistics.median(cpu["nginx"]))),
                 Row("(a) 1 GiB over HTTP, /api/v1/files/content", "B/s", agora_api, nginx_big, "nginx", 0.9,
                     cpu_note.format(statistics.median(cpu["api"]), statistics.median(cpu["nginx"])))]

        print("(b) 1000 files of 10 KiB over FTP ...", flush=True)
        vsftpd_get = lambda: ftp_many(vsftpd_port, FTP_USER, password, "/public/small", names, False)  # noqa: E731
        vsftpd_put = lambda: ftp_many(vsftpd_port, FTP_USER, password, "/public/up-vsftpd", names, True)  # noqa: E731
        if agora_ftp:
            agora_get, peer_get = best(rounds, lambda: ftp_many(agora_ftp, "bench", password, "/public/small",
                                                                 names, False), vsftpd_get)
            agora_put, peer_put = best(rounds, lambda: ftp_many(agora_ftp, "bench", password, "/public/up-agora",
                                                                 names, True), vsftpd_put)
        else:
            agora_get = agora_put = None
            peer_get, peer_put = best(rounds, vsftpd_get, vsftpd_put)
        rows += [Row("(b) 1000 x 10 KiB over FTP, download", "files/s", agora_get, peer_get, "vsftpd", None, no_ftp),
                 Row("(b) 1000 x 10 KiB over FTP, upload", "files/s", agora_put, peer_put, "vsftpd", None,
                     no_ftp or "Agora fsyncs each file and its folder before 226; vsftpd does not")]

        print("(c) wrk ...", flush=True)
        page_agora, page_nginx = best(args.rounds, lambda: wrk(f"{site}/index.html", args.seconds, 50),
                                      lambda: wrk(f"{peer}/index.html", args.seconds, 50))
        big_agora, big_nginx = best(max(1, args.rounds - 1), lambda: wrk(f"{site}/hundred.bin", args.seconds, 4),
                                    lambda: wrk(f"{peer}/hundred.bin", args.seconds, 4))
        rows += [Row("(c) wrk, 5.5 KiB page of a site", "req/s", page_agora, page_nginx, "nginx", 0.5,
                     "one worker process each; -t1 -c50"),
                 Row("(c) wrk, 100 MB file of a site", "req/s", big_agora, big_nginx, "nginx", None,
                     f"= {fmt(big_agora * 100 * MB, 'B/s')} vs {fmt(big_nginx * 100 * MB, 'B/s')}; -t1 -c4")]
    finally:
        for proc in procs:
            stop(proc, 10)
        agora.stop()
        if made_user:
            subprocess.run(["userdel", FTP_USER], capture_output=True)
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print_table(rows)
    if args.json:
        Path(args.json).write_text(json.dumps([{**row.__dict__, "ratio": row.ratio} for row in rows], indent=2))


if __name__ == "__main__":
    main()
