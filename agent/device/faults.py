"""What a device's failure is called: one line naming the device, the file and the fix.

A device of a fleet fails on its own (a key that does not open, a damaged store, a full disk, a
sensor whose driver raised): the runner stops that device and keeps the others running
(``agent.fleet.runner``), and this module turns the exception into the line the live view,
``fleet.log`` and the run's summary show. The exception's own text already names the file
(``StoreError``, ``IntegrityError`` and ``KeystoreError`` messages start with the path); the fix
is chosen here by what failed.
"""

from __future__ import annotations

import errno

from agent.errors import AgentError
from ledger.errors import IntegrityError, LedgerError, StoreError

# SQLite's and the kernel's words for a full disk (the store translates sqlite3's error into a
# StoreError carrying its text; a sync failure carries the OSError's; a read outside a write
# transaction may still raise sqlite3's own error, which only the store may import).
_FULL = ("database or disk is full", "no space left on device")


def is_disk_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(exc).lower()
    return any(words in text for words in _FULL)


def describe(name: str, exc: BaseException) -> str:
    """One line: the device, what failed (the exception names the file), and the fix."""
    what = " ".join(str(exc).split()) or type(exc).__name__
    if is_disk_full(exc):
        return (
            f"{name}: disk full: {what}: the device stopped writing (what it committed is "
            "kept); free space on that filesystem, then run again"
        )
    if isinstance(exc, IntegrityError):
        return (
            f"{name}: stored data is damaged: {what}: the device stopped; check it with "
            f"`edgefleet verify`, then move its store aside and `edgefleet restore --device "
            f"{name}` from its peers"
        )
    if isinstance(exc, StoreError):
        return (
            f"{name}: store failed: {what}: the device stopped; if the file is damaged, move "
            f"it aside and `edgefleet restore --device {name}` from its peers"
        )
    if isinstance(exc, AgentError | LedgerError):
        if "malformed" in what or "truncated" in what:  # a damaged key file names no fix
            return f"{name}: {what}: the file is damaged; restore it from a backup"
        return f"{name}: {what}"  # keystore and config errors say their fix themselves
    return f"{name}: stopped by an unexpected {type(exc).__name__}: {what}"


def first_cause(exc: BaseException) -> BaseException:
    """The first leaf of an exception group (a device's task group fails with one)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc
