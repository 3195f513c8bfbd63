"""The tracking endpoints of MLflow's REST API 2.0 under /api/2.0/mlflow/ (SPEC: "MLflow-
compatible tracking API"), plus MLflow 3's logged models, which `log_model` and autologging
call. Writes go through `writer` (wire events on Kafka), reads through `reads`
(ClickHouse), experiments and models through `objects`.

The MLflow API works inside one project: the API key's (an `MLFLOW_TRACKING_TOKEN`
arrives as `Authorization: Bearer <key>`, which api/auth.py already checks and scopes),
or RUNSTREAM_PROJECT's when no keys exist. A run of another project answers
RESOURCE_DOES_NOT_EXIST, as a missing one does.
"""

from __future__ import annotations

import random
import re
import time
import uuid
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request, Response

from runstream.api.mlflow import objects, reads
from runstream.api.mlflow.context import Ctx, MlflowRoute, ctx, json_response, lifespan
from runstream.api.mlflow.filters import parse_filter, parse_order_by
from runstream.api.mlflow.protocol import MlflowError, field, integer, invalid, key_values, not_found, number, text
from runstream.api.mlflow.status import TERMINAL, to_mlflow, to_runstream
from runstream.wire import MAX_TS

PREFIX = "/api/2.0/mlflow"
MAX_SEARCH_RESULTS = 50_000
MAX_BATCH_METRICS, MAX_BATCH_PARAMS, MAX_BATCH_TAGS = 1000, 100, 100

router = APIRouter(route_class=MlflowRoute, tags=["mlflow"], lifespan=lifespan)


# Runs this api instance knows exist, per (project, run id): writes skip the lookup.
_known_runs: dict[tuple[str, str], str] = {}
# Params this api instance logged, per run: the immutability check needs no read for them.
_sent_params: dict[tuple[str, str], dict[str, str]] = {}
# Runs whose every param is in _sent_params: created here, or their stored params read once.
_params_known: set[tuple[str, str]] = set()
MAX_KNOWN = 100_000


def _remember(project: str, run_id: str, experiment: str) -> None:
    if len(_known_runs) >= MAX_KNOWN:
        _known_runs.clear()
        _sent_params.clear()
        _params_known.clear()
    _known_runs[(project, run_id)] = experiment


async def existing_run(c: Ctx, run_id: str) -> str:
    """The storage experiment of a run of this project (RESOURCE_DOES_NOT_EXIST otherwise)."""
    known = _known_runs.get((c.project, run_id))
    if known is not None:
        return known
    await c.writer.wait_stored([run_id])
    row = await c.call(reads.run_row, run_id)
    _remember(c.project, run_id, row["experiment"])
    return str(row["experiment"])


def _run_id(c: Ctx) -> str:
    value = text(c.body, "run_id", "run_uuid", required=True)
    assert value is not None
    return value


def _ok() -> Response:
    return json_response({})


# --- experiments ---


def _experiment_json(e: dict[str, Any]) -> dict[str, Any]:
    return {
        "experiment_id": e["experiment_id"],
        "name": e["name"],
        "artifact_location": e.get("artifact_location") or f"mlflow-artifacts:/{e['experiment_id']}",
        "lifecycle_stage": e["lifecycle_stage"],
        "last_update_time": e["last_update_time"],
        "creation_time": e["creation_time"],
        "tags": key_values(e.get("tags", {})),
    }


def _tags_of(body: dict[str, Any], name: str = "tags") -> dict[str, str]:
    items = body.get(name) or []
    if isinstance(items, dict):
        items = [{"key": k, "value": v} for k, v in items.items()]
    if not isinstance(items, list):
        raise invalid(f"'{name}' must be a list of {{key, value}}")
    out: dict[str, str] = {}
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("key"), str) or not item["key"]:
            raise invalid(f"every entry of '{name}' needs a non-empty string key")
        value = item.get("value", "")
        out[item["key"]] = "" if value is None else str(value)
    return out


async def _experiment(c: Ctx, experiment_id: str) -> dict[str, Any]:
    found = await c.call(objects.experiment_by_id, experiment_id)
    if found is None:
        raise not_found(f"No Experiment with id={experiment_id} exists")
    return dict(found)


