"""agent/errors.py: one base, stable and unique codes, documented, and who got it wrong."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import re
from pathlib import Path

import pytest

import agent.errors
from agent.cli.errors import CliError
from agent.config.devices import ConfigError
from agent.device.runtime import RestoreError
from agent.errors import AgentError, RemoteError, UsageError
from agent.fleet.keystore import KeystoreError
from agent.fleet.metrics import MetricsError
from agent.provenance.gather import TraceError
from agent.provenance.verified_chains import BlockRejected, ChainUnavailable
from agent.transport.brokers import BrokerError
from agent.transport.errors import (
    AttachError,
    InvalidNameError,
    NotConnectedError,
    PayloadTooLargeError,
    RefusedError,
    TransportClosedError,
    TransportError,
)

NAMED = (
    CliError,
    ConfigError,
    RestoreError,
    KeystoreError,
    TraceError,
    BlockRejected,
    ChainUnavailable,
    BrokerError,
    TransportError,
    AttachError,
    InvalidNameError,
    NotConnectedError,
    PayloadTooLargeError,
    RefusedError,
    TransportClosedError,
    MetricsError,
)


def _all_subclasses(cls: type) -> set[type]:
    found = set()
    for sub in cls.__subclasses__():
        found |= {sub} | _all_subclasses(sub)
    return found


def test_every_agent_error_has_its_own_code() -> None:
    classes = _all_subclasses(AgentError) | {AgentError}
    assert set(NAMED) <= classes
    by_code: dict[str, list[str]] = {}
    for cls in classes:
        if cls.__module__.startswith("agent."):
            by_code.setdefault(cls.code, []).append(cls.__qualname__)
    assert {code: names for code, names in by_code.items() if len(names) > 1} == {}


def _import_every_agent_module() -> None:
    """Error classes live in the rooms that raise them: a subclass exists only once its module
    is imported, whatever else the test session happened to import first."""
    import agent

    for info in pkgutil.walk_packages(agent.__path__, "agent."):
        if not info.name.endswith(".__main__"):  # that one runs the command line
            importlib.import_module(info.name)


def test_every_code_is_listed_in_the_module_docstring() -> None:
    _import_every_agent_module()
    documented = dict(
        re.findall(r"^``([a-z0-9-]+)``\s+``(\w+)``", agent.errors.__doc__ or "", re.MULTILINE)
    )
    actual = {
        cls.code: cls.__qualname__
        for cls in _all_subclasses(AgentError) | {AgentError}
        if cls.__module__.startswith("agent.")
    }
    assert documented == actual


@pytest.mark.parametrize(
    ("cls", "usage", "remote"),
    [
        (InvalidNameError, True, False),
        (PayloadTooLargeError, True, False),
        (AttachError, True, False),
        (RefusedError, False, True),
        (BlockRejected, False, True),
        (NotConnectedError, False, False),
        (ConfigError, False, False),
        (CliError, False, False),
    ],
)
def test_who_got_it_wrong(cls: type[AgentError], usage: bool, remote: bool) -> None:
    assert issubclass(cls, UsageError) is usage
    assert issubclass(cls, RemoteError) is remote


def test_errors_that_callers_catch_as_value_errors_still_are() -> None:
    # run.py catches ConfigError as a ValueError; the transport's two usage errors were
    # ValueErrors before they were AgentErrors, and stay both.
    for cls in (ConfigError, InvalidNameError, PayloadTooLargeError):
        assert issubclass(cls, ValueError)
    assert str(ConfigError(["a: bad", "b: worse"])) == "a: bad\nb: worse"


def test_a_code_must_be_lowercase_words_joined_by_dashes() -> None:
    with pytest.raises(TypeError, match="found 'Not_A_Code'"):

        class _Bad(AgentError, code="Not_A_Code"):
            pass

    class _Good(UsageError, code="fine-code-2"):
        pass

    assert _Good.code == "fine-code-2"
    assert _Good("x").code == "fine-code-2"


def test_the_error_module_imports_nothing_of_ours() -> None:
    # Every room imports agent/errors.py; one import of a room from it would close a cycle.
    tree = ast.parse(Path(agent.errors.__file__).read_text())
    imported = [
        n.module if isinstance(n, ast.ImportFrom) else a.name
        for n in ast.walk(tree)
        if isinstance(n, ast.Import | ast.ImportFrom)
        for a in n.names
    ]
    ours = [m for m in imported if m and m.split(".")[0] in {"agent", "ledger", "firmware_sim"}]
    assert ours == []
