"""Migrations 3 (metric_points re-ordered by (project, metric, run_id, step), no projection),
4 (LZ4 codecs), 5 (LowCardinality run ids), 6 (summaries without a view) and 7 (wider merges)
on a database written by the earlier schema: every point kept, the
summaries view attached. Runs in a subprocess: one process hosts one embedded engine path."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from runstream.storage.schema import MIGRATIONS

SCRIPT = r"""
import json, sys
import clickhouse_connect
from runstream.storage import migrations, schema

client = clickhouse_connect.get_client(dsn="chdb://" + sys.argv[1])
full = list(schema.MIGRATIONS)
schema.MIGRATIONS[:] = [m for m in full if m[0] < 3]
migrations.migrate(client)
# The codecs before migration 4 (migration 1 now declares the current ones).
old_codecs = [f"MODIFY COLUMN {c} {d.replace('LZ4', 'ZSTD(1)')}" for c, d in schema.METRIC_POINT_CODECS.items()]
old_codecs.append("MODIFY COLUMN run_id String")
client.command("ALTER TABLE metric_points " + ", ".join(old_codecs))
client.command("INSERT INTO metric_points (project, run_id, metric, step, value, kafka_topic, kafka_partition, kafka_offset) "
               "SELECT 'p', concat('r', toString(number % 7)), concat('m', toString(number % 3)), number, number * 0.5, 't', 0, number "
               "FROM numbers(5000)")
before = client.query("SELECT count(), sum(value), uniqExact(run_id, metric, step) FROM metric_points").result_rows[0]
schema.MIGRATIONS[:] = full
applied = migrations.migrate(client)
again = migrations.migrate(client)
after = client.query("SELECT count(), sum(value), uniqExact(run_id, metric, step) FROM metric_points").result_rows[0]
key = client.query("SELECT sorting_key FROM system.tables WHERE database = currentDatabase() AND name = 'metric_points'").result_rows[0][0]
projections = client.query("SELECT count() FROM system.projections WHERE table = 'metric_points'").result_rows[0][0]
types = dict(client.query("SELECT name, type FROM system.columns "
                          "WHERE database = currentDatabase() AND table = 'metric_points'").result_rows)
codecs = dict(client.query("SELECT name, compression_codec FROM system.columns "
                           "WHERE database = currentDatabase() AND table = 'metric_points'").result_rows)
leftover = client.query("SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'metric_points_v3'").result_rows[0][0]
# Migration 6 filled the summaries from the points (no view feeds them any more).
summary = client.query("SELECT sum(count_state), max(max_state), tupleElement(min(first_state), 2), sum(sum_state) / sum(finite_state), "
                       "max(kafka_offset) FROM metric_summaries").result_rows[0]
views = client.query("SELECT count() FROM system.tables WHERE database = currentDatabase() AND engine = 'MaterializedView'").result_rows[0][0]
merge_settings = {name: client.query(f"SHOW CREATE TABLE {name}").result_rows[0][0].split("SETTINGS", 1)[-1].strip()
                  for name in schema.STREAMED_TABLES}
print(json.dumps({"merge_settings": merge_settings, "before": list(before), "after": list(after), "applied": applied, "again": again, "key": key,
                  "projections": projections, "leftover": leftover, "codecs": codecs, "types": types, "views": views, "summary": list(summary)}))
"""


def test_migrations_3_to_7_reorder_metric_points_switch_codecs_and_types_refill_summaries_and_keep_every_point(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "engine")], cwd=root, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["before"] == result["after"] == [5000, sum(i * 0.5 for i in range(5000)), 5000]
    assert result["applied"] == [v for v, _ in MIGRATIONS if v >= 3] and result["again"] == []
    for table, declared in result["merge_settings"].items():
        assert "min_parts_to_merge_at_once = 10" in declared and "merge_selector_base = 10" in declared, (table, declared)
    assert result["types"]["run_id"] == "LowCardinality(String)"
    assert {c: result["codecs"][c] for c in ("step", "value", "ts", "kafka_offset")} == {
        "step": "CODEC(Delta(8), LZ4)",
        "value": "CODEC(Gorilla(8), LZ4)",
        "ts": "CODEC(Delta(8), LZ4)",
        "kafka_offset": "CODEC(Delta(8), LZ4)",
    }
    assert result["key"] == "project, metric, run_id, step"
    assert result["projections"] == 0 and result["leftover"] == 0
    assert result["summary"] == [5000, 2499.5, 0.0, sum(i * 0.5 for i in range(5000)) / 5000, 4999] and result["views"] == 0