@router.post(f"{PREFIX}/experiments/create")
async def create_experiment(request: Request) -> Response:
    c = await ctx(request)
    name = text(c.body, "name", required=True)
    assert name is not None
    if not name.strip() or len(name) > 255 or "\x00" in name:
        raise invalid(f"Invalid experiment name {name!r}")
    if await c.call(objects.experiment_by_name, name) is not None:
        raise MlflowError("RESOURCE_ALREADY_EXISTS", f"Experiment(name={name}) already exists.")
    renamed = await c.call(objects.experiment_by_id, objects.experiment_id_for(c.project, name))
    if renamed is not None:  # the id (and the runs) of this name belong to an experiment renamed since
        raise MlflowError("RESOURCE_ALREADY_EXISTS", f"Experiment(name={name}) was renamed to {renamed['name']!r}; its runs keep the name.")
    now = objects.now_ms()
    experiment = {
        "experiment_id": objects.experiment_id_for(c.project, name),
        "name": name,
        "storage_name": name,
        "lifecycle_stage": "active",
        "creation_time": now,
        "last_update_time": now,
        "tags": _tags_of(c.body),
    }
    if text(c.body, "artifact_location"):
        experiment["artifact_location"] = text(c.body, "artifact_location")
    await c.call(objects.save_experiment, experiment)
    return json_response({"experiment_id": experiment["experiment_id"]})


@router.get(f"{PREFIX}/experiments/get")
async def get_experiment(request: Request) -> Response:
    c = await ctx(request)
    e = await _experiment(c, str(text(c.body, "experiment_id", required=True)))
    return json_response({"experiment": _experiment_json(e)})


@router.get(f"{PREFIX}/experiments/get-by-name")
async def get_experiment_by_name(request: Request) -> Response:
    c = await ctx(request)
    name = text(c.body, "experiment_name", required=True)
    found = await c.call(objects.experiment_by_name, name)
    if found is None:
        raise not_found(f"Could not find experiment with name '{name}'")
    return json_response({"experiment": _experiment_json(found)})


_EXP_COND = re.compile(
    r"""^\s*(?:(?:attributes?|attr)\.)?(?P<attr>name|creation_time|last_update_time)|^\s*tags?\.(?:`(?P<qtag>[^`]+)`|"(?P<dtag>[^"]+)"|(?P<tag>[\w.\-/:]+))""",
    re.IGNORECASE,
)
_EXP_REST = re.compile(r"""\s*(?P<op>!=|<=|>=|=|<|>|ILIKE|LIKE)\s*(?:'(?P<s>(?:[^']|'')*)'|"(?P<d>[^"]*)"|(?P<n>[+-]?\d+))\s*$""", re.IGNORECASE)


def _like(pattern: str, value: str, insensitive: bool) -> bool:
    rx = "".join(".*" if ch == "%" else "." if ch == "_" else re.escape(ch) for ch in pattern)
    return re.fullmatch(rx, value, re.IGNORECASE | re.DOTALL if insensitive else re.DOTALL) is not None


def _experiment_filter(text_: str | None) -> Callable[[dict[str, Any]], bool]:
    """MLflow's experiment filter (name, creation_time, last_update_time, tags.<key>; AND), evaluated in Python."""
    checks: list[Callable[[dict[str, Any]], bool]] = []
    for part in re.split(r"\s+AND\s+(?=(?:[^']*'[^']*')*[^']*$)", text_ or "", flags=re.IGNORECASE):
        if not part.strip():
            continue
        head = _EXP_COND.match(part)
        rest = _EXP_REST.match(part[head.end() :]) if head else None
        if head is None or rest is None:
            raise invalid(f"Invalid experiment filter {part.strip()!r}")
        op = rest.group("op").upper()
        literal: str | int = (
            rest.group("s").replace("''", "'")
            if rest.group("s") is not None
            else rest.group("d")
            if rest.group("d") is not None
            else int(rest.group("n"))
        )
        attr = head.group("attr")
        tag = head.group("qtag") or head.group("dtag") or head.group("tag")

        def check(
            e: dict[str, Any], attr: str | None = attr, tag: str | None = tag, op: str = op, literal: str | int = literal, clause: str = part.strip()
        ) -> bool:
            value: Any = e.get(attr.lower()) if attr else e.get("tags", {}).get(tag)
            if value is None:
                return False
            if op in ("LIKE", "ILIKE"):
                return _like(str(literal), str(value), op == "ILIKE")
            if isinstance(literal, int) != isinstance(value, int):
                raise invalid(f"Invalid experiment filter {clause!r}: wrong value type")
            return bool(
                {
                    "=": value == literal,
                    "!=": value != literal,
                    "<": value < literal,
                    "<=": value <= literal,
                    ">": value > literal,
                    ">=": value >= literal,
                }[op]
            )

        checks.append(check)
    return lambda e: all(ch(e) for ch in checks)


