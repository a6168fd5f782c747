"""Requests in flight, both ways, with their deadlines.

- ``Pending`` requests this node sent (a promise the peer should keep by ``deadline_ms``), keyed
  by (peer, request id). At most ``max_total`` in all and ``max_per_peer`` per peer. The node
  asks one peer at a time per device, and hedges (asks another) only once the open request is
  older than ``hedge_ms``, so a lost request delays repair by ``hedge_ms``, not by a timeout.
- ``Serve`` requests a peer sent that wait for the runtime's ``PullLoaded``; same bounds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar


class _Keyed(Protocol):
    @property
    def peer_id(self) -> str: ...
    @property
    def request_id(self) -> int: ...
    @property
    def device_id(self) -> str: ...
    @property
    def deadline_ms(self) -> int: ...


@dataclass(frozen=True, slots=True)
class Pending:
    peer_id: str
    request_id: int
    device_id: str
    from_height: int
    to_height: int
    flags: int
    deadline_ms: int
    peer_height: int  # the height the peer claimed; a full answer below it is followed up


@dataclass(frozen=True, slots=True)
class Serve:
    peer_id: str
    request_id: int
    device_id: str
    from_height: int
    to_height: int
    flags: int
    deadline_ms: int


T = TypeVar("T", bound=_Keyed)


class Table(Generic[T]):
    def __init__(self, max_total: int, max_per_peer: int) -> None:
        self.max_total = max_total
        self.max_per_peer = max_per_peer
        self._items: dict[tuple[str, int], T] = {}

    def __len__(self) -> int:
        return len(self._items)

    def room_for(self, peer_id: str) -> bool:
        if len(self._items) >= self.max_total:
            return False
        return sum(1 for p, _ in self._items if p == peer_id) < self.max_per_peer

    def add(self, item: T) -> None:
        self._items[(item.peer_id, item.request_id)] = item

    def get(self, peer_id: str, request_id: int) -> T | None:
        return self._items.get((peer_id, request_id))

    def pop(self, peer_id: str, request_id: int) -> T | None:
        return self._items.pop((peer_id, request_id), None)

    def busy(self, device_id: str, peer_id: str, since_deadline: int) -> bool:
        """A request for ``device_id`` to ``peer_id``, or to anyone with a deadline after
        ``since_deadline`` (that is, sent recently), is still open."""
        return any(
            i.device_id == device_id and (i.peer_id == peer_id or i.deadline_ms > since_deadline)
            for i in self._items.values()
        )

    def expire(self, now_ms: int) -> list[T]:
        due = [k for k, i in self._items.items() if i.deadline_ms <= now_ms]
        return [self._items.pop(k) for k in sorted(due)]

    def drop(self, *, peer_id: str | None = None, device_id: str | None = None) -> int:
        gone = [
            k
            for k, i in self._items.items()
            if (peer_id is not None and i.peer_id == peer_id)
            or (device_id is not None and i.device_id == device_id)
        ]
        for k in gone:
            del self._items[k]
        return len(gone)

    def next_deadline(self) -> int | None:
        items = self._items
        if not items:  # the usual case: asked after every input
            return None
        return min(i.deadline_ms for i in items.values())
