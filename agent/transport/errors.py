"""The transport's errors: ``TransportError`` and its subclasses (codes in agent/errors.py).

Adapters map foreign errors (aiomqtt's ``MqttError``, ``OSError``) to these at the boundary and
nowhere else. Who got it wrong: ``InvalidNameError``, ``PayloadTooLargeError`` and
``AttachError`` are our own misuse (``UsageError``); ``RefusedError`` is the broker's answer
(``RemoteError``); ``NotConnectedError`` and ``TransportClosedError`` are states of the link.
Malformed input from the network is never raised: transports drop it and count it.
"""

from __future__ import annotations

from agent.errors import AgentError, RemoteError, UsageError


class TransportError(AgentError, code="transport"):
    """Base of every error a transport raises; adapters map foreign errors to this."""


class InvalidNameError(TransportError, UsageError, ValueError, code="invalid-name"):
    """A device id, domain, hub id or prefix cannot be used as a topic level (our bug)."""


class PayloadTooLargeError(TransportError, UsageError, ValueError, code="payload-too-large"):
    """We tried to send more bytes than the transport's payload limit (our bug)."""


class AttachError(TransportError, UsageError, code="attach"):
    """A device was attached twice, or to a network or hub that lacks it or is not started."""


class RefusedError(TransportError, RemoteError, code="refused"):
    """The broker refused what we asked (a subscription its ACL denies)."""


class NotConnectedError(TransportError, code="not-connected"):
    """The link to the broker is down: nothing was sent (or the broker never acknowledged it).

    Nothing is queued for later: the runtime keeps its state durably and anti-entropy repairs
    what a failed send did not deliver.
    """


class TransportClosedError(TransportError, code="closed"):
    """The transport was closed and every delivery it held has been taken."""
