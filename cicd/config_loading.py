"""Reading configuration files that come from a repository, without letting them
exhaust anything: the size is checked before a byte is parsed, YAML aliases,
nesting and the expanded document are bounded, duplicate keys are errors, and
every value shown in a message is cut short.

Why each bound (the attacks of issue 13, "Config bombs"):

* ``MAX_CONFIG_BYTES``: a 40 MB ``cicd.yaml`` ran for over 300 s in PyYAML's
  pure-Python parser. A real ``cicd.yaml`` is a few KiB.
* ``MAX_ALIASES`` and ``MAX_NODES``: a 288-byte file of nested aliases (the
  "billion laughs" of XML, https://en.wikipedia.org/wiki/Billion_laughs_attack)
  is a small graph that expands to millions of values once anything walks it
  (pydantic, ``repr`` in an error message: 289 MB). We count alias uses while
  composing and add, without expanding, how many values each alias stands
  for; either bound stops the load. Aliases to collections stay allowed
  (``<<: *defaults`` is common) as long as the expanded size is bounded.
* ``MAX_DEPTH``: PyYAML composes recursively; deep nesting raised a
  ``RecursionError`` traceback.
* Duplicate keys: YAML 1.2 requires unique keys
  (https://yaml.org/spec/1.2.2/#mapping), PyYAML silently keeps the last one
  (https://github.com/yaml/pyyaml/issues/41); a duplicated ``timeout`` would
  change the meaning of a config without any warning.
"""

from __future__ import annotations

import os
import reprlib
import stat
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from yaml.events import AliasEvent, MappingEndEvent, SequenceEndEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from cicd.errors import ConfigError

MAX_CONFIG_BYTES = 256 * 1024
MAX_DEPTH = 32
MAX_ALIASES = 100
# Values in the document once every alias is expanded, counted as they are
# composed so that the count stops the parse. A real cicd.yaml has a few hundred;
# PyYAML's pure-Python composer takes about 0.1 ms per value on a busy machine,
# and a 256 KiB file can hold 130,000 of them (``[a,a,...]``).
MAX_NODES = 10_000
# Other repository files read as YAML (the LLM fixtures: long replies, more
# answers) get looser bounds on values, the same ones on aliases and depth.
OTHER_MAX_NODES = 200_000
OTHER_MAX_STRING_CHARS = 1024 * 1024
# Strings longer than this are refused wherever they appear (keys included).
MAX_STRING_CHARS = 4096
SHOWN_CHARS = 80
PROBLEM_CHARS = 160
# The whole ``cicd: error:`` line stays readable (and small in Prefect's database).
PROBLEMS_CHARS = 220
MERGE_TAG = "tag:yaml.org,2002:merge"

_REPR = reprlib.Repr()
_REPR.maxstring = SHOWN_CHARS
_REPR.maxother = SHOWN_CHARS
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 4
_REPR.maxlevel = 2