@router.post(f"{PREFIX}/experiments/search")
@router.get(f"{PREFIX}/experiments/search")
async def search_experiments(request: Request) -> Response:
    c = await ctx(request)
    view = reads.view_type(field(c.body, "view_type"))
    max_results = integer(c.body, "max_results", default=1000) or 1000
    if not 1 <= max_results <= MAX_SEARCH_RESULTS:
        raise invalid(f"Invalid value {max_results} for parameter 'max_results' supplied")
    keep = _experiment_filter(text(c.body, "filter"))
    found = [e for e in await c.call(objects.experiments) if (view == 3 or (e["lifecycle_stage"] == "deleted") == (view == 2)) and keep(e)]
    order = c.body.get("order_by") or []
    found.sort(key=lambda e: int(e["experiment_id"]))
    found.sort(key=lambda e: e["creation_time"], reverse=True)
    for item in reversed(order if isinstance(order, list) else [order]):
        m = re.fullmatch(r"\s*(?:attributes?\.)?(name|experiment_id|creation_time|last_update_time)(?:\s+(ASC|DESC))?\s*", str(item), re.IGNORECASE)
        if m is None:
            raise invalid(f"Invalid order_by clause {item!r}")
        key = m.group(1).lower()
        found.sort(key=lambda e, key=key: int(e[key]) if key == "experiment_id" else e[key], reverse=(m.group(2) or "ASC").upper() == "DESC")
    offset = reads.offset_of(text(c.body, "page_token"))
    page = found[offset : offset + max_results]
    body: dict[str, Any] = {"experiments": [_experiment_json(e) for e in page]}
    if offset + max_results < len(found):
        body["next_page_token"] = reads.page_token(offset + max_results)
    return json_response(body)


async def _update_experiment(c: Ctx, change: Callable[[dict[str, Any]], None]) -> Response:
    e = await _experiment(c, str(text(c.body, "experiment_id", required=True)))
    change(e)
    await c.call(objects.save_experiment, e)
    return _ok()


@router.post(f"{PREFIX}/experiments/update")
async def update_experiment(request: Request) -> Response:
    c = await ctx(request)
    new_name = text(c.body, "new_name")
    if new_name is not None:
        existing = await c.call(objects.experiment_by_name, new_name)
        if existing is not None and existing["experiment_id"] != str(text(c.body, "experiment_id")):
            raise MlflowError("RESOURCE_ALREADY_EXISTS", f"Experiment(name={new_name}) already exists.")

    def rename(e: dict[str, Any]) -> None:
        if new_name:
            e["name"] = new_name  # runs keep their stored experiment (storage_name)

    return await _update_experiment(c, rename)


@router.post(f"{PREFIX}/experiments/delete")
async def delete_experiment(request: Request) -> Response:
    c = await ctx(request)
    if str(text(c.body, "experiment_id", required=True)) == objects.DEFAULT_EXPERIMENT_ID:
        raise invalid("Cannot delete the default experiment '0'. This is an internally reserved experiment.")
    return await _update_experiment(c, lambda e: e.update(lifecycle_stage="deleted"))


@router.post(f"{PREFIX}/experiments/restore")
async def restore_experiment(request: Request) -> Response:
    c = await ctx(request)
    return await _update_experiment(c, lambda e: e.update(lifecycle_stage="active"))


@router.post(f"{PREFIX}/experiments/set-experiment-tag")
async def set_experiment_tag(request: Request) -> Response:
    c = await ctx(request)
    key, value = text(c.body, "key", required=True), text(c.body, "value", default="")
    return await _update_experiment(c, lambda e: e.setdefault("tags", {}).update({key: value}))


