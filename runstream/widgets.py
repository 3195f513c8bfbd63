"""Notebook display of a run: `RunDetails(run).show()` (SPEC: Notebook widget).

    from runstream.widgets import RunDetails
    RunDetails(run).show()

A live widget with the run's status and duration, a chart per metric, its
child runs (status and primary metric, and a chart of that metric across the
children: the reference's sweep widget) and its output tail. The kernel reads
the history from the api (a notebook page is another origin than the api, so
the page cannot); after that the page's own WebSocket to the api's /ws feeds
it, so it updates without re-running the cell and without polling. Charts are
drawn with the package's own uPlot (runstream/dashboard/vendor).

Built on anywidget (`pip install 'runstream[notebook]'`): one ES module and its traits,
rendered by the same front end in JupyterLab, Notebook 7, VS Code and Colab,
with no JupyterLab extension to build per version (ipywidgets' custom widgets
need one). The client install does not require it; RunDetails says what to
install when it is missing.
"""

from __future__ import annotations

import functools
from importlib import resources
from typing import Any
from urllib.parse import quote

import httpx

from runstream.errors import ApiError
from runstream.ingest.run import Run

SERIES_POINTS = 2000  # per metric in the widget's history (downsampled by the api beyond)
LOG_TAIL = 200


@functools.lru_cache(maxsize=1)
def _assets() -> tuple[str, str]:
    """The widget's ES module (uPlot first, as a module-level binding) and its CSS."""
    dashboard = resources.files("runstream.dashboard")
    uplot = (dashboard / "vendor" / "uPlot.esm.js").read_text()
    # One module: uPlot's own exports become plain bindings the widget code uses.
    uplot = uplot.replace("export { uPlot as default };", "").replace("export function ", "function ")
    esm = uplot + "\n" + (dashboard / "notebook_widget.js").read_text()
    css = (dashboard / "vendor" / "uPlot.min.css").read_text() + WIDGET_CSS
    return esm, css


WIDGET_CSS = """
.runstream-widget { font: 13px system-ui, sans-serif; padding: 6px 0; }
.runstream-widget .rs-head { display: flex; gap: 10px; align-items: center; margin-bottom: 6px; }
.runstream-widget .rs-badge { padding: 1px 8px; border-radius: 10px; background: #e8eef8; color: #245; font-weight: 600; }
.runstream-widget .rs-completed { color: #1a7f37; } .runstream-widget .rs-failed, .runstream-widget .rs-crashed { color: #c62828; }
.runstream-widget .rs-canceled { color: #a86500; } .runstream-widget .rs-conn { color: #888; font-size: 11px; }
.runstream-widget .rs-charts { display: flex; flex-wrap: wrap; gap: 10px; }
.runstream-widget .rs-chart-title { font-weight: 600; margin: 4px 0; }
.runstream-widget table.rs-kids { border-collapse: collapse; margin: 4px 0; }
.runstream-widget table.rs-kids td, .runstream-widget table.rs-kids th { padding: 2px 10px; border-bottom: 1px solid #ddd; text-align: left; }
.runstream-widget .rs-logs { max-height: 160px; overflow: auto; background: #f6f8fa; padding: 6px; margin-top: 6px; font-size: 12px; }
"""


def _widget_class() -> Any:
    try:
        import anywidget
        import traitlets
    except ImportError:
        raise ImportError("runstream.widgets needs anywidget: pip install 'runstream[notebook]'") from None

    esm, css = _assets()

    class RunDetailsWidget(anywidget.AnyWidget):  # type: ignore[misc]
        """The front end's model: which run, where /ws is, and the history to start from."""

        _esm = esm
        _css = css
        run_id = traitlets.Unicode("").tag(sync=True)
        ws_url = traitlets.Unicode("").tag(sync=True)
        api_key = traitlets.Unicode("").tag(sync=True)
        portal_url = traitlets.Unicode("").tag(sync=True)
        initial = traitlets.Dict().tag(sync=True)

    return RunDetailsWidget


