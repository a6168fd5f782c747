"""What every protocol core shares, defined once (both ``agent.gossip`` and
``agent.replication`` build on it; it imports neither):

- ``envelope``: the envelope preamble (version, type, sender).
- ``auth``: the authenticator of wire version 2 and ``open_envelope``, the one door through which
  a message gets a proven sender (or is dropped, charging nobody); ``budget``: what a peer may
  make this device answer per interval.
- ``inputs``: network bytes, peers up and down, domain changes; ``actions``: Send, Broadcast.
- ``trust``: one ``TrustStore`` per device (certificates, rotations and revocations verified to
  the fleet root), injected into every core the device runs.
- ``lru``: the bounded structure the cores remember with.
- ``sim``: seeded enrolled devices and signed chains for the cores' simulations and tests.

Sans-I/O like the cores that use it: no asyncio, time, threading or sockets.
"""