@router.post(f"{PREFIX}/experiments/delete-experiment-tag")
async def delete_experiment_tag(request: Request) -> Response:
    c = await ctx(request)
    key = text(c.body, "key", required=True)
    return await _update_experiment(c, lambda e: e.setdefault("tags", {}).pop(key, None))


# --- runs ---

_ADJECTIVES = (
    "amber",
    "bold",
    "brisk",
    "calm",
    "clever",
    "crisp",
    "eager",
    "gentle",
    "keen",
    "lucid",
    "nimble",
    "quiet",
    "rapid",
    "sunny",
    "vivid",
    "witty",
)
_NOUNS = ("badger", "crane", "falcon", "fox", "heron", "lynx", "otter", "owl", "panda", "raven", "seal", "stag", "swift", "tiger", "whale", "wren")


def _run_name() -> str:
    return f"{random.choice(_ADJECTIVES)}-{random.choice(_NOUNS)}-{random.randrange(1000)}"


def _seconds(ms: Any, what: str) -> float:
    value = number(ms, what) / 1000.0
    if not 0 <= value < MAX_TS:
        raise invalid(f"Invalid {what} {ms!r}: milliseconds since the epoch, before 2106")
    return value


@router.post(f"{PREFIX}/runs/create")
async def create_run(request: Request) -> Response:
    c = await ctx(request)
    experiment_id = str(text(c.body, "experiment_id", default=objects.DEFAULT_EXPERIMENT_ID))
    e = await _experiment(c, experiment_id)
    if e["lifecycle_stage"] != "active":
        raise invalid(f"The experiment {experiment_id} must be in the 'active' state. Current state is {e['lifecycle_stage']}.")
    tags = _tags_of(c.body)
    name = text(c.body, "run_name") or tags.get("mlflow.runName") or _run_name()
    tags["mlflow.runName"] = name
    user = text(c.body, "user_id")
    if user:
        tags.setdefault("mlflow.user", user)
    start = c.body.get("start_time")
    ts = _seconds(start, "start_time") if start is not None else time.time()
    run_id = uuid.uuid4().hex
    event = c.writer.event("run_start", run_id, c.project, ts, experiment=e["storage_name"], name=name, tags=tags, params={}, status="Running")
    parent = tags.get("mlflow.parentRunId")
    if parent:
        event["parent"] = parent
    await c.writer.send([event])
    _remember(c.project, run_id, e["storage_name"])
    _params_known.add((c.project, run_id))
    row = {
        "run_id": run_id,
        "name": name,
        "status": "Running",
        "created_at": _dt(ts),
        "ended_at": None,
        "tags": tags,
        "params": {},
    }
    return json_response({"run": reads.run_json(row, experiment_id, [])})


def _dt(ts: float) -> Any:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ts, tz=UTC)


@router.get(f"{PREFIX}/runs/get")
async def get_run(request: Request) -> Response:
    c = await ctx(request)
    run_id = _run_id(c)
    await c.writer.wait_stored([run_id])
    run = await c.call(reads.get_run, run_id)
    outputs = await c.call(objects.all_of, "run_output", run_id)
    if outputs:
        run["outputs"] = {"model_outputs": outputs}
    return json_response({"run": run})


@router.post(f"{PREFIX}/runs/update")
async def update_run(request: Request) -> Response:
    c = await ctx(request)
    run_id = _run_id(c)
    await existing_run(c, run_id)
    try:  # as stored, without waiting: the answer overlays this call's changes
        row = await c.call(reads.run_row, run_id)
    except MlflowError:  # created a moment ago and not stored yet
        await c.writer.wait_stored([run_id])
        row = await c.call(reads.run_row, run_id)
    status_in = field(c.body, "status")
    name = text(c.body, "run_name")
    events: list[dict[str, Any]] = []
    status = row["status"] if status_in is None else to_runstream(status_in)
    if name:
        rename = c.writer.event("run_start", run_id, c.project, experiment=row["experiment"], name=name, tags={"mlflow.runName": name}, status=status)
        events.append(rename)
        row["name"] = name
    end_ms = c.body.get("end_time")
    if status_in is not None:
        mlflow_status = to_mlflow(status)
        if mlflow_status in TERMINAL:
            ts = _seconds(end_ms, "end_time") if end_ms is not None else time.time()
            events.append(c.writer.event("run_end", run_id, c.project, ts, status=status))
            row["ended_at"] = _dt(ts)
        else:
            events.append(c.writer.event("run_status", run_id, c.project, status=status))
            row["ended_at"] = None
        row["status"] = status
    if events:
        await c.writer.send(events)
    info = reads.run_json(row, objects.experiment_id_for(c.project, row["experiment"]), [])["info"]
    return json_response({"run_info": info})


async def _set_lifecycle(request: Request, stage: str) -> Response:
    c = await ctx(request)
    run_id = _run_id(c)
    await existing_run(c, run_id)
    await c.writer.send([c.writer.event("tags", run_id, c.project, tags={reads.LIFECYCLE_TAG: stage})])
    return _ok()


@router.post(f"{PREFIX}/runs/delete")
async def delete_run(request: Request) -> Response:
    return await _set_lifecycle(request, "deleted")


@router.post(f"{PREFIX}/runs/restore")
async def restore_run(request: Request) -> Response:
    return await _set_lifecycle(request, "active")


@router.post(f"{PREFIX}/runs/search")
async def search_runs(request: Request) -> Response:
    c = await ctx(request)
    experiment_ids = c.body.get("experiment_ids") or []
    if isinstance(experiment_ids, str):
        experiment_ids = [experiment_ids]
    max_results = integer(c.body, "max_results", default=1000) or 1000
    if not 1 <= max_results <= MAX_SEARCH_RESULTS:
        raise invalid(f"Invalid value {max_results} for parameter 'max_results' supplied. It must be at most {MAX_SEARCH_RESULTS}")
    order_by = c.body.get("order_by") or []
    conditions = parse_filter(text(c.body, "filter"))
    order = parse_order_by(order_by if isinstance(order_by, list) else [order_by])
    view = reads.view_type(field(c.body, "run_view_type"))
    await c.writer.wait_stored()
    result = await c.call(reads.search_runs, [str(e) for e in experiment_ids], conditions, order, view, max_results, text(c.body, "page_token"))
    return json_response(result)


def _metric_event(c: Ctx, run_id: str, metrics: list[dict[str, Any]]) -> dict[str, Any]:
    names: list[str] = []
    index: dict[str, int] = {}
    m: list[int] = []
    s: list[int] = []
    x: list[float | None] = []
    t: list[float] = []
    nf: list[list[Any]] = []
    now = time.time()
    for i, metric in enumerate(metrics):
        if not isinstance(metric, dict):
            raise invalid("every metric must be an object {key, value, timestamp, step}")
        key = metric.get("key")
        if not isinstance(key, str) or not key:
            raise invalid("Missing value for required parameter 'metrics[].key'.")
        value = number(metric.get("value"), f"metric '{key}'")
        step = metric.get("step", 0)
        if isinstance(step, bool) or not isinstance(step, int | str):
            raise invalid(f"Invalid step {step!r} for metric '{key}'")
        try:
            step = int(step)
        except ValueError:
            raise invalid(f"Invalid step {step!r} for metric '{key}'") from None
        stamp = metric.get("timestamp")
        if key not in index:
            index[key] = len(names)
            names.append(key)
        m.append(index[key])
        s.append(step)
        t.append(_seconds(stamp, "timestamp") if stamp is not None else now)
        if value != value or value in (float("inf"), float("-inf")):
            x.append(None)
            nf.append([i, "nan" if value != value else ("inf" if value > 0 else "-inf")])
        else:
            x.append(value)
    payload: dict[str, Any] = {"names": names, "m": m, "s": s, "x": x, "t": t}
    if nf:
        payload["nf"] = nf
    event = c.writer.event("metrics", run_id, c.project, **payload)
    event["id"] = c.writer.content_id(event)
    return event


