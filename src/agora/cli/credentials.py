"""Where `agora login` keeps its token: ``$XDG_CONFIG_HOME/agora/credentials.json``
(``~/.config`` without XDG), or ``$AGORA_CREDENTIALS``; readable by its owner only.

``AGORA_URL`` and ``AGORA_TOKEN`` override what is stored, for scripts and CI.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from agora.core.fsutil import write_all


class CredentialsError(Exception):
    """The credentials file exists but cannot be used."""


@dataclass(frozen=True)
class Credentials:
    url: str
    user: str | None
    token: str
    token_id: str | None = None
    # True, False (--insecure) or the path of a CA certificate (--ca-cert).
    verify: bool | str = True


def path() -> Path:
    if os.environ.get("AGORA_CREDENTIALS"):
        return Path(os.environ["AGORA_CREDENTIALS"]).expanduser()
    xdg = os.environ.get("XDG_CONFIG_HOME", "")
    # The XDG spec says relative values are invalid and must be ignored.
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".config"
    return base / "agora" / "credentials.json"


def load() -> Credentials | None:
    file = path()
    try:
        data = json.loads(file.read_text())
        verify = data.get("verify", True)
        if not isinstance(verify, (bool, str)):
            raise ValueError("verify must be true, false or a path")
        return Credentials(url=str(data["url"]), user=data.get("user"), token=str(data["token"]),
                           token_id=data.get("token_id"), verify=verify)
    except FileNotFoundError:
        return None
    except OSError as error:
        raise CredentialsError(f"cannot read {file}: {error.strerror}") from None
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise CredentialsError(f"{file} is damaged ({error}); run `agora login` again") from None


def save(credentials: Credentials) -> Path:
    """Write the file atomically, mode 0600 from its first byte, in a 0700 directory."""
    file = path()
    file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    temporary = file.with_name(f".{file.name}.{os.getpid()}.tmp")
    data = (json.dumps(asdict(credentials), indent=2) + "\n").encode()
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        # O_CREAT's mode does not apply to a file left over from an interrupted run.
        os.fchmod(fd, 0o600)
        write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.replace(temporary, file)
    except OSError:
        temporary.unlink(missing_ok=True)
        raise
    return file


def delete() -> bool:
    try:
        path().unlink()
    except FileNotFoundError:
        return False
    return True


def current() -> tuple[str | None, str | None, bool | str]:
    """The URL, token and TLS verification to use, environment first.

    A stored token is used only for the URL it was made for, so pointing AGORA_URL at
    another server never sends it there.
    """
    stored = load()
    env_url = os.environ.get("AGORA_URL", "").rstrip("/") or None
    url = env_url or (stored.url if stored else None)
    same = stored is not None and stored.url.rstrip("/") == (url or "")
    token = os.environ.get("AGORA_TOKEN") or (stored.token if same and stored else None)
    verify = stored.verify if same and stored else True
    return url, token, verify
