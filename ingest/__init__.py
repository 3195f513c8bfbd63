"""The runstream client: log from a training script to Kafka without blocking.

    from runstream import Experiment, Run
    run = Experiment("sweep").start_logging()
    run.log("loss", 0.25)

`run` holds Run and Experiment (the logging API), `buffer` a run's buffer of
points and events (appended by the run, drained by the shipper), `shipper` the
background thread that batches events and produces them with aiokafka, `spool`
its disk spool for when Kafka is away, `capture` the stdout/stderr tee, `values`
the checks that make invalid input raise at once, `reader` the HTTP reads
(`get_metrics` and friends), `lifecycle` the end of runs left open at exit,
`metadata` where a run executes, `submit` ScriptRunConfig and
Experiment.submit over `compute` (the compute targets) and `snapshot` (the
source folder's files), `childenv` the settings a child process inherits.
"""

from runstream.ingest.run import Experiment, Run
from runstream.ingest.submit import ScriptRunConfig

__all__ = ["Experiment", "Run", "ScriptRunConfig"]
