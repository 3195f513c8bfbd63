"""API keys: created and revoked with `runstream keys`, stored hashed.

The store is `$RUNSTREAM_HOME/keys.json` (mode 0600, replaced atomically,
read-modify-write under an exclusive lock so two CLI calls cannot lose a key).
A token is shown once at creation; only its SHA-256 is kept (tokens carry 256
random bits, so a fast hash is enough). Each key belongs to one project.

A store that exists but cannot be read fails closed: `enabled` stays True and
no token is accepted, rather than opening the api to everyone.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from runstream.errors import ServiceError

log = logging.getLogger("runstream.keys")

TOKEN_PREFIX = "rs_"
MAX_PROJECT = 255


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


class KeyStoreError(ServiceError):
    """The key file exists but is not a valid key list."""


class KeyStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._signature: tuple[int, int, int] | None = None
        self._keys: list[dict[str, Any]] = []
        self._by_hash: dict[str, dict[str, Any]] = {}
        self._broken = False

    def _read(self) -> list[dict[str, Any]]:
        data = json.loads(self.path.read_text() or "[]")
        if not isinstance(data, list) or not all(isinstance(k, dict) and {"id", "project", "hash"} <= k.keys() for k in data):
            raise KeyStoreError(f"{self.path} is not a list of keys")
        return data

    def _load(self) -> None:
        """Reload when the file changed, so keys made by the CLI apply to a running server."""
        try:
            st = self.path.stat()
            signature: tuple[int, int, int] | None = (st.st_mtime_ns, st.st_ino, st.st_size)
        except FileNotFoundError:
            signature = None
        if signature == self._signature and self._signature is not None:
            return
        if signature is None:
            keys: list[dict[str, Any]] = []
        else:
            try:
                keys = self._read()
            except (OSError, ValueError, KeyStoreError) as exc:
                if not self._broken:
                    log.error("cannot read the API key store %s (%s): refusing every key until it is fixed", self.path, exc)
                self._broken = True
                self._signature = signature
                self._keys, self._by_hash = [], {}
                return
        self._broken = False
        self._keys = keys
        self._by_hash = {str(k["hash"]): k for k in keys if not k.get("revoked_at")}
        self._signature = signature

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        """Serialise writers across processes (the CLI) and threads."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path.with_name(self.path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            with self._lock:
                self._signature = None  # always re-read under the lock
                self._load()
                if self._broken:
                    raise KeyStoreError(f"{self.path} cannot be read; fix or remove it first")
                yield
        finally:
            os.close(fd)

    def _save(self) -> None:
        tmp = self.path.with_name(self.path.name + f".{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)  # a stale tmp file may have had another mode
        with os.fdopen(fd, "w") as f:
            json.dump(self._keys, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        self._signature = None

    @property
    def enabled(self) -> bool:
        with self._lock:
            self._load()
            return self._broken or bool(self._by_hash)

    def project_for(self, token: str | None) -> str | None:
        if not token:
            return None
        with self._lock:
            self._load()
            digest = _hash(token)
            found: str | None = None
            for known, key in self._by_hash.items():
                if hmac.compare_digest(known, digest):
                    found = str(key["project"])
            return found

    def create(self, project: str, name: str = "") -> tuple[str, dict[str, Any]]:
        if not project or not project.strip() or len(project) > MAX_PROJECT or "\x00" in project:
            raise ValueError(f"project must be a non-empty name of at most {MAX_PROJECT} characters")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        with self._exclusive():
            ids = {k["id"] for k in self._keys}
            key_id = secrets.token_hex(4)
            while key_id in ids:
                key_id = secrets.token_hex(4)
            key = {
                "id": key_id,
                "project": project,
                "name": name,
                "prefix": token[:8],
                "hash": _hash(token),
                "created_at": time.time(),
                "revoked_at": None,
            }
            self._keys.append(key)
            self._save()
        return token, key

    def list(self) -> list[dict[str, Any]]:
        with self._lock:
            self._load()
            if self._broken:
                raise KeyStoreError(f"{self.path} cannot be read")
            return [{k: v for k, v in key.items() if k != "hash"} for key in self._keys]

    def revoke(self, key_id: str) -> bool:
        with self._exclusive():
            for key in self._keys:
                if key["id"] == key_id and not key.get("revoked_at"):
                    key["revoked_at"] = time.time()
                    self._save()
                    return True
        return False