async def _check_params(c: Ctx, run_id: str, params: dict[str, str]) -> dict[str, str]:
    """The params not logged yet; INVALID_PARAMETER_VALUE for one logged with another value.

    The params of a run this instance created, or whose stored params it has read once,
    are known here: a new key needs no read. (Another writer logging the same key to the
    same run at the same moment is not caught.)"""
    key = (c.project, run_id)
    sent = _sent_params.setdefault(key, {})
    if key not in _params_known and any(k not in sent for k in params):
        await c.writer.wait_stored([run_id])
        row = await c.call(reads.run_row, run_id)
        for k, v in dict(row["params"]).items():
            sent.setdefault(k, v)
        _params_known.add(key)
    new: dict[str, str] = {}
    for k, v in params.items():
        old = sent.get(k)
        if old is None:
            new[k] = v
        elif old != v:
            raise invalid(
                f"Changing param values is not allowed. Param with key='{k}' was already logged with value='{old}' "
                f"for run ID='{run_id}'. Attempted logging new value '{v}'."
            )
    return new


def _params_of(body: dict[str, Any]) -> dict[str, str]:
    items = body.get("params") or []
    if not isinstance(items, list):
        raise invalid("'params' must be a list of {key, value}")
    out: dict[str, str] = {}
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("key"), str) or not item["key"]:
            raise invalid("every param needs a non-empty string key")
        value = "" if item.get("value") is None else str(item["value"])
        if item["key"] in out and out[item["key"]] != value:
            raise invalid(f"Duplicate parameter keys have been submitted: '{item['key']}' with different values.")
        out[item["key"]] = value
    return out


async def _log(c: Ctx, run_id: str, metrics: list[dict[str, Any]], params: dict[str, str], tags: dict[str, str]) -> Response:
    await existing_run(c, run_id)
    events: list[dict[str, Any]] = []
    new_params = await _check_params(c, run_id, params) if params else {}
    if new_params:
        events.append(c.writer.event("params", run_id, c.project, params=new_params))
    if tags:
        events.append(c.writer.event("tags", run_id, c.project, tags=tags))
    if metrics:
        events.append(_metric_event(c, run_id, metrics))
    if events:
        await c.writer.send(events)
        _sent_params.setdefault((c.project, run_id), {}).update(new_params)
    return _ok()


async def _without_model_links(c: Ctx, run_id: str, metrics: list[Any]) -> list[Any]:
    """Drops points that only link an already logged point to a logged model (MLflow 3's
    log_model re-logs the run's points of a step with a model_id): stored once, as in MLflow."""
    linked = [mt for mt in metrics if isinstance(mt, dict) and mt.get("model_id")]
    if not linked:
        return metrics
    await c.writer.wait_stored([run_id])
    have: set[tuple[Any, ...]] = set()
    for key in {mt.get("key") for mt in linked if isinstance(mt.get("key"), str)}:
        history = await c.call(reads.metric_history, run_id, key, None, None)
        have |= {(key, h["step"], h["timestamp"], h["value"]) for h in history["metrics"]}

    def known(mt: dict[str, Any]) -> bool:
        try:
            return (mt.get("key"), int(mt.get("step", 0)), int(mt.get("timestamp") or 0), number(mt.get("value"), "value")) in have
        except (TypeError, ValueError, MlflowError):
            return False

    return [mt for mt in metrics if not (isinstance(mt, dict) and mt.get("model_id") and known(mt))]


@router.post(f"{PREFIX}/runs/log-batch")
async def log_batch(request: Request) -> Response:
    c = await ctx(request)
    run_id = _run_id(c)
    metrics = c.body.get("metrics") or []
    if not isinstance(metrics, list):
        raise invalid("'metrics' must be a list")
    params, tags = _params_of(c.body), _tags_of(c.body)
    if len(metrics) > MAX_BATCH_METRICS or len(params) > MAX_BATCH_PARAMS or len(tags) > MAX_BATCH_TAGS:
        raise invalid(
            f"A batch logging request can contain at most {MAX_BATCH_METRICS} metrics, {MAX_BATCH_PARAMS} params and {MAX_BATCH_TAGS} tags."
        )
    metrics = await _without_model_links(c, run_id, metrics)
    return await _log(c, run_id, metrics, params, tags)


@router.post(f"{PREFIX}/runs/log-metric")
async def log_metric(request: Request) -> Response:
    c = await ctx(request)
    run_id = _run_id(c)
    metric = {k: c.body.get(k) for k in ("key", "value", "timestamp", "step", "model_id")}
    metric["step"] = metric["step"] or 0
    if metric["value"] is None:
        raise invalid("Missing value for required parameter 'value'.")
    metrics = await _without_model_links(c, run_id, [metric])
    return await _log(c, run_id, metrics, {}, {})


