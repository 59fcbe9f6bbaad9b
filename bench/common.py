"""What the bench scripts share: Debian packages, loopback ports, a process's CPU time,
and `python -m agora serve` started and stopped on ephemeral ports."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterable

from agora.config import LISTENERS  # every listener's name, so the ones not measured are turned off

# Passed to every bench server: logins must measure the protocol, not argon2id.
CHEAP_HASHING = ["--identity-argon2-time-cost", "1", "--identity-argon2-memory-kib", "1024",
                 "--identity-argon2-parallelism", "1"]


def fail(message: str) -> None:
    sys.exit(f"bench: {message}")


def install_packages(packages: Iterable[str]) -> None:
    """apt-get install, as root; the packages' own services are not started (policy-rc.d):
    Debian would otherwise start a system nginx, vsftpd or Dovecot on the standard ports."""
    packages = list(packages)
    if not packages:
        return
    if os.geteuid() != 0:
        fail(f"needs {', '.join(packages)}; run as root to have them installed")
    print(f"installing {' '.join(packages)} ...", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    policy = Path("/usr/sbin/policy-rc.d")
    made_policy = not policy.exists()
    if made_policy:
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
    try:
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages], check=True,
                       env=env, stdout=subprocess.DEVNULL)
    finally:
        if made_policy:
            policy.unlink(missing_ok=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


def cpu_seconds(pid: int) -> float:
    """User and system CPU time a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def agora_env(password: str, log_level: str = "warning", **settings: str) -> dict[str, str]:
    """This environment without its AGORA_* settings, plus the admin password and these."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGORA_")}
    env.update(AGORA_ADMIN_PASSWORD=password, AGORA_LOG_LEVEL=log_level, **settings)
    return env


def start_agora(data_dir: Path, env: dict[str, str], listeners: Iterable[str], args: Iterable[str] = (),
                log: Path | None = None, profile: Path | None = None,
                required: Iterable[str] | None = None) -> tuple[subprocess.Popen, dict[str, int]]:
    """`agora serve` on ephemeral ports for ``listeners``, every other listener off (they
    would take their fixed default ports); returns the process and its ports.json once
    it is ready, or stops the bench if one of ``required`` (default: all) is missing.
    Listeners are set through the environment, which a version without some of them
    ignores (flags it would refuse)."""
    wanted = set(listeners)
    env = {**env, **{f"AGORA_{name.upper()}_PORT": "0" if name in wanted else "off" for name in LISTENERS}}
    log = log or data_dir.parent / f"{data_dir.name}.log"
    runner = ["-m", "cProfile", "-o", str(profile)] if profile else []
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, *runner, "-m", "agora", "serve", "--data-dir", str(data_dir),
                                 *args], env=env, stdout=out, stderr=out, stdin=subprocess.DEVNULL)
    ports_file = data_dir / "run" / "ports.json"
    deadline = time.monotonic() + 60
    while not ports_file.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            fail(f"agora serve did not start; see {log}")
        time.sleep(0.1)
    time.sleep(0.2)
    ports = json.loads(ports_file.read_text())
    missing = set(wanted if required is None else required) - set(ports)
    if missing:
        fail(f"agora serve has no {', '.join(sorted(missing))} listener (ports.json: {ports})")
    return proc, ports


def api(port: int, method: str, path: str, body: dict | None = None, token: str | None = None,
        timeout: float = 60) -> dict:
    """One JSON call to an Agora server's HTTP API on loopback."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method,
                                     data=json.dumps(body).encode() if body is not None else None)
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read() or b"{}")


def stop(proc: subprocess.Popen | None, timeout: float = 60) -> None:
    """SIGTERM (a graceful stop), then SIGKILL after ``timeout``."""
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
