"""The `runstream` command line (SPEC: Command line).

It owns parsing, dispatch to the commands, and the check that the server commands
(`up`, `processor`, `api`) have the server install behind them.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import sys
from typing import Any
from urllib.parse import urlparse

from runstream.config import Settings

# The import names of the `server` extra (pyproject.toml). `pip install runstream` is the
# client only; the server commands check for these before importing anything of the
# server, so a client install gets one line saying what to install, not a traceback.
SERVER_MODULES = ("uvicorn", "fastapi", "starlette", "pydantic", "websockets", "clickhouse_connect", "pyarrow", "prometheus_client")


def missing_server_modules(settings: Settings) -> list[str]:
    """The server extra's modules this install lacks for these settings (chdb only for a chdb:// DSN)."""
    needed = list(SERVER_MODULES)
    if settings.clickhouse_dsn.startswith("chdb://"):
        needed.append("chdb")
    return [name for name in needed if importlib.util.find_spec(name) is None]


def _settings(args: argparse.Namespace) -> Settings:
    changes = {}
    for flag, field in (("kafka", "kafka"), ("clickhouse", "clickhouse"), ("home", "home")):
        value = getattr(args, flag, None)
        if value:
            changes[field] = value
    settings = Settings()
    if "home" in changes:
        from pathlib import Path

        changes["home"] = Path(changes["home"]).resolve()
    return settings.with_(**changes) if changes else settings


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kafka", help="Kafka bootstrap servers (RUNSTREAM_KAFKA)")
    p.add_argument("--clickhouse", help="ClickHouse DSN: chdb://PATH or http(s)://... (RUNSTREAM_CLICKHOUSE)")
    p.add_argument("--home", help="local state folder (RUNSTREAM_HOME)")


def _add_http(p: argparse.ArgumentParser, settings_api: str) -> None:
    parsed = urlparse(settings_api)
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=parsed.port or 8000, help="port (default: from RUNSTREAM_API, 8000)")


def build_parser() -> argparse.ArgumentParser:
    defaults = Settings()
    parser = argparse.ArgumentParser(prog="runstream", description="Event-streaming metrics pipeline for ML training runs.")
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="processor + api + dashboard in one process")
    _add_common(up)
    _add_http(up, defaults.api)
    up.add_argument("--demo", action="store_true", help="also keep a small synthetic sweep going through the real client until stopped")
    up.add_argument("--demo-runs", type=int, default=4, help="trials of each demo sweep generation (default 4)")
    up.add_argument("--demo-steps", type=int, default=120, help="steps of each demo trial, 4 a second (default 120)")

    proc = sub.add_parser("processor", help="the processor alone (start several to scale out)")
    _add_common(proc)
    proc.add_argument("--group", help="consumer group id (default runstream-processor)")
    proc.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on 127.0.0.1:PORT")

    api = sub.add_parser("api", help="the api and dashboard alone")
    _add_common(api)
    _add_http(api, defaults.api)

    kafka = sub.add_parser("kafka", help="the local development broker")
    kafka.add_argument("action", choices=["start", "stop", "status"])
    _add_common(kafka)

    clickhouse = sub.add_parser("clickhouse", help="a local ClickHouse server (HTTP interface) for development")
    clickhouse.add_argument("action", choices=["start", "stop", "status"])
    clickhouse.add_argument("--port", type=int, default=8123, help="HTTP port on 127.0.0.1 (default 8123)")
    clickhouse.add_argument("--home", help="local state folder (RUNSTREAM_HOME)")

    keys = sub.add_parser("keys", help="API keys (stored hashed under RUNSTREAM_HOME)")
    keys_sub = keys.add_subparsers(dest="keys_action", required=True)
    create = keys_sub.add_parser("create", help="create a key for a project; prints the token once")
    create.add_argument("--project", required=True)
    create.add_argument("--name", default="")
    keys_sub.add_parser("list", help="list keys (never their tokens)")
    revoke = keys_sub.add_parser("revoke", help="revoke a key by id")
    revoke.add_argument("id")
    keys.add_argument("--home", help="local state folder (RUNSTREAM_HOME)")

    submit = sub.add_parser("submit", help="run a training script as a new run (what Experiment.submit does)")
    submit.add_argument("--experiment", default=None, help="experiment name (default RUNSTREAM_EXPERIMENT or Default)")
    submit.add_argument("--name", default=None, help="run name (default the script's name)")
    submit.add_argument("--compute", default=None, help="compute target (default RUNSTREAM_COMPUTE, else this host: a local target)")
    submit.add_argument("--wait", action="store_true", help="stream the script's output until it ends; exit with its result")
    submit.add_argument("--python", default=None, help="interpreter to run the script with (default this one)")
    submit.add_argument("--source-dir", default=None, help="folder to snapshot (default the working directory, if it holds the script)")
    submit.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE", help="a tag for the run (repeatable)")
    submit.add_argument("--run-id", default=None, help=argparse.SUPPRESS)  # the detached supervisor's run
    submit.add_argument("--quiet", action="store_true", help=argparse.SUPPRESS)
    submit.add_argument("script", help="the script, a path inside the source folder")
    submit.add_argument("args", nargs=argparse.REMAINDER, help="the script's arguments")
    _add_common(submit)

    demo = sub.add_parser("demo", help="a synthetic workload through the real client")
    _add_common(demo)
    demo.add_argument("--runs", type=int, default=6)
    demo.add_argument("--steps", type=int, default=500)
    demo.add_argument("--pace", type=float, default=0.0, help="seconds to sleep between steps")
    return parser