@router.post(f"{PREFIX}/runs/log-parameter")
async def log_parameter(request: Request) -> Response:
    c = await ctx(request)
    run_id = _run_id(c)
    key = text(c.body, "key", required=True)
    assert key is not None
    return await _log(c, run_id, [], {key: text(c.body, "value", default="") or ""}, {})


@router.post(f"{PREFIX}/runs/set-tag")
async def set_tag(request: Request) -> Response:
    c = await ctx(request)
    run_id = _run_id(c)
    key = text(c.body, "key", required=True)
    assert key is not None
    if key in reads.HIDDEN_TAGS:
        raise invalid(f"Tag key {key!r} is reserved by runstream")
    value = text(c.body, "value", default="") or ""
    if value == reads.DELETED_TAG_VALUE:
        raise invalid("Invalid tag value")
    response = await _log(c, run_id, [], {}, {key: value})
    if key == "mlflow.runName":  # MLflow keeps the run name and this tag as one
        experiment = await existing_run(c, run_id)
        await c.writer.send([c.writer.event("run_start", run_id, c.project, experiment=experiment, name=value, status=await _status_of(c, run_id))])
    return response


async def _status_of(c: Ctx, run_id: str) -> str:
    await c.writer.wait_stored([run_id])
    row = await c.call(reads.run_row, run_id)
    return str(row["status"])


@router.post(f"{PREFIX}/runs/delete-tag")
async def delete_tag(request: Request) -> Response:
    c = await ctx(request)
    run_id = _run_id(c)
    key = text(c.body, "key", required=True)
    await existing_run(c, run_id)
    await c.writer.wait_stored([run_id])
    row = await c.call(reads.run_row, run_id)
    if key not in reads.visible_tags(dict(row["tags"])):
        raise not_found(f"No tag with name: {key} in run with id {run_id}")
    await c.writer.send([c.writer.event("tags", run_id, c.project, tags={key: None})])  # null removes it (docs/events.md)
    return _ok()


@router.post(f"{PREFIX}/runs/log-inputs")
async def log_inputs(request: Request) -> Response:
    c = await ctx(request)
    run_id = _run_id(c)
    await existing_run(c, run_id)
    datasets = c.body.get("datasets") or []
    if not isinstance(datasets, list):
        raise invalid("'datasets' must be a list")
    for item in datasets:
        dataset = item.get("dataset") if isinstance(item, dict) else None
        if not isinstance(dataset, dict) or not dataset.get("name") or not dataset.get("digest"):
            raise invalid("every dataset input needs a dataset with a name and a digest")
        object_id = f"{run_id}:{dataset['name']}:{dataset['digest']}"
        await c.call(objects.put, "run_input", object_id, {"tags": item.get("tags") or [], "dataset": dataset}, run_id)
    return _ok()


@router.post(f"{PREFIX}/runs/outputs")
async def log_outputs(request: Request) -> Response:
    c = await ctx(request)
    run_id = _run_id(c)
    await existing_run(c, run_id)
    for item in c.body.get("models") or []:
        if not isinstance(item, dict) or not item.get("model_id"):
            raise invalid("every model output needs a model_id")
        output = {"model_id": str(item["model_id"]), "step": int(item.get("step") or 0)}
        await c.call(objects.put, "run_output", f"{run_id}:{output['model_id']}:{output['step']}", output, run_id)
    return _ok()


@router.get(f"{PREFIX}/metrics/get-history")
async def get_metric_history(request: Request) -> Response:
    c = await ctx(request)
    run_id = _run_id(c)
    key = text(c.body, "metric_key", required=True)
    max_results = integer(c.body, "max_results")
    if max_results is not None and not 1 <= max_results <= 25_000_000:
        raise invalid(f"Invalid value {max_results} for parameter 'max_results'")
    await c.writer.wait_stored([run_id])
    result = await c.call(reads.metric_history, run_id, key, max_results, text(c.body, "page_token"))
    return json_response(result)


@router.get(f"{PREFIX}/runstream/consistency")
async def consistency(request: Request) -> Response:
    """What read-after-write has cost this api instance (runstream's own, not MLflow's)."""
    c = await ctx(request)
    return json_response(c.writer.stats.as_dict() | {"events_out": c.writer.events_out})
