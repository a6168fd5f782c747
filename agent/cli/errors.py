"""The CLI's one error: a problem the user can fix, printed as one line without a traceback.

It lives apart from main.py so that command modules can raise it without importing the module
that imports them (main.py imports every command statically).
"""

from __future__ import annotations

from agent.errors import AgentError


class CliError(AgentError, code="cli"):
    """A user-fixable problem: printed as `edgefleet: error: <message>`, exit status 2."""
