"""The layers hold: `make layers` runs the import-linter contracts of pyproject.toml
(composition root > processor | api | ingest > storage > core; the client and the core
import no server library) on the installed layout, and a breach fails it."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / ".venv" / "bin"


def _lint_imports(layout: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "lint-imports"), "--no-cache", str(ROOT / "pyproject.toml")],
        cwd=layout,
        env={"PYTHONPATH": ".", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_import_contracts_are_kept_and_a_breach_is_caught(tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    made = subprocess.run(["make", "-s", "layers", f"LAYOUT={layout}"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stdout[-4000:] + made.stderr[-2000:]
    assert "0 broken" in made.stdout, made.stdout[-4000:]

    # The client reaching for the server, and for a server library: both contracts break.
    (layout / "runstream" / "ingest" / "breach.py").write_text("import fastapi\nfrom runstream.storage import store\n")
    out = _lint_imports(layout)
    assert out.returncode != 0
    assert "runstream.ingest is not allowed to import runstream.storage" in out.stdout, out.stdout[-4000:]
    assert "runstream.ingest.breach -> fastapi" in out.stdout, out.stdout[-4000:]
