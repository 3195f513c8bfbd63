"""Artifact store: file and image bytes, addressed by project/run/path.

One small interface so an object store can follow; the default keeps files in
a folder under RUNSTREAM_HOME.
"""

from __future__ import annotations

import hashlib
import mimetypes
import os
import secrets
from pathlib import Path
from typing import Protocol


class ArtifactStore(Protocol):
    def put(self, project: str, run_id: str, path: str, data: bytes) -> dict[str, object]: ...

    def open_path(self, project: str, run_id: str, path: str) -> Path | None: ...


def safe_relpath(path: str) -> str:
    parts = [p for p in path.replace("\\", "/").split("/") if p not in ("", ".")]
    if not parts or any(p == ".." for p in parts) or len(path) > 1024:
        raise ValueError(f"invalid artifact path {path!r}")
    return "/".join(parts)


class LocalArtifactStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def _file(self, project: str, run_id: str, path: str) -> Path:
        for part in (project, run_id):
            if "/" in part or part in ("", ".", ".."):
                raise ValueError("invalid project or run id")
        return self.root / project / run_id / safe_relpath(path)

    def put(self, project: str, run_id: str, path: str, data: bytes) -> dict[str, object]:
        target = self._file(project, run_id, path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".part")
        tmp.write_bytes(data)
        os.replace(tmp, target)
        content_type = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        return {
            "path": safe_relpath(path),
            "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "uri": f"file://{target}",
            "content_type": content_type,
            "file_kind": "image" if content_type.startswith("image/") else "file",
        }

    def staging_path(self) -> Path:
        """A new file to stream an upload into before put_file (beside the artifacts, so the
        final move is a rename)."""
        staging = self.root / ".staging"
        staging.mkdir(parents=True, exist_ok=True)
        return staging / secrets.token_hex(12)

    def put_file(self, project: str, run_id: str, path: str, staged: Path, size: int, sha256: str) -> dict[str, object]:
        """Move an upload streamed into `staged` (staging_path) into place; put()'s answer."""
        target = self._file(project, run_id, path)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged, target)
        content_type = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        return {
            "path": safe_relpath(path),
            "size": size,
            "sha256": sha256,
            "uri": f"file://{target}",
            "content_type": content_type,
            "file_kind": "image" if content_type.startswith("image/") else "file",
        }

    def open_path(self, project: str, run_id: str, path: str) -> Path | None:
        target = self._file(project, run_id, path)
        return target if target.is_file() else None
