"""Run statuses both ways: MLflow's RunStatus names <-> runstream's wire statuses.

MLflow    RUNNING  SCHEDULED  FINISHED   FAILED  KILLED
runstream Running  Queued     Completed  Failed  Canceled   (NotStarted reads as SCHEDULED)
"""

from __future__ import annotations

from runstream.api.mlflow.protocol import invalid

TO_RUNSTREAM = {"RUNNING": "Running", "SCHEDULED": "Queued", "FINISHED": "Completed", "FAILED": "Failed", "KILLED": "Canceled"}
TO_MLFLOW = {v: k for k, v in TO_RUNSTREAM.items()} | {"NotStarted": "SCHEDULED"}
# MLflow's enum numbers, for a client that sends the number instead of the name
BY_NUMBER = {1: "RUNNING", 2: "SCHEDULED", 3: "FINISHED", 4: "FAILED", 5: "KILLED"}
TERMINAL = ("FINISHED", "FAILED", "KILLED")


def to_runstream(status: object) -> str:
    """An MLflow status (name or enum number) as a runstream status; INVALID_PARAMETER_VALUE otherwise."""
    if isinstance(status, int) and not isinstance(status, bool):
        status = BY_NUMBER.get(status, status)
    if isinstance(status, str) and status.upper() in TO_RUNSTREAM:
        return TO_RUNSTREAM[status.upper()]
    raise invalid(f"Invalid run status {status!r}; expected one of {', '.join(TO_RUNSTREAM)}.")


def to_mlflow(status: str) -> str:
    return TO_MLFLOW.get(status, "RUNNING")
