"""Bounds on a YAML document, checked on PyYAML's events as they stream from the parser,
before its composer (which recurses once per level of nesting) builds anything.

A few hundred bytes of nested aliases (a "billion laughs") stand for a billion values: an
alias counts here as everything its anchor stands for, so the nesting, the number of
values and the characters of text are bounded as if every alias were written out. Every
later pass over the document (construction, validation, the duplicate-key check, error
messages) is then bounded too. Numbers are bounded in length, since Python's int() of a
long YAML integer (sexagesimal ones above all) takes time that grows faster than its text.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import yaml

from corral import limits

_NUMBER_TAGS = ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")


class DocumentTooLarge(Exception):
    """Raised by EventBounds when a document passes one of its bounds, with the line."""

    def __init__(self, message: str, line: int) -> None:
        super().__init__(message)
        self.message = message
        self.line = line


@dataclass(frozen=True)
class _Size:
    """What a node stands for once its aliases are written out."""

    values: int
    text: int
    height: int  # levels of mappings and lists, this one included (0 for a scalar)


@dataclass
class _Open:
    """A mapping or list whose end has not been seen yet."""

    anchor: str | None
    values_before: int
    text_before: int
    depth: int  # its own level: 1 for the top mapping
    deepest: int  # the deepest level reached inside it so far


class EventBounds:
    """Sees each event once, in order; raises DocumentTooLarge at the first bound passed.

    `resolve` is the loader's tag resolver, to tell which plain scalars are numbers.
    """

    def __init__(self, resolve: Callable[[type, str, tuple[bool, bool]], str]) -> None:
        self._resolve = resolve
        self._open: list[_Open] = []
        self._anchors: dict[str, _Size] = {}
        self.values = 0
        self.text = 0

    def see(self, event: yaml.Event) -> None:
        line = event.start_mark.line + 1 if event.start_mark else 0
        if isinstance(event, yaml.ScalarEvent):
            self._check_number(event, line)
            self._add(_Size(1, len(event.value), 0), line)
            if event.anchor is not None:
                self._anchors[event.anchor] = _Size(1, len(event.value), 0)
        elif isinstance(event, yaml.AliasEvent):
            size = self._anchors.get(event.anchor)
            if size is None:  # undefined, or an alias inside its own anchor: a loop
                raise DocumentTooLarge(
                    f"alias *{event.anchor} refers to no complete anchor above it", line
                )
            self._add(size, line)
        elif isinstance(event, yaml.CollectionStartEvent):
            self._add(_Size(1, 0, 1), line)
            depth = len(self._open) + 1
            self._open.append(_Open(event.anchor, self.values - 1, self.text, depth, depth))
        elif isinstance(event, yaml.CollectionEndEvent):
            done = self._open.pop()
            if self._open:
                self._open[-1].deepest = max(self._open[-1].deepest, done.deepest)
            if done.anchor is not None:
                self._anchors[done.anchor] = _Size(
                    self.values - done.values_before,
                    self.text - done.text_before,
                    done.deepest - done.depth + 1,
                )

    def _add(self, size: _Size, line: int) -> None:
        self.values += size.values
        self.text += size.text
        reached = len(self._open) + size.height
        if self._open:
            self._open[-1].deepest = max(self._open[-1].deepest, reached)
        if reached > limits.MAX_DOCUMENT_DEPTH:
            raise DocumentTooLarge(_too_deep(), line)
        if self.values > limits.MAX_DOCUMENT_VALUES:
            raise DocumentTooLarge(
                f"more than {limits.MAX_DOCUMENT_VALUES} values (aliases written out), "
                "the limit for a document",
                line,
            )
        if self.text > limits.MAX_DOCUMENT_TEXT:
            raise DocumentTooLarge(
                f"more than {limits.MAX_DOCUMENT_TEXT} characters of text (aliases written "
                "out), the limit for a document",
                line,
            )

    def _check_number(self, event: yaml.ScalarEvent, line: int) -> None:
        if len(event.value) <= limits.MAX_NUMBER_CHARS:
            return
        tag = event.tag
        if tag is None or tag == "!":
            tag = self._resolve(yaml.ScalarNode, event.value, event.implicit)
        if tag in _NUMBER_TAGS:
            raise DocumentTooLarge(
                f"a number of {len(event.value)} characters; numbers have at most "
                f"{limits.MAX_NUMBER_CHARS}",
                line,
            )


class BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader, with every event it composes seen by EventBounds first.

    Its scanner bounds flow nesting (`[[[[...`) as it reads the brackets: it looks ahead
    up to 1024 characters for a key, and each bracket is one more candidate it checks at
    every step, a million steps before the first event for one line of brackets.
    """

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.bounds = EventBounds(self.resolve)

    def get_event(self) -> yaml.Event:
        event = super().get_event()
        self.bounds.see(event)
        return event

    def fetch_flow_collection_start(self, token_class: type) -> None:
        if self.flow_level >= limits.MAX_DOCUMENT_DEPTH:
            raise DocumentTooLarge(_too_deep(), self.line + 1)
        super().fetch_flow_collection_start(token_class)


def _too_deep() -> str:
    return (
        f"nested more than {limits.MAX_DOCUMENT_DEPTH} levels deep "
        "(mappings and lists, aliases written out), the limit for a document"
    )
