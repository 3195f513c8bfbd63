"""The client's disk spool: events Kafka could not take, kept in order until it can.

Each shipper owns a folder `$RUNSTREAM_HOME/spool/<pid>-<token>/` of segment
files; a record is (topic, key, value) with a length header. A later process
adopts the folders of dead owners and replays them first, so events logged
before a crash or an exit without a broker still arrive. Past `max_bytes`
the spool refuses new records and counts what it dropped.
"""

from __future__ import annotations

import os
import secrets
import shutil
import struct
from pathlib import Path

HEADER = struct.Struct("<III")
SEGMENT_BYTES = 64 * 1024 * 1024

Record = tuple[str, bytes, bytes]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Spool:
    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.dir = root / f"{os.getpid()}-{secrets.token_hex(4)}"
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "owner").write_text(str(os.getpid()))
        self.segments: list[Path] = []  # in replay order; the last may be open for writing
        self._writer: object | None = None
        self._writer_path: Path | None = None
        self._counter = 0
        self.bytes = 0
        self.adopted_dirs: list[Path] = []

    @staticmethod
    def orphans(root: Path) -> list[Path]:
        """Spool folders whose owner process is gone."""
        if not root.is_dir():
            return []
        found = []
        for d in sorted(root.iterdir()):
            try:
                pid = int((d / "owner").read_text())
            except (OSError, ValueError):
                pid = -1
            if pid != os.getpid() and (pid < 0 or not _alive(pid)):
                found.append(d)
        return found

    def adopt(self, dirs: list[Path]) -> int:
        """Queue the segments of dead owners ahead of our own; return how many."""
        adopted = []
        for d in dirs:
            adopted.extend(sorted(p for p in d.glob("*.seg") if p.stat().st_size > 0))
            self.adopted_dirs.append(d)
        self.bytes += sum(p.stat().st_size for p in adopted)
        self.segments[:0] = adopted
        return len(adopted)

    def _open_segment(self) -> None:
        self._counter += 1
        path = self.dir / f"{self._counter:09d}.seg"
        self._writer = open(path, "ab")  # noqa: SIM115 - kept open across appends
        self._writer_path = path
        self.segments.append(path)

    def append(self, records: list[Record]) -> int:
        """Write records in order; return how many were refused for lack of room."""
        refused = 0
        for topic, key, value in records:
            tb = topic.encode()
            size = HEADER.size + len(tb) + len(key) + len(value)
            if self.bytes + size > self.max_bytes:
                refused += 1
                continue
            if self._writer is None or (self._writer_path is not None and self._writer_path.stat().st_size > SEGMENT_BYTES):
                self.seal()
                self._open_segment()
            assert self._writer is not None
            self._writer.write(HEADER.pack(len(tb), len(key), len(value)) + tb + key + value)  # type: ignore[attr-defined]
            self.bytes += size
        if self._writer is not None:
            self._writer.flush()  # type: ignore[attr-defined]
        return refused

    def seal(self) -> None:
        """Close the open segment so it can be replayed."""
        if self._writer is not None:
            self._writer.flush()  # type: ignore[attr-defined]
            os.fsync(self._writer.fileno())  # type: ignore[attr-defined]
            self._writer.close()  # type: ignore[attr-defined]
            self._writer = None
            self._writer_path = None

    @property
    def has_data(self) -> bool:
        return bool(self.segments)

    def sealed_segments(self) -> list[Path]:
        return [p for p in self.segments if p != self._writer_path]

    @staticmethod
    def read(path: Path) -> list[Record]:
        data = path.read_bytes()
        out: list[Record] = []
        pos = 0
        while pos + HEADER.size <= len(data):
            lt, lk, lv = HEADER.unpack_from(data, pos)
            pos += HEADER.size
            end = pos + lt + lk + lv
            if end > len(data):  # a torn final record from a crash mid-write
                break
            topic = data[pos : pos + lt].decode()
            key = data[pos + lt : pos + lt + lk]
            value = data[pos + lt + lk : end]
            out.append((topic, key, value))
            pos = end
        return out

    def remove(self, path: Path) -> None:
        try:
            self.bytes -= path.stat().st_size
            path.unlink()
        except OSError:
            pass
        self.segments.remove(path)
        for d in list(self.adopted_dirs):
            if not any(d.glob("*.seg")):
                shutil.rmtree(d, ignore_errors=True)
                self.adopted_dirs.remove(d)

    def close(self) -> None:
        self.seal()
        if not self.segments:
            shutil.rmtree(self.dir, ignore_errors=True)
