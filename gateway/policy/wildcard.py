"""Policy wildcard matching: ``*`` is any run of characters (``/`` and ``:`` included), ``?`` exactly one.

A pattern is a sequence of segments ``(text, wild)``. Only text written in the policy is ``wild``;
text that came from a policy variable or an escape (``${*}``) matches itself literally. MQTT ``+``/``#``
have no special meaning anywhere.

Each pattern compiles to the cheapest matcher that fits: an exact string, a prefix (one trailing
``*``), or a chunked glob. The glob never backtracks more than one chunk at a time: chunks between
stars are found left to right with ``str.find`` (or a fixed-length regex for chunks containing ``?``),
so matching is linear in practice and never exponential whatever the request text.
"""

from __future__ import annotations

import functools
import re
from typing import Iterable, Sequence

Segment = tuple[str, bool]

_STAR = object()
_QMARK = object()


def _atoms(segments: Iterable[Segment]) -> list:
    """Flatten segments into literal strings, _STAR and _QMARK markers (adjacent literals merged)."""
    atoms: list = []

    def add_literal(text: str) -> None:
        if not text:
            return
        if atoms and isinstance(atoms[-1], str):
            atoms[-1] += text
        else:
            atoms.append(text)

    for text, wild in segments:
        if not wild:
            add_literal(text)
            continue
        start = 0
        for i, ch in enumerate(text):
            if ch == "*" or ch == "?":
                add_literal(text[start:i])
                if ch == "*":
                    if not (atoms and atoms[-1] is _STAR):
                        atoms.append(_STAR)
                else:
                    atoms.append(_QMARK)
                start = i + 1
        add_literal(text[start:])
    return atoms


class _Chunk:
    """Text between two stars: a plain string, or a fixed-length regex when it holds ``?``."""

    __slots__ = ("text", "rx", "length")

    def __init__(self, atoms: Sequence) -> None:
        if all(isinstance(a, str) for a in atoms):
            self.text: str | None = "".join(atoms)
            self.rx = None
            self.length = len(self.text)
        else:
            self.text = None
            self.rx = re.compile("".join("." if a is _QMARK else re.escape(a) for a in atoms), re.DOTALL)
            self.length = sum(1 if a is _QMARK else len(a) for a in atoms)

    def match_at(self, s: str, pos: int) -> bool:
        if self.text is not None:
            return s.startswith(self.text, pos)
        return self.rx.match(s, pos, pos + self.length) is not None

    def find(self, s: str, pos: int, end: int) -> int:
        if self.text is not None:
            return s.find(self.text, pos, end)
        m = self.rx.search(s, pos, end)
        return -1 if m is None else m.start()


class Glob:
    """A pattern with ``*``/``?`` in it; ``match`` is the whole-string test."""

    __slots__ = ("first", "middle", "last", "min_len", "has_star", "source")

    def __init__(self, atoms: list, source: str) -> None:
        self.source = source
        chunks: list[list] = [[]]
        for a in atoms:
            if a is _STAR:
                chunks.append([])
            else:
                chunks[-1].append(a)
        self.has_star = len(chunks) > 1
        compiled = [_Chunk(c) for c in chunks]
        self.first = compiled[0]
        self.last = compiled[-1] if self.has_star else None
        self.middle = tuple(compiled[1:-1])
        self.min_len = sum(c.length for c in compiled)

    def match(self, s: str) -> bool:
        n = len(s)
        if n < self.min_len:
            return False
        first = self.first
        if not first.match_at(s, 0):
            return False
        if not self.has_star:
            return n == first.length
        pos = first.length
        last = self.last
        end = n - last.length
        if end < pos or not last.match_at(s, end):
            return False
        for chunk in self.middle:
            i = chunk.find(s, pos, end)
            if i < 0:
                return False
            pos = i + chunk.length
        return True

    def __repr__(self) -> str:
        return f"Glob({self.source!r})"


class Matcher:
    """One compiled pattern: kind is ``any``, ``exact``, ``prefix`` or ``glob``."""

    __slots__ = ("kind", "value")

    def __init__(self, kind: str, value) -> None:
        self.kind = kind
        self.value = value

    def match(self, s: str) -> bool:
        kind = self.kind
        if kind == "exact":
            return s == self.value
        if kind == "prefix":
            return s.startswith(self.value)
        if kind == "any":
            return True
        return self.value.match(s)

    def __repr__(self) -> str:
        return f"Matcher({self.kind}, {self.value!r})"


ANY = Matcher("any", None)


def compile_pattern(segments: Iterable[Segment]) -> Matcher:
    """The matcher of a pattern given as (text, wildcards-apply) segments. Matchers are immutable, so the ones
    of recent patterns are shared (a policy's constant components, such as ``arn`` or an account id, are the
    same for every device; its per-device ones come and go through the bounded cache)."""
    return _compile(tuple(segments))


@functools.lru_cache(maxsize=8192)
def _compile(segments: tuple[Segment, ...]) -> Matcher:
    atoms = _atoms(segments)
    if not atoms:
        return Matcher("exact", "")
    if len(atoms) == 1 and atoms[0] is _STAR:
        return ANY
    if all(isinstance(a, str) for a in atoms):
        return Matcher("exact", atoms[0])
    if len(atoms) == 2 and isinstance(atoms[0], str) and atoms[1] is _STAR:
        return Matcher("prefix", atoms[0])
    source = "".join(t if w else t.replace("*", "\\*").replace("?", "\\?") for t, w in segments)
    return Matcher("glob", Glob(atoms, source))


def compile_text(text: str) -> Matcher:
    """A pattern written wholly in the policy (every ``*``/``?`` is a wildcard)."""
    return compile_pattern([(text, True)])


def has_wildcard(text: str) -> bool:
    return "*" in text or "?" in text


class MatcherSet:
    """Several matchers OR-ed together, grouped so the common cases cost one C call each."""

    __slots__ = ("any", "exact", "prefixes", "globs")

    def __init__(self, matchers: Iterable[Matcher]) -> None:
        self.any = False
        exact: set[str] = set()
        prefixes: list[str] = []
        globs: list[Glob] = []
        for m in matchers:
            if m.kind == "any":
                self.any = True
            elif m.kind == "exact":
                exact.add(m.value)
            elif m.kind == "prefix":
                prefixes.append(m.value)
            else:
                globs.append(m.value)
        self.exact = frozenset(exact)
        self.prefixes = tuple(prefixes)
        self.globs = tuple(globs)

    def match(self, s: str) -> bool:
        if self.any or s in self.exact:
            return True
        if self.prefixes and s.startswith(self.prefixes):
            return True
        for g in self.globs:
            if g.match(s):
                return True
        return False

    @property
    def empty(self) -> bool:
        return not (self.any or self.exact or self.prefixes or self.globs)
