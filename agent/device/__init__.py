"""One device at run time: the asyncio runtime (its task group), the ports its drivers use
(``context``), one driver per protocol core (``gossip_driver``, ``replication_driver``), the
seal policy, the device's statistics, and the store threads its SQLite work runs on."""
