"""The library the stages share: config, engine, I/O, incremental bookkeeping, models, metrics,
rendering."""
