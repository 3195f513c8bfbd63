"""The api: REST reads over ClickHouse, the ingest gateway, live WebSocket
pushes and the dashboard's static files.

`app` assembles the FastAPI application; `queries` holds the parameterised
SQL (user text only ever travels as query parameters); `routes_runs` the run
endpoints; `gateway` POST /api/v1/events; `artifacts` the file store.
"""
