"""The processor: Kafka consumer group -> ClickHouse.

Owns the storage schema (`schema`), the ClickHouse connection shared by the
processor and the api in one process (`store`), the pure turning of decoded
events into columnar inserts and run-state changes (`batch`), and the consumer
loop with its exactly-once bookkeeping (`consumer`).
"""
