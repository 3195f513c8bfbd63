"""API keys: created and revoked with `runstream keys`, stored hashed.

The store is `$RUNSTREAM_HOME/keys.json` (mode 0600, replaced atomically).
A token is shown once at creation; only its SHA-256 is kept (tokens carry 256
random bits, so a fast hash is enough). Each key belongs to one project.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import threading
import time
from pathlib import Path
from typing import Any

TOKEN_PREFIX = "rs_"


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class KeyStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._mtime: float | None = None
        self._keys: list[dict[str, Any]] = []
        self._by_hash: dict[str, dict[str, Any]] = {}

    def _load(self) -> None:
        """Reload when the file changed, so keys made by the CLI apply to a running server."""
        try:
            mtime = self.path.stat().st_mtime
        except FileNotFoundError:
            mtime = None
        if mtime == self._mtime and (self._keys or mtime is None):
            return
        keys: list[dict[str, Any]] = []
        if mtime is not None:
            keys = json.loads(self.path.read_text() or "[]")
        self._keys = keys
        self._by_hash = {k["hash"]: k for k in keys if not k.get("revoked_at")}
        self._mtime = mtime

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + f".{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(self._keys, f, indent=1)
        os.replace(tmp, self.path)
        self._mtime = None

    @property
    def enabled(self) -> bool:
        with self._lock:
            self._load()
            return bool(self._by_hash)

    def project_for(self, token: str | None) -> str | None:
        if not token:
            return None
        with self._lock:
            self._load()
            digest = _hash(token)
            for known, key in self._by_hash.items():
                if hmac.compare_digest(known, digest):
                    return str(key["project"])
        return None

    def create(self, project: str, name: str = "") -> tuple[str, dict[str, Any]]:
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        key = {
            "id": secrets.token_hex(4),
            "project": project,
            "name": name,
            "prefix": token[:8],
            "hash": _hash(token),
            "created_at": time.time(),
            "revoked_at": None,
        }
        with self._lock:
            self._load()
            self._keys.append(key)
            self._save()
        return token, key

    def list(self) -> list[dict[str, Any]]:
        with self._lock:
            self._load()
            return [{k: v for k, v in key.items() if k != "hash"} for key in self._keys]

    def revoke(self, key_id: str) -> bool:
        with self._lock:
            self._load()
            for key in self._keys:
                if key["id"] == key_id and not key.get("revoked_at"):
                    key["revoked_at"] = time.time()
                    self._save()
                    return True
        return False
