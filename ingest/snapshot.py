"""The source snapshot of a submitted run: which files, as a zip, and a copy to run in.

The files are the source folder's, less what git would ignore: in a git work
tree git itself says (`git ls-files --cached --others --exclude-standard`,
so every .gitignore, .git/info/exclude and the global excludes count);
elsewhere the folder's .gitignore files are read here (`Ignore`, the common
subset: globs, `**`, a leading `/` anchoring to the file's folder, a trailing
`/` for folders, `!` to re-include). `.git` itself is never taken. Past
`max_bytes` (RUNSTREAM_SNAPSHOT_MAX_BYTES, default 300 MB) the snapshot is
refused with the largest files named, before anything is submitted.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import zipfile
from dataclasses import dataclass
from pathlib import Path

from runstream.errors import InputError

DEFAULT_MAX_BYTES = 300 * 1024 * 1024


class SnapshotTooLarge(InputError):
    """The source folder is larger than the snapshot cap."""


def max_bytes() -> int:
    return int(os.environ.get("RUNSTREAM_SNAPSHOT_MAX_BYTES", "") or DEFAULT_MAX_BYTES)


@dataclass(frozen=True)
class _Rule:
    base: str  # folder of the .gitignore, relative to the root ("" for the root)
    regex: re.Pattern[str]
    negate: bool
    dir_only: bool


def _glob_regex(pattern: str) -> str:
    """A gitignore glob as a regex over '/'-separated paths ('*' stays inside one part)."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("/**", i) and i + 3 == len(pattern):
            out.append("/.*")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[" and (end := pattern.find("]", i + 1)) > i + 1:
            chars = pattern[i + 1 : end]
            out.append("[" + ("^" + chars[1:] if chars.startswith("!") else chars).replace("\\", "\\\\") + "]")
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return "".join(out)


class Ignore:
    """The .gitignore rules found under a folder (for a folder outside git)."""

    def __init__(self) -> None:
        self.rules: list[_Rule] = []

    def add_file(self, gitignore: Path, base: str) -> None:
        for raw in gitignore.read_text(errors="replace").splitlines():
            line = raw.rstrip()
            if not line or line.startswith("#"):
                continue
            negate = line.startswith("!")
            line = line[1:] if negate else line
            dir_only = line.endswith("/")
            line = line.rstrip("/")
            anchored = "/" in line
            line = line.lstrip("/")
            body = _glob_regex(line)
            regex = re.compile(("" if anchored else "(?:.*/)?") + body + "$")
            self.rules.append(_Rule(base, regex, negate, dir_only))

    def ignored(self, rel: str, is_dir: bool) -> bool:
        """Whether `rel` (relative to the root, '/'-separated) is ignored; the last matching rule wins."""
        result = False
        for rule in self.rules:
            if rule.base and not rel.startswith(rule.base + "/"):
                continue
            sub = rel[len(rule.base) + 1 :] if rule.base else rel
            if rule.dir_only and not is_dir:
                continue
            if rule.regex.match(sub):
                result = not rule.negate
        return result


def _git_files(root: Path) -> list[str] | None:
    """The files git would take from `root`, relative to it; None when it is not in a work tree."""
    try:
        inside = subprocess.run(["git", "-C", str(root), "rev-parse", "--is-inside-work-tree"], capture_output=True, text=True, timeout=10)
        if inside.returncode != 0 or inside.stdout.strip() != "true":
            return None
        listed = subprocess.run(
            ["git", "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard"], capture_output=True, timeout=60, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    names = [n for n in listed.stdout.decode(errors="surrogateescape").split("\0") if n]
    return sorted({n for n in names if (root / n).is_file() and not n.startswith(".git/")})


def _walk_files(root: Path) -> list[str]:
    ignore = Ignore()
    found: list[str] = []
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        base = "" if here == root else here.relative_to(root).as_posix()
        if ".gitignore" in files:
            ignore.add_file(here / ".gitignore", base)
        keep = []
        for d in sorted(dirs):
            rel = f"{base}/{d}" if base else d
            if d != ".git" and not ignore.ignored(rel, True) and not (here / d).is_symlink():
                keep.append(d)
        dirs[:] = keep
        for f in sorted(files):
            rel = f"{base}/{f}" if base else f
            if not ignore.ignored(rel, False):
                found.append(rel)
    return found


def source_files(root: Path, limit: int | None = None) -> list[str]:
    """The snapshot's files, relative to `root`; SnapshotTooLarge past `limit` bytes."""
    root = root.resolve()
    if not root.is_dir():
        raise InputError(f"source_directory {str(root)!r} is not a folder")
    files = _git_files(root)
    if files is None:
        files = _walk_files(root)
    cap = max_bytes() if limit is None else limit
    sizes = {f: (root / f).stat().st_size for f in files}
    total = sum(sizes.values())
    if total > cap:
        largest = ", ".join(f"{f} ({s / 1e6:.1f} MB)" for f, s in sorted(sizes.items(), key=lambda x: -x[1])[:5])
        raise SnapshotTooLarge(
            f"the snapshot of {str(root)!r} is {total / 1e6:.1f} MB, over the {cap / 1e6:.0f} MB cap (RUNSTREAM_SNAPSHOT_MAX_BYTES); "
            f"largest: {largest}. Add what the run does not need to .gitignore."
        )
    return files


def write_zip(root: Path, files: list[str], target: Path) -> Path:
    """The files as a zip at `target` (deflated; the archive is the run's `snapshot.zip`)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as archive:
        for rel in files:
            archive.write(root / rel, rel)
    return target


def copy_tree(root: Path, files: list[str], target: Path) -> Path:
    """The files copied under `target`: the folder a local run executes in, so that its
    ./outputs is its own and a later edit of the source does not change a queued run."""
    for rel in files:
        dest = target / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / rel, dest)
    return target
