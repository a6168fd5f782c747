"""One device at run time: the asyncio runtime that drives the cores, the store threads its
SQLite work runs on, the seal policy, and the replication driver."""