class RunDetails:
    """A live widget for `run` (any Run: one this kernel logs to, or a handle on another).

    primary_metric: the child runs' metric to tabulate and chart across them (default the
    first metric the children logged, by name)."""

    def __init__(self, run: Run, primary_metric: str | None = None) -> None:
        self.run = run
        self.primary_metric = primary_metric
        self.widget: Any = None

    def history(self) -> dict[str, Any]:
        """What the widget starts from: the run's details, series, output tail and children."""
        settings = self.run.settings
        headers = {"X-API-Key": settings.api_key} if settings.api_key else {}
        rid = quote(self.run.id, safe="")
        with httpx.Client(base_url=settings.api.rstrip("/"), headers=headers, timeout=30.0) as client:
            response = client.get(f"/api/v1/runs/{rid}")
            if response.status_code == 404:  # not stored yet: the snapshot over /ws will say
                return {"status": self.run._status, "name": self.run.name, "experiment": self.run.experiment.name}
            if response.status_code >= 400:
                raise ApiError(f"GET run {self.run.id}: {response.status_code} {response.text[:200]}", response.status_code)
            details = response.json()
            series = {}
            for name in details.get("metrics", {}):
                r = client.get(f"/api/v1/runs/{rid}/metrics/{quote(name)}", params={"max_points": SERIES_POINTS})
                if r.status_code == 200:
                    body = r.json()
                    series[name] = {"s": body["steps"], "v": body["values"]}
            logs = client.get(f"/api/v1/runs/{rid}/logs", params={"limit": 100_000}).json()["lines"][-LOG_TAIL:]
            children = details.get("children", [])
            primary = self.primary_metric
            if children:
                listing = client.get("/api/v1/runs", params={"parent": self.run.id, "limit": 10_000, "order_by": "created_at"}).json()["runs"]
                if primary is None:
                    names = sorted({m for c in listing for m in client.get(f"/api/v1/runs/{quote(c['id'], safe='')}").json().get("metrics", {})})
                    primary = names[0] if names else None
                lasts: dict[str, Any] = {}
                if primary:
                    with_metric = client.get(
                        "/api/v1/runs", params={"parent": self.run.id, "limit": 10_000, "order_by": "created_at", "metrics": primary}
                    ).json()["runs"]
                    lasts = {c["id"]: c.get("metrics", {}).get(primary, {}).get("last") for c in with_metric}
                children = [{"id": c["id"], "name": c["name"], "status": c["status"], "primary": lasts.get(c["id"])} for c in listing]
        return {
            "status": details["status"],
            "name": details["name"],
            "experiment": details["experiment"],
            "created_at": details["created_at"],
            "ended_at": details["ended_at"],
            "series": series,
            "logs": [{"line": e["line"], "stream": e["stream"], "ts": e["ts"]} for e in logs],
            "children": children,
            "primary_metric": primary or "",
        }

    def make(self) -> Any:
        """The widget (an anywidget model), with its history read now."""
        settings = self.run.settings
        base = settings.api.rstrip("/")
        ws_url = ("wss://" + base[len("https://") :] if base.startswith("https://") else "ws://" + base.split("://", 1)[-1]) + "/ws"
        self.widget = _widget_class()(
            run_id=self.run.id, ws_url=ws_url, api_key=settings.api_key or "", portal_url=self.run.get_portal_url(), initial=self.history()
        )
        self.widget.on_msg(self._on_message)
        return self.widget

    def _on_message(self, widget: Any, content: Any, buffers: Any) -> None:
        """The page asks for a series' points from a step on: a live update carried only the
        newest of them (more than the live cap in one batch), and the page cannot read the api."""
        if not isinstance(content, dict) or content.get("type") != "series":
            return
        name, from_step = str(content.get("name", "")), int(content.get("from_step", 0))
        settings = self.run.settings
        headers = {"X-API-Key": settings.api_key} if settings.api_key else {}
        try:
            response = httpx.get(
                f"{settings.api.rstrip('/')}/api/v1/runs/{quote(self.run.id, safe='')}/metrics/{quote(name)}",
                params={"from_step": from_step, "max_points": SERIES_POINTS},
                headers=headers,
                timeout=30.0,
            )
            body = response.json() if response.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            body = None
        if body is not None:
            widget.send({"type": "series", "name": name, "from_step": from_step, "s": body["steps"], "v": body["values"]})

    def show(self) -> None:
        """Display the widget in the notebook (returns nothing, so a cell ending in show()
        does not display it a second time as its value; `self.widget` is the widget)."""
        from IPython.display import display

        display(self.widget or self.make())
