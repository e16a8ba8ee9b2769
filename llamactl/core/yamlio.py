"""One safe, bounded YAML loader for everything the user writes: profiles, matrices, --set, --cell.

- YAML 1.2 core typing: only ``true``/``false`` (any of the three spellings) are booleans, so
  ``flash_attn: off`` stays the word "off" (YAML 1.1 would read false); integers are decimal
  (or 0x hex), so ``0777`` is 777 and ``1:30`` is a string; ``1e-3`` is a float.
- Duplicate keys are an error naming the line of the second one.
- Bounded: files over :data:`llamactl.core.files.MAX_TEXT_BYTES` are refused before parsing,
  nesting deeper than :data:`MAX_DEPTH` and documents whose aliases expand to more than
  :data:`MAX_NODES` nodes (a "billion laughs" bomb) are refused before they are built.

Every failure is a :class:`~llamactl.core.errors.BadInput` of one line: ``FILE:LINE: problem``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from yaml.composer import ComposerError
from yaml.constructor import ConstructorError
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from llamactl.core.errors import BadInput
from llamactl.core.files import MAX_TEXT_BYTES, read_text

MAX_DEPTH = 64          # nested collections
MAX_NODES = 100_000     # nodes after expanding aliases
MAX_ALIASES = 1_000     # alias uses in one document

BOOL = "tag:yaml.org,2002:bool"
INT = "tag:yaml.org,2002:int"
FLOAT = "tag:yaml.org,2002:float"

_BOOL_RE = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")
_INT_RE = re.compile(r"^(?:[-+]?[0-9]+|0x[0-9a-fA-F]+|0o[0-7]+)$")
_FLOAT_RE = re.compile(r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$")


class StrictLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans and numbers, duplicate-key errors and size bounds."""

    yaml_implicit_resolvers: dict = {
        ch: [(tag, rx) for tag, rx in resolvers if tag not in (BOOL, INT, FLOAT)]
        for ch, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._aliases = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:  # type: ignore[override]
        if self.check_event(AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                event = self.peek_event()
                raise ComposerError(None, None, f"more than {MAX_ALIASES} aliases; refusing to expand", event.start_mark)
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                event = self.peek_event()
                raise ComposerError(None, None, f"nested deeper than {MAX_DEPTH} levels", event.start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict:  # type: ignore[override]
        if isinstance(node, MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:
                    raise ConstructorError("while constructing a mapping", node.start_mark,
                                           "found an unhashable key", key_node.start_mark) from None
                if first is not None:
                    raise ConstructorError(None, None, f"duplicate key {key!r} (first at line {first + 1})",
                                           key_node.start_mark)
                seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)

    def construct_yaml_int(self, node: Node) -> int:  # type: ignore[override]
        value = str(self.construct_scalar(node))   # type: ignore[arg-type]
        if value.startswith("0x"):
            return int(value[2:], 16)
        if value.startswith("0o"):
            return int(value[2:], 8)
        return int(value, 10)


StrictLoader.add_implicit_resolver(BOOL, _BOOL_RE, list("tTfF"))
StrictLoader.add_implicit_resolver(INT, _INT_RE, list("-+0123456789"))
StrictLoader.add_implicit_resolver(FLOAT, _FLOAT_RE, list("-+.0123456789"))
StrictLoader.add_constructor(INT, StrictLoader.construct_yaml_int)


def _expanded_size(node: Node, memo: dict[int, int], active: set[int]) -> int:
    """Nodes in the document once every alias is expanded (aliases share node objects)."""
    key = id(node)
    if key in memo:
        return memo[key]
    if key in active:
        raise ComposerError(None, None, "an alias refers to its own anchor (recursive structure)", node.start_mark)
    active.add(key)
    total = 1
    if isinstance(node, SequenceNode):
        for child in node.value:
            total += _expanded_size(child, memo, active)
            if total > MAX_NODES:
                break
    elif isinstance(node, MappingNode):
        for k, v in node.value:
            total += _expanded_size(k, memo, active) + _expanded_size(v, memo, active)
            if total > MAX_NODES:
                break
    active.discard(key)
    memo[key] = total
    if total > MAX_NODES:
        raise ComposerError(None, None, f"expands to more than {MAX_NODES} nodes (aliases nested in aliases?); refusing it",
                            node.start_mark)
    return total


def _where(exc: yaml.YAMLError) -> tuple[int | None, str]:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    context = getattr(exc, "context", None)
    text = f"{context}: {problem}" if context and problem and "duplicate" not in problem else str(problem)
    return (mark.line + 1 if mark is not None else None), " ".join(text.split())


def _key_lines(node: Node, lines: dict[str, int], prefix: str = "", depth: int = 2,
               raw: dict[str, str] | None = None) -> None:
    """1-based line of each mapping key, dotted, ``depth`` levels down (``build.backend``); with ``raw``,
    the text of each plain (unquoted) scalar value that YAML reads as a number or a boolean."""
    if not isinstance(node, MappingNode) or depth == 0:
        return
    for k, v in node.value:
        if isinstance(k.value, str):
            key = f"{prefix}{k.value}"
            lines.setdefault(key, k.start_mark.line + 1)
            if raw is not None and isinstance(v, ScalarNode) and v.tag in (BOOL, INT, FLOAT) and v.style is None:
                raw.setdefault(key, v.value)
            _key_lines(v, lines, f"{key}.", depth - 1, raw)


def loads(text: str, source: str = "<string>", lines: dict[str, int] | None = None,
          raw: dict[str, str] | None = None) -> Any:
    """Parse one YAML document from ``text``; ``source`` names it in errors (a path, or ``--set``).

    ``lines``, when given, receives the 1-based line of each key (dotted, two levels deep); ``raw`` the
    text as written of each value YAML typed as a number or boolean (``api_key: 0755`` -> ``"0755"``), for
    keys that take text.
    Raises:
        BadInput: invalid YAML, a duplicate key, a bomb or nesting too deep: ``SOURCE:LINE: problem``.
    """
    loader = StrictLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded_size(node, {}, set())
        if lines is not None or raw is not None:
            _key_lines(node, {} if lines is None else lines, raw=raw)
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        line, problem = _where(exc)
        where = f"{source}:{line}" if line is not None else source
        raise BadInput(f"{where}: invalid YAML: {problem}") from exc
    except RecursionError as exc:   # belt and braces: MAX_DEPTH should stop this first
        raise BadInput(f"{source}: invalid YAML: nested too deeply") from exc
    finally:
        loader.dispose()


def load_file(path: Path, what: str = "file", max_bytes: int = MAX_TEXT_BYTES,
              lines: dict[str, int] | None = None, raw: dict[str, str] | None = None) -> Any:
    """Read (bounded, UTF-8) and parse a YAML file. Raises BadInput naming the file and line."""
    return loads(read_text(path, what, max_bytes), str(path), lines, raw)


def parse_scalar(raw: str) -> Any:
    """A command-line value (``--set k=v``, ``--cell k=v``) typed as YAML 1.2 would type it.

    ``off``/``yes``/``n`` stay words; ``true``/``false`` are booleans; ``[a, b]`` is a list.
    Text that is not valid YAML on its own (``[oops``) is kept as the string typed.
    """
    if raw == "":
        return ""
    try:
        return loads(raw, "value")
    except BadInput:
        return raw
