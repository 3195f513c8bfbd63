"""Artifact store: file and image bytes, addressed by project/run/path.

One small interface so an object store can follow; the default keeps files in
a folder under RUNSTREAM_HOME.
"""

from __future__ import annotations

import hashlib
import mimetypes
import os
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

    def open_path(self, project: str, run_id: str, path: str) -> Path | None:
        target = self._file(project, run_id, path)
        return target if target.is_file() else None
