"""The processor: Kafka consumer group -> ClickHouse, exactly once, and the live updates.

`consumer.Processor` coordinates the parts, each owning one idea:
- `intake`: what the consumer polled and when it makes a batch (the batching policy);
- `prepare`: decode, validate, dedupe and build a batch's inserts (`batch`, pure) and run
  state changes (`runstate`), against the run and seen-id `caches` (`seen`);
- `lanes`: the two write lanes (a batch's data tables, then its ledger), through `retry`,
  which retries transient storage errors only;
- `watermarks` and `positions`: what each topic-partition has stored, where reading
  resumes, the lag and the commits;
- `deadletter`: records that cannot be taken, with the reason;
- `publish`: the live update of a stored batch (`live`, pure) to hubs and the live topic;
- `stats`: the counters.
The ClickHouse client and schema are `runstream.storage`'s.
"""
