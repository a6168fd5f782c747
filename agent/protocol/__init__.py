"""What every protocol core shares: one trust store per device (certificates, rotations and
revocations verified to the fleet root) and the bounded structures the cores remember with.

Sans-I/O like the cores that use it: no asyncio, time, threading or sockets.
"""
