"""The storage schema and its migrations, in one place (see docs/storage.md).

The applied versions are recorded in `schema_migrations`; every process runs
`runstream.storage.migrations.migrate` on start-up, which applies the missing
ones one process at a time.
"""

from __future__ import annotations

# Tables written from Kafka carry the message's topic, partition and offset:
# the per-table maximum offset is the watermark that makes redelivery harmless.
# The runs table's columns, in insert order (the processor writes whole rows); `version`
# orders the ReplacingMergeTree's row versions and is no one's to read.
RUN_COLUMNS: tuple[str, ...] = (
    "project",
    "run_id",
    "experiment",
    "name",
    "parent_id",
    "status",
    "error",
    "created_at",
    "ended_at",
    "last_seen",
    "tags",
    "params",
    "descriptions",
    "meta",
    "version",
)
# What reads select from runs (the api's run rows and the SQL view `runs`).
RUN_FIELDS = ", ".join(c for c in RUN_COLUMNS if c != "version")

KAFKA_COLUMNS = """
    kafka_topic LowCardinality(String),
    kafka_partition UInt16,
    kafka_offset UInt64 CODEC(Delta, ZSTD(1))
"""

# LZ4 after Delta/Gorilla, not ZSTD: the table takes every point, LZ4 costs the
# engine's inserts less and the parts were no larger (docs/performance.md, "Codecs").
METRIC_POINT_CODECS = {
    "step": "Int64 CODEC(Delta, LZ4)",
    "value": "Float64 CODEC(Gorilla, LZ4)",
    "ts": "DateTime64(3) CODEC(Delta, LZ4)",
    "kafka_offset": "UInt64 CODEC(Delta, LZ4)",
}
METRIC_POINT_COLUMNS = f"""
    project LowCardinality(String),
    run_id LowCardinality(String),
    metric LowCardinality(String),
    step {METRIC_POINT_CODECS["step"]},
    value {METRIC_POINT_CODECS["value"]},
    value_str String,
    ts {METRIC_POINT_CODECS["ts"]},
    kafka_topic LowCardinality(String),
    kafka_partition UInt16,
    kafka_offset {METRIC_POINT_CODECS["kafka_offset"]}
"""

SUMMARIES_VIEW = """CREATE MATERIALIZED VIEW IF NOT EXISTS metric_summaries_mv TO metric_summaries AS
    SELECT project, run_id, metric,
           toUInt64(count()) AS count_state,
           argMinState(value, step) AS first_state,
           argMaxState(value, step) AS last_state,
           minIfOrNull(value, isFinite(value)) AS min_state,
           maxIfOrNull(value, isFinite(value)) AS max_state,
           avgIfState(value, isFinite(value)) AS mean_state,
           max(step) AS last_step,
           max(ts) AS last_ts
    FROM metric_points GROUP BY project, run_id, metric"""

# Since migration 6 the processor writes the summaries itself (processor/batch.py), as
# partial rows per (run, metric, topic-partition) that the engine merges: every column is
# a SimpleAggregateFunction, so a row goes in as plain values, and the Kafka columns give
# the table a watermark of its own (a run's records are in one partition, so its rows are
# merged per partition and max(kafka_offset) is that partition's watermark). `first` and
# `last` are (step, value): the value at the lowest and highest step.
SUMMARY_COLUMNS = """
    project LowCardinality(String),
    run_id String,
    metric LowCardinality(String),
    kafka_topic LowCardinality(String),
    kafka_partition UInt16,
    count_state SimpleAggregateFunction(sum, UInt64),
    first_state SimpleAggregateFunction(min, Tuple(Int64, Float64)),
    last_state SimpleAggregateFunction(max, Tuple(Int64, Float64)),
    min_state SimpleAggregateFunction(min, Nullable(Float64)),
    max_state SimpleAggregateFunction(max, Nullable(Float64)),
    sum_state SimpleAggregateFunction(sum, Float64),
    finite_state SimpleAggregateFunction(sum, UInt64),
    last_step SimpleAggregateFunction(max, Int64),
    last_ts SimpleAggregateFunction(max, DateTime64(3)),
    kafka_offset SimpleAggregateFunction(max, UInt64)
"""

