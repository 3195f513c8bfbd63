"""runstream: shared plumbing for the pipeline.

Owns what every component agrees on: configuration (`config`), the wire format
(`wire`), the local development Kafka broker (`kafka_broker`) and the
`runstream` command line (`cli`). The client lives in `ingest`, the consumer
and storage in `processor`, the HTTP/WebSocket service in `api`.
"""

__version__ = "0.1.0"
