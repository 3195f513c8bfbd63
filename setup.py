"""Build hook: a wheel carries the dashboard's npm assets (uPlot under dashboard/vendor/).

Everything else about the package is in pyproject.toml. A wheel built from a
clean clone (`pip wheel .`) runs `npm ci` here when the assets are missing, so
whatever the dashboard needs is in it; dashboard/package.json's postinstall
copies the files into vendor/.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

DASHBOARD = Path(__file__).resolve().parent / "dashboard"
ASSETS = ("uPlot.esm.js", "uPlot.min.css")


class BuildPyWithDashboard(build_py):
    def run(self) -> None:
        if not all((DASHBOARD / "vendor" / name).is_file() for name in ASSETS):
            npm = shutil.which("npm")
            if npm is None:
                raise SystemExit("building runstream needs npm for the dashboard's assets (dashboard/vendor/ is empty)")
            subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=DASHBOARD, check=True)
        super().run()


setup(cmdclass={"build_py": BuildPyWithDashboard})