# The summary rows of stored points, as the processor builds them (processor/batch.py):
# what migration 6 fills the table with, and the reference its tests compare against.
SUMMARIES_FROM_POINTS = (
    "SELECT project, run_id, metric, kafka_topic, kafka_partition, count(), min((step, value)), max((step, value)),"
    " minIfOrNull(value, isFinite(value)), maxIfOrNull(value, isFinite(value)), sumIf(value, isFinite(value)),"
    " countIf(isFinite(value)), max(step), max(ts), max(kafka_offset)"
    " FROM metric_points {where} GROUP BY project, run_id, metric, kafka_topic, kafka_partition"
)

# Tables with Kafka coordinates, in the order a batch writes them.
WATERMARKED_TABLES = ("metric_points", "table_cells", "run_logs", "run_files", "metric_summaries", "ingested_events")

# Tables that take an insert per batch (see migration 7).
STREAMED_TABLES = ("metric_points", "metric_summaries", "ingested_events", "run_logs", "table_cells", "runs")
MERGE_SETTINGS = "min_parts_to_merge_at_once = 10, merge_selector_base = 10"

MIGRATIONS: list[tuple[int, list[str]]] = [
    (
        1,
        [
            f"""CREATE TABLE IF NOT EXISTS metric_points ({METRIC_POINT_COLUMNS}) ENGINE = MergeTree ORDER BY (project, run_id, metric, step)""",
            """CREATE TABLE IF NOT EXISTS metric_summaries (
                project LowCardinality(String),
                run_id String,
                metric LowCardinality(String),
                count_state SimpleAggregateFunction(sum, UInt64),
                first_state AggregateFunction(argMin, Float64, Int64),
                last_state AggregateFunction(argMax, Float64, Int64),
                min_state SimpleAggregateFunction(min, Nullable(Float64)),
                max_state SimpleAggregateFunction(max, Nullable(Float64)),
                mean_state AggregateFunction(avgIf, Float64, UInt8),
                last_step SimpleAggregateFunction(max, Int64),
                last_ts SimpleAggregateFunction(max, DateTime64(3))
            ) ENGINE = AggregatingMergeTree ORDER BY (project, run_id, metric)""",
            SUMMARIES_VIEW,
            f"""CREATE TABLE IF NOT EXISTS table_cells (
                project LowCardinality(String),
                run_id String,
                table_name LowCardinality(String),
                column LowCardinality(String),
                row UInt64,
                value Float64,
                value_str String,
                ts DateTime64(3),
                {KAFKA_COLUMNS}
            ) ENGINE = MergeTree ORDER BY (project, run_id, table_name, column, row)""",
            f"""CREATE TABLE IF NOT EXISTS run_logs (
                project LowCardinality(String),
                run_id String,
                stream LowCardinality(String),
                ts DateTime64(6),
                idx UInt32,
                line String,
                {KAFKA_COLUMNS}
            ) ENGINE = MergeTree ORDER BY (project, run_id, ts, kafka_offset, idx)""",
            f"""CREATE TABLE IF NOT EXISTS run_files (
                project LowCardinality(String),
                run_id String,
                path String,
                file_kind LowCardinality(String),
                name String,
                size UInt64,
                content_type String,
                uri String,
                sha256 String,
                ts DateTime64(3),
                {KAFKA_COLUMNS}
            ) ENGINE = ReplacingMergeTree(ts) ORDER BY (project, run_id, path)""",
            f"""CREATE TABLE IF NOT EXISTS ingested_events (
                project LowCardinality(String),
                run_id String,
                event_id String,
                kind LowCardinality(String),
                points UInt32,
                ts DateTime64(3),
                {KAFKA_COLUMNS}
            ) ENGINE = MergeTree ORDER BY (project, run_id, event_id)""",
            """CREATE TABLE IF NOT EXISTS runs (
                project LowCardinality(String),
                run_id String,
                experiment String,
                name String,
                parent_id String,
                status LowCardinality(String),
                error String,
                created_at DateTime64(3),
                ended_at Nullable(DateTime64(3)),
                last_seen DateTime64(3),
                tags Map(String, String),
                params Map(String, String),
                descriptions Map(String, String),
                version UInt64
            ) ENGINE = ReplacingMergeTree(version) ORDER BY (project, run_id)""",
        ],
    ),
    (
        2,
        [
            # Analytics (issue 4, docs/analytics.md): reads of one metric across
            # many runs (aggregate, grouped mean +- std) touch one granule per
            # run in the (project, run_id, metric, step) order; this projection
            # keeps a metric's runs adjacent, so a read of many runs touches a
            # fraction of the rows. Parts written before this migration are read in the base
            # order until `ALTER TABLE metric_points MATERIALIZE PROJECTION
            # by_metric` (a background mutation) rebuilds them.
            """ALTER TABLE metric_points ADD PROJECTION IF NOT EXISTS by_metric
            (SELECT project, metric, run_id, step, value ORDER BY project, metric, run_id, step)""",
        ],
    ),
    (
        3,
        # One order for both questions, instead of a base order plus a projection: a
        # metric's runs are adjacent (cross-run analytics) and a run's series of one
        # metric is one range; a run's every metric is one range per metric name. The
        # projection doubled the sort, write and merge work of every insert
        # (docs/performance.md). Rebuilt by copy
        # into a new table and an atomic EXCHANGE; the summaries view is re-attached.
        # Each step can run again after a crash; see docs/storage.md for the caveat
        # about processes migrating the same server at once.
        [
            "DROP TABLE IF EXISTS metric_points_v3",
            f"CREATE TABLE metric_points_v3 ({METRIC_POINT_COLUMNS}) ENGINE = MergeTree ORDER BY (project, metric, run_id, step)",
            "INSERT INTO metric_points_v3 SELECT project, run_id, metric, step, value, value_str, ts, kafka_topic, kafka_partition, kafka_offset"
            " FROM metric_points",
            "DROP VIEW IF EXISTS metric_summaries_mv",
            "EXCHANGE TABLES metric_points AND metric_points_v3",
            "DROP TABLE metric_points_v3",
            SUMMARIES_VIEW,
        ],
    ),
    (
        4,
        # metric_points' codecs from ZSTD(1) to LZ4 (see METRIC_POINT_CODECS): a change of
        # metadata only; parts written before keep ZSTD until merges rewrite them.
        ["ALTER TABLE metric_points " + ", ".join(f"MODIFY COLUMN {name} {decl}" for name, decl in METRIC_POINT_CODECS.items())],
    ),
    (
        5,
        # run_id as LowCardinality(String) in metric_points: the summaries view groups
        # every inserted block by it, and dictionary codes hash faster than strings.
        # Parts hold a few hundred runs, well within what LowCardinality is for. A
        # mutation rewrites the column of existing parts in the background.
        ["ALTER TABLE metric_points MODIFY COLUMN run_id LowCardinality(String)"],
    ),
    (
        6,
        # Summaries written by the processor instead of a materialized view: the view ran a
        # GROUP BY over every inserted block inside the insert of the points, which doubled
        # the cost of a small insert and sat on the live path. The new table
        # is filled from metric_points, then swapped in; each step can run again after a
        # crash (see migration 3 and docs/storage.md for processes migrating at once).
        [
            "DROP TABLE IF EXISTS metric_summaries_v6",
            f"CREATE TABLE metric_summaries_v6 ({SUMMARY_COLUMNS}) ENGINE = AggregatingMergeTree"
            " ORDER BY (project, run_id, metric, kafka_topic, kafka_partition)",
            "INSERT INTO metric_summaries_v6 " + SUMMARIES_FROM_POINTS.format(where=""),
            "DROP VIEW IF EXISTS metric_summaries_mv",
            "EXCHANGE TABLES metric_summaries AND metric_summaries_v6",
            "DROP TABLE metric_summaries_v6",
        ],
    ),
    (
        7,
        # Wider merges of the small parts a live stream makes (one per table per batch):
        # the default selector merged them 5 at a time, rewriting each row again and again.
        [f"ALTER TABLE {table} MODIFY SETTING {MERGE_SETTINGS}" for table in STREAMED_TABLES],
    ),
    (
        8,
        # Where a run executes (compute target, host, user, pid, Python, command line, git
        # commit/branch/dirty: ingest/metadata.py), sent with its start; the api filters on it.
        ["ALTER TABLE runs ADD COLUMN IF NOT EXISTS meta Map(String, String) AFTER descriptions"],
    ),
    (
        9,
        # The MLflow-compatible api's control-plane records (api/mlflow/objects.py): experiments
        # with their ids and tags, logged models, run inputs; the newest version of an object wins.
        [
            """CREATE TABLE IF NOT EXISTS mlflow_objects (
                project LowCardinality(String),
                kind LowCardinality(String),
                object_id String,
                parent_id String,
                body String,
                version UInt64
            ) ENGINE = ReplacingMergeTree(version) ORDER BY (project, kind, object_id)"""
        ],
    ),
]
