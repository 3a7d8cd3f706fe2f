"""The one tag filter every step shares: which OSM tag keys are noise.

Patterns are shell globs over the *key* (``source*``, ``name:*``), matched case-insensitively
(OSM has both ``fixme`` and ``FIXME``). A pattern starting with ``!`` is an exception that
keeps matching keys even when another pattern drops them (``!name:en``). Exceptions win.

A filter file holds one pattern per line; ``#`` starts a comment.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable
from pathlib import Path

from gjp.io import read_text

#: Keys that describe how the data was made rather than what is on the ground
#: (docs/DECISIONS.md), plus the original GeoJEPA exclude list, which its code never applied.
DEFAULT_DROP_PATTERNS: tuple[str, ...] = (
    # provenance and import metadata
    "source*", "*:source", "tiger:*", "created_by", "import*", "yh:*", "naptan:*",
    "openGeoDB:*", "TMC:*", "AND_nosr_r", "AND:importance_level", "osmarender:*",
    "attribution", "gnis:*", "lacounty:*", "nysgissam:*", "massgis:*",
    # notes to mappers
    "note", "note:*", "fixme", "fixme:*", "todo", "comment", "description:*",
    # links to other databases
    "wikidata", "*:wikidata", "wikipedia", "wikipedia:*", "*:wikipedia",
    "wikimedia_commons", "*:wikimedia_commons",
    # name variants (translations, historic, alternative): `name` itself is kept
    "name:*", "alt_name", "alt_name:*", "old_name", "old_name:*", "short_name:*",
    "official_name:*", "loc_name:*", "int_name:*", "nat_name:*", "reg_name:*",
    "sorting_name*", "name_?",  # name_1, name_2: TIGER alternatives
    # the same value on every object of a region (2.6 M times in the original data)
    "addr:state",
)


class TagFilter:
    """Decides per key whether a tag is kept; decisions are cached (keys repeat a lot)."""

    def __init__(self, patterns: Iterable[str] = DEFAULT_DROP_PATTERNS):
        self.patterns = tuple(p.strip() for p in patterns if p.strip())
        drop = [p for p in self.patterns if not p.startswith("!")]
        keep = [p[1:] for p in self.patterns if p.startswith("!")]
        self._drop = _compile(drop)
        self._keep = _compile(keep)
        self._cache: dict[str, bool] = {}

    def keeps(self, key: str) -> bool:
        decision = self._cache.get(key)
        if decision is None:
            dropped = self._drop is not None and self._drop.match(key) is not None
            kept = self._keep is not None and self._keep.match(key) is not None
            decision = self._cache[key] = kept or not dropped
        return decision

    def apply(self, tags: Iterable[tuple[str, str]]) -> dict[str, str]:
        """The kept tags as a dict, in their original (file) order."""
        keeps = self.keeps
        return {k: v for k, v in tags if keeps(k)}

    @classmethod
    def from_options(
        cls, filter_file: str | Path | None = None, drop: Iterable[str] = (), keep: Iterable[str] = ()
    ) -> TagFilter:
        """The filter the CLI options describe: a file replaces the defaults; ``drop`` and
        ``keep`` patterns are added on top."""
        base = list(DEFAULT_DROP_PATTERNS)
        if filter_file is not None:
            base = read_filter_file(filter_file)
        return cls([*base, *drop, *("!" + k for k in keep)])

    def describe(self) -> list[str]:
        return list(self.patterns)


def read_filter_file(path: str | Path) -> list[str]:
    text = read_text(path, "tag filter file")
    patterns = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            patterns.append(line)
    return patterns


def _compile(patterns: list[str]) -> re.Pattern | None:
    if not patterns:
        return None
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns), re.IGNORECASE)