def _submit(args: argparse.Namespace, settings: Settings, raw: list[str]) -> int:
    """`runstream submit`: with --wait this process supervises the run and streams its output;
    without, a detached copy of the command does (with --wait --quiet), and this one prints
    the run and returns."""
    import os
    import subprocess
    import uuid
    from pathlib import Path

    from runstream.errors import InputError

    script = Path(args.script)
    if args.source_dir:
        source = Path(args.source_dir)
    elif not script.is_absolute() and script.resolve().is_relative_to(Path.cwd()):
        source = Path.cwd()
    else:
        source = script.resolve().parent
    script_in_source = script.resolve().relative_to(source.resolve()) if script.resolve().is_relative_to(source.resolve()) else script
    if not args.wait:
        run_id = args.run_id or uuid.uuid4().hex[:20]
        at = raw.index("submit") + 1  # the options go before SCRIPT: what follows it is the script's
        argv = [*raw[:at], "--wait", "--quiet", "--run-id", run_id, *raw[at:]]
        log_dir = settings.home / "runs"
        log_dir.mkdir(parents=True, exist_ok=True)
        with open(log_dir / f"{run_id}.supervisor.log", "ab") as out:
            subprocess.Popen(
                [sys.executable, "-m", "runstream.cli", *argv],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,  # the run outlives this shell's Ctrl-C
                env=os.environ.copy(),
            )
        print(run_id)
        print(f"{settings.api.rstrip('/')}/#/runs/{run_id}", file=sys.stderr)
        return 0
    from runstream.ingest.run import Experiment
    from runstream.ingest.submit import ScriptRunConfig, submitted_exit_code

    experiment = Experiment(args.experiment or os.environ.get("RUNSTREAM_EXPERIMENT") or "Default", settings=settings)
    tags = dict(t.partition("=")[::2] for t in args.tag)
    config = ScriptRunConfig(
        source_directory=source, script=str(script_in_source), arguments=args.args, compute_target=args.compute, python=args.python
    )
    try:
        run = experiment.submit(config, name=args.name, tags=tags, run_id=args.run_id)
    except InputError as exc:
        print(f"runstream submit: {exc}", file=sys.stderr)
        return 2
    if not args.quiet:
        print(f"run {run.id} ({run.get_portal_url()})", file=sys.stderr, flush=True)
    details = run.wait_for_completion(show_output=not args.quiet)
    if not args.quiet:
        print(f"run {run.id}: {details['status']}", file=sys.stderr)
    return submitted_exit_code(run)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    settings = _settings(args)
    if args.command in ("kafka", "clickhouse"):
        from runstream.errors import ServiceError

        if args.command == "kafka":
            from runstream.kafka_broker import LocalBroker

            service: Any = LocalBroker(settings.home, settings.kafka)
        else:
            from runstream.clickhouse_server import LocalClickHouse

            service = LocalClickHouse(settings.home, args.port)
        try:
            print(getattr(service, args.action)())
        except ServiceError as exc:
            print(f"runstream {args.command} {args.action}: {exc}", file=sys.stderr)
            return 1
        return 0
    if args.command == "keys":
        from runstream.keys import KeyStore, KeyStoreError

        store = KeyStore(settings.home / "keys.json")
        try:
            if args.keys_action == "create":
                token, key = store.create(args.project, args.name)
                print(f"key {key['id']} for project {key['project']!r}: {token}")
                print("store it now: only its hash is kept", file=sys.stderr)
            elif args.keys_action == "list":
                for key in store.list():
                    state = "revoked" if key.get("revoked_at") else "active"
                    print(f"{key['id']}  {key['prefix']}...  project={key['project']}  name={key['name']!r}  {state}")
            elif not store.revoke(args.id):
                print(f"no active key {args.id!r}", file=sys.stderr)
                return 1
            else:
                print(f"revoked {args.id}")
        except (ValueError, KeyStoreError) as exc:
            print(f"runstream keys {args.keys_action}: {exc}", file=sys.stderr)
            return 1
        return 0
    if args.command == "submit":
        return _submit(args, settings, list(sys.argv[1:] if argv is None else argv))
    if args.command == "demo":
        from runstream.demo import run_demo

        ids = run_demo(settings, runs=args.runs, steps=args.steps, pace=args.pace)
        print("\n".join(ids))
        return 0
    missing = missing_server_modules(settings)
    if missing:
        print(f"runstream {args.command} needs the server install: pip install 'runstream[server]' (missing: {', '.join(missing)})", file=sys.stderr)
        return 2
    from runstream.server import run, serve

    if args.command == "processor" and args.group:
        settings = settings.with_(group_id=args.group)
    try:
        run(
            serve(
                settings,
                processor=args.command in ("up", "processor"),
                api=args.command in ("up", "api"),
                host=getattr(args, "host", "127.0.0.1"),
                port=getattr(args, "port", 8000),
                demo={"runs": args.demo_runs, "steps": args.demo_steps} if getattr(args, "demo", False) else None,
                metrics_port=getattr(args, "metrics_port", None),
            )
        )
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
