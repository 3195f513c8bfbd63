"""runstream: an event-streaming metrics pipeline for ML training runs.

    from runstream import Experiment, Run
    run = Experiment("sweep").start_logging()
    run.log("loss", 0.25)

One import name, in layers (kept by the import-linter contracts in pyproject.toml):
- the core, this package's own modules: configuration (`config`), the wire format
  and the validated event (`wire`, `events`), the live update (`live`), the error
  tree (`errors`), Kafka client construction (`kafka`);
- `runstream.ingest`, the client a training script imports (on the core only);
- `runstream.storage`, the ClickHouse client and schema (on the core);
- `runstream.processor` and `runstream.api`, the server (on storage and the core);
- the composition root above all: the command line (`cli`), `up` (`server`), the demo.

`pip install runstream` installs the client; `runstream[server]` adds the rest.
"""

from __future__ import annotations

# Not typing.TYPE_CHECKING: importing typing would cost `import runstream` more than the
# interpreter's own start (the CLI and every server process import this first).
TYPE_CHECKING = False

__version__ = "0.1.0"
__all__ = ["Experiment", "Run", "ScriptRunConfig", "__version__"]

if TYPE_CHECKING:
    from runstream.ingest.run import Experiment, Run
    from runstream.ingest.submit import ScriptRunConfig


def __getattr__(name: str) -> object:
    # Lazy: `import runstream.storage` or the CLI's `--version` need not load the Kafka client.
    if name in ("Experiment", "Run"):
        from runstream.ingest import run

        return getattr(run, name)
    if name == "ScriptRunConfig":
        from runstream.ingest import submit

        return submit.ScriptRunConfig
    raise AttributeError(f"module 'runstream' has no attribute {name!r}")
