"""The one error of agent.config: ``ConfigError``, a devices.yaml that cannot be used."""

from __future__ import annotations

from collections.abc import Sequence

from agent.errors import AgentError

MAX_SHOWN = 20  # problems printed; the rest are counted


class ConfigError(AgentError, ValueError, code="config"):
    """devices.yaml is unreadable or invalid; ``problems`` holds one line per problem, each
    naming the file (and its line where the YAML gives it), the device, site or group, the field,
    and what was expected."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = tuple(problems)
        shown = list(self.problems[:MAX_SHOWN])
        if len(self.problems) > MAX_SHOWN:
            shown.append(f"... and {len(self.problems) - MAX_SHOWN} more problems")
        super().__init__("\n".join(shown))


def clip(value: object, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters: a message never echoes a huge input whole."""
    if isinstance(value, str):
        value = value[: limit + 1]  # repr of the head only: a long string is never copied whole
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
