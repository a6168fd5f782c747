"""The agent's errors: one base, stable codes, and a split between who got it wrong.

Every error the agent raises on purpose derives from ``AgentError``; ledger's errors keep their
own base (``ledger.errors.LedgerError``). Each class names its code in its class statement
(``class KeystoreError(AgentError, code="keystore")``), so that the one line naming a class's base
also names its code. Codes are stable strings: they appear in logs, counters and the CLI's
output; add codes, never rename one. tests/agent/test_errors.py checks that every code is unique
and listed below.

Who got it wrong:

- ``UsageError``: our own code called the agent wrongly (a bug; the fix is in our code).
- ``RemoteError``: something outside (a peer's bytes, a broker's answer) is not what we can
  accept (the fix is on their side; loops drop and count such input rather than raise).
- everything else is the operator's to fix (a file, a flag, a passphrase) or the environment's
  (a broker that is down, a port in use).

The codes (each class lives in the room that raises it; `grep -rn code=` finds it):

=====================  ========================  ================================================
code                   class                     raised when
=====================  ========================  ================================================
``agent``              ``AgentError``            (base only)
``usage``              ``UsageError``            (base only) our code misused the agent
``remote``             ``RemoteError``           (base only) the other side sent garbage
``cli``                ``CliError``              a command problem the user can fix
``config``             ``ConfigError``           devices.yaml is invalid (a ValueError too)
``keystore``           ``KeystoreError``         a key file or passphrase problem
``broker``             ``BrokerError``           a broker cannot start or stop, or a bad URL
``transport``          ``TransportError``        connect, publish or subscribe failed
``not-connected``      ``NotConnectedError``     the link is down: nothing was sent
``closed``             ``TransportClosedError``  the transport is closed (and drained)
``invalid-name``       ``InvalidNameError``      not a valid topic level (usage; a ValueError)
``payload-too-large``  ``PayloadTooLargeError``  a send above the limit (usage; a ValueError)
``attach``             ``AttachError``           attached twice, unknown, hub not started (usage)
``refused``            ``RefusedError``          the broker refused a subscription (remote)
``restore``            ``RestoreError``          a device cannot be restored
``provenance``         ``TraceError``            a data dir cannot be traced at all
``chain-unavailable``  ``ChainUnavailable``      no verifiable chain of a device in a data dir
``block-rejected``     ``BlockRejected``         a stored block does not verify (remote)
``fleet``              ``FleetError``            no device of a run could start
``metrics``            ``MetricsError``          /metrics cannot start, or a scrape timed out
``web``                ``WebError``              the web pages cannot show a data dir, or a bad page
``web-not-found``      ``NotFound``              a page names a device or item the data dir lacks
``web-not-ready``      ``NotReady``              a live fleet's data dir is not provisioned yet
``broker-tls``         ``BrokerTlsError``        a broker certificate cannot be issued or read
``fleet-log``          ``FleetLogError``         the heads log cannot be read, extended or served
``sensor``             ``SensorError``           a simulated appliance's sensors raised
``device-in-use``      ``DeviceInUse``           another run on this data dir runs the device
=====================  ========================  ================================================

This module imports nothing of ours, so that every room may import it.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

_CODE_RE = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")


class AgentError(Exception):
    """Base of every error the agent raises on purpose."""

    code: ClassVar[str] = "agent"

    def __init_subclass__(cls, code: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if code is not None:
            if not _CODE_RE.match(code):
                raise TypeError(
                    f"{cls.__qualname__}: expected a code of lowercase words joined by '-', "
                    f"found {code!r}"
                )
            cls.code = code


class UsageError(AgentError, code="usage"):
    """Our own code called the agent wrongly: a bug, never the fault of a user or a peer."""


class RemoteError(AgentError, code="remote"):
    """Something outside (a peer, a broker) sent what we cannot accept: not our bug."""