def shown(value: Any, limit: int = SHOWN_CHARS) -> str:
    """``repr(value)`` cut to ``limit`` characters, without walking all of ``value``."""
    text = _REPR.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def clipped(text: str, limit: int = PROBLEM_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def dotted(parts: Sequence[Any]) -> str:
    """A field's location as written in messages: ``tests.unit.paths[0]``."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return clipped(out, SHOWN_CHARS)


def bounded_problems(problems: Sequence[str]) -> list[str]:
    """The first problems that fit on one line, and how many more there are."""
    kept: list[str] = []
    used = 0
    for problem in problems:
        problem = clipped(problem)
        if kept and used + len(problem) > PROBLEMS_CHARS:
            break
        kept.append(problem)
        used += len(problem) + 2
    if len(kept) < len(problems):
        kept.append(f"and {len(problems) - len(kept)} more problem(s)")
    return kept


class _Refused(yaml.YAMLError):
    """A bound of this module was exceeded; names the field where it happened."""

    def __init__(self, problem: str, node_mark: Any, path: str) -> None:
        super().__init__(problem)
        self.problem = problem
        self.problem_mark = node_mark
        self.path = path


class BoundedLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader with the bounds above, checked while composing nodes
    (before any Python object is built). The composing methods follow PyYAML's
    own (yaml/composer.py), with the counting added."""

    def __init__(
        self, stream: str, max_values: int = MAX_NODES, max_chars: int = MAX_STRING_CHARS
    ) -> None:
        super().__init__(stream)
        self._max_values = max_values
        self._max_chars = max_chars
        self._depth = 0
        self._aliases = 0
        self._path: list[str | int] = []
        self._open_anchors: set[str] = set()
        # Values composed so far, aliases expanded; id(anchored node) -> its share.
        self._values = 0
        self._sizes: dict[int, int] = {}

    # PyYAML's parser and resolver are untyped (types-PyYAML): typed views of them.
    def _peek(self) -> Any:
        return self.peek_event()  # type: ignore[no-untyped-call]

    def _next(self) -> Any:
        return self.get_event()  # type: ignore[no-untyped-call]

    def _tag(self, kind: type[Node], event: Any) -> str:
        tag = event.tag
        if tag is None or tag == "!":
            tag = self.resolve(kind, None, event.implicit)  # type: ignore[no-untyped-call]
        return str(tag)

    def _refuse(self, problem: str) -> _Refused:
        return _Refused(problem, self._peek().start_mark, dotted(self._path))

    def _count(self, values: int) -> None:
        self._values += values
        if self._values > self._max_values:
            raise self._refuse(f"more than {self._max_values} values, aliases expanded")

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        if self.check_event(AliasEvent):
            anchor = self._peek().anchor
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise self._refuse(f"more than {MAX_ALIASES} aliases (*name)")
            if anchor in self._open_anchors:
                raise self._refuse(f"alias *{clipped(str(anchor), 40)} refers to itself")
            node = super().compose_node(parent, index)
            if node is not None:
                self._count(self._sizes.get(id(node), 1))
            return node
        if self._depth >= MAX_DEPTH:
            raise self._refuse(f"nested deeper than {MAX_DEPTH} levels")
        self._count(1)
        before = self._values
        anchor = self._peek().anchor
        if anchor is not None:
            self._open_anchors.add(anchor)
        self._depth += 1
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
            self._open_anchors.discard(anchor)
        if anchor is not None and node is not None:
            # What an alias to this node will add: itself and all it holds.
            self._sizes[id(node)] = 1 + self._values - before
        return node

    def _child(self, parent: Node, index: Any, where: str | int) -> Node:
        self._path.append(where)
        try:
            node = self.compose_node(parent, index)
        finally:
            self._path.pop()
        assert node is not None  # compose_node returns None only at the end of a stream
        return node

    def compose_scalar_node(self, anchor: Any) -> ScalarNode:
        node = super().compose_scalar_node(anchor)
        if len(node.value) > self._max_chars:
            raise _Refused(
                f"a value of {len(node.value)} characters (at most {self._max_chars})",
                node.start_mark,
                dotted(self._path),
            )
        return node

    def compose_sequence_node(self, anchor: Any) -> SequenceNode:
        start = self._next()
        node = SequenceNode(
            self._tag(SequenceNode, start), [], start.start_mark, None, flow_style=start.flow_style
        )
        if anchor is not None:
            self.anchors[anchor] = node
        while not self.check_event(SequenceEndEvent):
            node.value.append(self._child(node, len(node.value), len(node.value)))
        node.end_mark = self._next().end_mark
        return node

    def compose_mapping_node(self, anchor: Any) -> MappingNode:
        start = self._next()
        node = MappingNode(
            self._tag(MappingNode, start), [], start.start_mark, None, flow_style=start.flow_style
        )
        if anchor is not None:
            self.anchors[anchor] = node
        seen: set[tuple[str, str]] = set()
        while not self.check_event(MappingEndEvent):
            key = self.compose_node(node, None)
            assert key is not None
            name = str(key.value) if isinstance(key, ScalarNode) else "?"
            if isinstance(key, ScalarNode) and key.tag != MERGE_TAG:
                if (key.tag, name) in seen:
                    raise _Refused(
                        f"duplicate key {shown(name, 40)}",
                        key.start_mark,
                        dotted([*self._path, name]),
                    )
                seen.add((key.tag, name))
            node.value.append((key, self._child(node, key, name)))
        node.end_mark = self._next().end_mark
        return node


def load_yaml(
    text: str,
    source: str,
    kind: str = "YAML",
    *,
    max_values: int = OTHER_MAX_NODES,
    max_chars: int = OTHER_MAX_STRING_CHARS,
) -> Any:
    """Parse YAML within the bounds above (``cicd.yaml``: ``MAX_NODES`` and
    ``MAX_STRING_CHARS``); an error names ``source``, the line and (where known)
    the field."""
    loader = None
    try:
        # The reader checks every character when it is created.
        loader = BoundedLoader(text, max_values, max_chars)
        return loader.get_single_data()
    except _Refused as exc:
        where = f"line {exc.problem_mark.line + 1}: " if exc.problem_mark is not None else ""
        field = f"field '{exc.path}': " if exc.path else ""
        raise ConfigError(source, [f"{where}{field}{exc.problem}"]) from None
    except yaml.reader.ReaderError as exc:
        raise ConfigError(
            source,
            [f"character {exc.position}: not valid {kind} (character #x{exc.character:04x})"],
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = clipped(str(getattr(exc, "problem", None) or exc), 100)
        raise ConfigError(source, [f"{where}not valid {kind} ({problem})"]) from None
    finally:
        if loader is not None:
            loader.dispose()


def read_text(path: Path, source: str, limit: int = MAX_CONFIG_BYTES) -> str:
    """The UTF-8 text of a regular file of at most ``limit`` bytes.

    The size is checked before reading (and the read stops at the limit, should
    the file grow meanwhile); FIFOs and devices are refused rather than read.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise ConfigError(source, [f"cannot read ({exc.strerror})"]) from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(source, ["not a regular file"])
        if info.st_size > limit:
            raise ConfigError(
                source, [f"the file has {info.st_size} bytes; at most {limit} are accepted"]
            )
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise ConfigError(source, [f"the file has more than {limit} bytes"])
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            source,
            [f"not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); binary file?"],
        ) from None


def read_toml(path: Path, source: str, limit: int = MAX_CONFIG_BYTES) -> dict[str, Any]:
    """A TOML file read as ``read_text`` reads it; malformed TOML names ``source``."""
    try:
        return tomllib.loads(read_text(path, source, limit))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, [f"not valid TOML ({clipped(str(exc), 100)})"]) from None
    except RecursionError:
        raise ConfigError(source, ["not valid TOML (nested too deeply)"]) from None


def check_strings(data: Any, source: str) -> None:
    """Refuse NUL characters and over-long strings anywhere (keys included):
    NUL cannot be passed to a process (Python raises ``ValueError: embedded null
    byte``) and long values only serve to blow up messages and logs."""
    stack: list[tuple[Any, tuple[Any, ...]]] = [(data, ())]
    seen: set[int] = set()
    while stack:
        value, where = stack.pop()
        if isinstance(value, str):
            if "\x00" in value:
                raise ConfigError(source, [f"field '{dotted(where)}': contains a NUL character"])
            if len(value) > MAX_STRING_CHARS:
                raise ConfigError(
                    source, [f"field '{dotted(where)}': longer than {MAX_STRING_CHARS} characters"]
                )
        elif isinstance(value, dict | list) and id(value) not in seen:
            # Shared (aliased) values are walked once: the check is per value.
            seen.add(id(value))
            if isinstance(value, dict):
                for key, item in value.items():
                    stack.append((key, where))
                    stack.append((item, (*where, str(key))))
            else:
                stack.extend((item, (*where, i)) for i, item in enumerate(value))
