"""Storage: the ClickHouse client and the schema, shared by the processor and the api.

`store` owns the connection (embedded `chdb://` or an `http://` server, one code
path) and its read and write lanes; `schema` the tables, views and migrations.
It depends on the core only; the processor and the api build on it.
"""
