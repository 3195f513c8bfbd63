"""The Docker image's structure, read from the Dockerfile and .dockerignore (no daemon, no
services): the three stages, the non-root runtime with its HEALTHCHECK, the [server] extra
installed from the wheel stage's wheel, and a build context without local state.

This module owns those checks; building and running the image is left to a machine with
a Docker daemon.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Stage:
    base: str
    name: str
    instructions: list[tuple[str, str]] = field(default_factory=list)  # (INSTRUCTION, arguments)

    def args(self, instruction: str) -> list[str]:
        return [a for i, a in self.instructions if i == instruction]


def parse_dockerfile(text: str) -> list[Stage]:
    """Stages with their instructions; continuation lines joined, comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            pending += line[:-1].rstrip() + " "
            continue
        logical.append(pending + line)
        pending = ""
    stages: list[Stage] = []
    for line in logical:
        instruction, _, args = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            m = re.fullmatch(r"(?:--\S+\s+)*(\S+)(?:\s+AS\s+(\S+))?", args.strip(), re.IGNORECASE)
            assert m, f"unparsed FROM {args!r}"
            stages.append(Stage(base=m.group(1), name=m.group(2) or str(len(stages))))
        elif stages:
            stages[-1].instructions.append((instruction, args.strip()))
    return stages


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse_dockerfile((REPO / "Dockerfile").read_text())


def test_three_stages_node_assets_python_wheel_slim_runtime(stages: list[Stage]) -> None:
    assert len(stages) == 3, [s.name for s in stages]
    assets, wheel, runtime = stages
    assert assets.base.startswith("node:"), assets.base
    assert any(re.search(r"\bnpm ci\b", r) for r in assets.args("RUN")), assets.args("RUN")
    assert wheel.base.startswith("python:") and runtime.base.startswith("python:") and runtime.base.endswith("-slim"), (wheel.base, runtime.base)
    # The wheel is built with the node stage's assets, by pip, from the sources.
    assert any(c.startswith(f"--from={assets.name} ") and "dashboard/vendor" in c for c in wheel.args("COPY")), wheel.args("COPY")
    assert any(re.search(r"\bpip wheel\b.*--no-deps", r) for r in wheel.args("RUN")), wheel.args("RUN")
    # Neither node nor npm in the runtime.
    assert not any(re.search(r"\b(npm|nodejs|node)\b", r) for r in runtime.args("RUN")), runtime.args("RUN")


def test_the_wheel_stage_copies_every_folder_the_package_maps(stages: list[Stage]) -> None:
    # pyproject.toml's package-dir names the folders the wheel is built from; a folder the
    # image leaves out would be a package missing from its wheel.
    package_dir = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    copied = {arg.split()[0] for arg in stages[1].args("COPY") if not arg.startswith("--")}
    assert set(package_dir.values()) <= copied, sorted(set(package_dir.values()) - copied)
    assert {"setup.py", "pyproject.toml"} <= {word for arg in stages[1].args("COPY") for word in arg.split()}


def test_runtime_installs_the_server_extra_from_the_built_wheel(stages: list[Stage]) -> None:
    wheel, runtime = stages[1], stages[2]
    installs = [r for r in runtime.args("RUN") if re.search(r"\bpip install\b", r)]
    assert len(installs) == 1, runtime.args("RUN")
    (install,) = installs
    assert re.search(r"/wheels/runstream-\*\.whl\)?\[server\]", install), install
    # The wheels come from the wheel stage (a bind mount of it, or a copy).
    assert f"from={wheel.name}" in install or any(c.startswith(f"--from={wheel.name} ") for c in runtime.args("COPY")), install


def test_runtime_runs_as_a_non_root_user_with_a_healthcheck(stages: list[Stage]) -> None:
    runtime = stages[-1]
    users = runtime.args("USER")
    assert users, "the runtime stage sets no USER (it would run as root)"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), user
    names = [i for i, _ in runtime.instructions]
    assert names.index("CMD") > max(i for i, n in enumerate(names) if n == "USER"), "USER must come before CMD"
    (health,) = runtime.args("HEALTHCHECK")
    assert "CMD" in health and "/healthz" in health, health
    assert "8000" in health and "8000" in " ".join(runtime.args("EXPOSE")), (health, runtime.args("EXPOSE"))
    cmd = runtime.args("CMD")[-1]
    assert '"runstream", "api"' in cmd and "0.0.0.0" in cmd, cmd


def test_dockerignore_keeps_local_state_out_of_the_context() -> None:
    patterns = {line.strip().rstrip("/") for line in (REPO / ".dockerignore").read_text().splitlines() if line.strip() and not line.startswith("#")}
    required = {".git", ".venv", ".runstream", "dashboard/vendor", "test-output", "build", "bench/results"}
    assert required <= patterns, sorted(required - patterns)
    assert patterns & {"node_modules", "**/node_modules"}, patterns
    assert patterns & {"__pycache__", "**/__pycache__"}, patterns


def test_parser_joins_continuations_and_names_stages() -> None:
    text = "# c\nFROM a:1 AS one\nRUN x \\\n  # inside\n  && y\nFROM --platform=linux/amd64 b:2\nUSER 10001\n"
    one, two = parse_dockerfile(text)
    assert (one.base, one.name, one.args("RUN")) == ("a:1", "one", ["x && y"])
    assert (two.base, two.name, two.args("USER")) == ("b:2", "1", ["10001"])
