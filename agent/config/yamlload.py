"""Reading a devices.yaml file safely: the project's one YAML reader.

``read_yaml(path)`` returns the document and a ``Lines`` that finds the line of any path in it
(``("devices", 3, "site")``), for errors found after loading. It is PyYAML's safe loader (libyaml
where installed) with the rules a configuration file needs and PyYAML lacks:

- **Bounded size.** A file above ``MAX_FILE_BYTES`` is refused unread, and a document whose
  expansion exceeds ``MAX_NODES`` nodes is refused before any Python object is built. Expansion
  counts every alias as a full copy of what it names, because that is what every later step
  (validation, group expansion, error messages) walks: an alias bomb (a "billion laughs") is a
  few hundred bytes that expand to billions of nodes. The count walks each distinct node once, so
  refusing one costs the size of the file, not of its expansion. A recursive alias is refused.
- **No duplicate keys.** PyYAML keeps the last of two equal keys silently (a fridge became a
  washing machine); here the second is an error naming the key and both lines.
- **Scalars that cannot be built are YAML errors**: ``start: 2025-13-45`` matches YAML's
  timestamp pattern but is no date; PyYAML lets the ``ValueError`` escape as a traceback.
- **Errors name the file and the line** (``devices.yaml: line 3, column 5: ...``), never
  ``<unicode string>``, each on one line.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from agent.config.errors import ConfigError, clip

MAX_FILE_BYTES = 4 << 20
MAX_NODES = 200_000  # nodes after alias expansion; a 10,000-device file written out is ~70,000
MERGE_TAG = "tag:yaml.org,2002:merge"

_Base: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Loader(_Base):  # type: ignore[misc]
    """The safe loader whose scalar constructors fail as YAML errors at the scalar's line."""

    def construct_object(self, node: Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError) as exc:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"cannot read {clip(node.value)} as {node.tag.rsplit(':', 1)[-1]}: {exc}",
                node.start_mark,
            ) from None


class Lines:
    """Where a path of the loaded document stands in the file (1-based lines)."""

    def __init__(self, root: Node | None) -> None:
        self._root = root

    def line(self, loc: Sequence[object]) -> int | None:
        """The line of the deepest node along ``loc`` that the document has (None: no file)."""
        node = self._root
        if node is None:
            return None
        found = node.start_mark.line + 1
        for part in loc:
            child = _child(node, part)
            if child is None:
                break
            node, line = child
            found = line
        return found


def _child(node: Node, part: object) -> tuple[Node, int] | None:
    if isinstance(node, SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
        item: Node = node.value[part]
        return item, item.start_mark.line + 1
    if isinstance(node, MappingNode):
        hit = None
        for key, value in _entries(node):
            if isinstance(key, ScalarNode) and key.value == str(part):
                hit = (value, key.start_mark.line + 1)  # the last one wins, as in the loader
        return hit
    return None


def _entries(node: MappingNode) -> Iterator[tuple[Node, Node]]:
    """A mapping's key and value nodes, with merged (``<<``) mappings' entries first."""
    for key, value in node.value:
        if key.tag == MERGE_TAG:
            merged = value.value if isinstance(value, SequenceNode) else [value]
            for m in merged:
                if isinstance(m, MappingNode):
                    yield from _entries(m)
        else:
            yield key, value


def read_yaml(path: str | Path) -> tuple[object, Lines]:
    """Read, check and load one YAML document; ConfigError (one problem) when it cannot be."""
    source = str(path)
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError([f"{source}: cannot read: {exc.strerror or exc}"]) from None
    if len(raw) > MAX_FILE_BYTES:
        raise ConfigError(
            [f"{source}: cannot read: larger than {MAX_FILE_BYTES >> 20} MiB; is it devices.yaml?"]
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{source}: cannot read: not UTF-8 text (byte {exc.start})"]) from None
    return load_yaml(text, source)


def load_yaml(text: str, source: str) -> tuple[object, Lines]:
    """Load one YAML document from ``text`` with the rules of this module."""
    loader = _Loader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return None, Lines(None)
        _check(root, source)
        return loader.construct_document(root), Lines(root)
    except yaml.MarkedYAMLError as exc:
        raise ConfigError([_describe(exc, source)]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"{source}: not valid YAML: {_one_line(str(exc))}"]) from None
    except RecursionError:  # the pure-Python parser, where libyaml is missing
        raise ConfigError([f"{source}: not valid YAML: nested too deeply"]) from None
    finally:
        loader.dispose()


def _describe(exc: yaml.MarkedYAMLError, source: str) -> str:
    mark = exc.problem_mark or exc.context_mark
    where = f"{source}: line {mark.line + 1}, column {mark.column + 1}" if mark else source
    what = _one_line(exc.problem or "")
    if exc.context:
        at = exc.context_mark
        context = exc.context + (f" at line {at.line + 1}" if at and at is not mark else "")
        what = f"{what} ({_one_line(context)})"
    return f"{where}: not valid YAML: {what}"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _check(root: Node, source: str) -> None:
    """Refuse duplicate keys, recursive aliases and documents that expand past MAX_NODES.

    One walk over the distinct nodes (an alias is the very node it names): each node's expanded
    size is computed once, from its children's, and the walk stops at the first size over the
    budget, so what it costs is bounded by the file, however large the expansion."""
    size: dict[int, int] = {}
    open_: set[int] = set()  # on the current path: met again, it is a recursive alias
    # (node, None): to visit; (node, its children): every child sized, size the node itself.
    stack: list[tuple[Node, list[Node] | None]] = [(root, None)]
    while stack:
        node, kids = stack.pop()
        key = id(node)
        if kids is not None:
            open_.discard(key)
            total = 1 + sum(1 if isinstance(k, ScalarNode) else size[id(k)] for k in kids)
            if total > MAX_NODES:
                line = node.start_mark.line + 1
                raise ConfigError(
                    [
                        f"{source}: line {line}: the document expands to more than "
                        f"{MAX_NODES:,} nodes, each alias counted as a copy of what it names; "
                        "a devices.yaml needs far fewer (an alias bomb?)"
                    ]
                )
            size[key] = total
            continue
        if key in size:
            continue
        if key in open_:
            raise ConfigError(
                [
                    f"{source}: line {node.start_mark.line + 1}: an alias contains itself "
                    "(a recursive alias); remove it"
                ]
            )
        if isinstance(node, MappingNode):
            _no_duplicate_keys(node, source)
        kids = _children(node)
        open_.add(key)
        stack.append((node, kids))
        # scalars are leaves of size 1: sized where their parent is, never stacked
        stack.extend((k, None) for k in kids if not isinstance(k, ScalarNode))


def _children(node: Node) -> list[Node]:
    if isinstance(node, SequenceNode):
        return list(node.value)
    if isinstance(node, MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _no_duplicate_keys(node: MappingNode, source: str) -> None:
    first: dict[tuple[str, str], int] = {}
    for key, _ in node.value:
        if not isinstance(key, ScalarNode) or key.tag == MERGE_TAG:
            continue
        line = key.start_mark.line + 1
        seen = first.get((key.tag, key.value))
        if seen is None:
            first[(key.tag, key.value)] = line
        else:
            raise ConfigError(
                [
                    f"{source}: line {line}: duplicate key {clip(key.value)} (first at line "
                    f"{seen}): YAML would keep only the last; remove one"
                ]
            )
