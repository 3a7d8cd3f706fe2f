"""The task language: a TOML file that says which tags define a tile's label and how.

    name = "car_bridge"
    rule = "any"                      # count | any | max
    match = [{ bridge = "*", highway = ["primary", "residential"] }]
    unless = { bridge = ["no"] }
    mask = ["bridge", "bridge:*", "layer"]
    keep_zero = 0.1
    clamp = [0, 1]

An entity *matches* when it satisfies one of the ``match`` tables (every key in the table
must be present with an allowed value: ``"*"`` any value, a string that value, a list any
of them) and no ``unless`` entry (key → values, or ``"*"``). ``kinds`` optionally limits
matching to entity kinds (point, line, polygon, multipolygon, relation).

Rules: ``count`` = the number of matching entities; ``any`` = 1 if there is one, else 0;
``max`` = the largest number parsed from tag ``value.key`` of the matching entities
(``value.parse``: ``number`` or ``speed``, km/h from ``50``, ``30 mph``, ``DE:urban``…).
For ``max``, a tile with no matching entity gets ``missing`` (or is dropped when ``missing``
is absent), and one whose matching entities have no readable value is dropped when
``drop_unparsed`` (default true).

``mask`` lists the tags removed from the inputs of the masked variant: ``key`` or ``key=value``,
each side a shell glob (``bridge:*``). ``keep_zero`` is the probability of keeping a
tile whose label is 0 (seeded). ``clamp = [low, high]`` bounds labels and predictions.
"""

from __future__ import annotations

import fnmatch
import math
import re
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from gjp.errors import GjpError
from gjp.io import read_text
from gjp.kinds import KINDS

RULES = ("count", "any", "max")
PARSERS = ("number", "speed")
BUILTIN = ("traffic_signals", "bridge", "car_bridge", "building_count", "max_speed")
_FIELDS = {"name", "description", "rule", "match", "unless", "kinds", "value", "missing", "drop_unparsed",
           "mask", "keep_zero", "clamp"}


@dataclass(frozen=True)
class TaskSpec:
    name: str
    rule: str
    match: tuple[dict[str, tuple[str, ...] | None], ...]   # None = any value
    unless: dict[str, tuple[str, ...] | None] = field(default_factory=dict)
    kinds: tuple[str, ...] | None = None
    value_key: str | None = None
    value_parse: str = "number"
    missing: float | None = None
    drop_unparsed: bool = True
    mask: tuple[str, ...] = ()
    keep_zero: float = 1.0
    clamp: tuple[float, float] = (-math.inf, math.inf)
    description: str = ""
    source: str = ""   # the TOML text, kept with the task's outputs

    def masks(self, key: str, value: str) -> bool:
        """Whether the masked variant removes the tag ``key=value``."""
        for pattern in self.mask:
            k, _, v = pattern.partition("=")
            if fnmatch.fnmatchcase(key, k) and (not _ or fnmatch.fnmatchcase(value, v)):
                return True
        return False


def load_spec(name_or_path: str) -> TaskSpec:
    """A built-in task by name, or a spec file (``.toml``)."""
    path = Path(name_or_path)
    if name_or_path in BUILTIN:
        text = resources.files("gjp.tasks.builtin").joinpath(f"{name_or_path}.toml").read_text(encoding="utf-8")
        where = f"built-in task {name_or_path}"
    elif path.suffix == ".toml" or path.exists():
        text = read_text(path, "task spec")
        where = str(path)
    else:
        raise GjpError(f"unknown task {name_or_path!r}: built-in tasks are {', '.join(BUILTIN)}; "
                       "or give a spec file with --spec FILE.toml")
    return parse_spec(text, where)


def parse_spec(text: str, where: str = "<spec>") -> TaskSpec:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise GjpError(f"{where}: not valid TOML ({err})") from err

    def bad(message: str):
        return GjpError(f"{where}: {message}")

    unknown = set(raw) - _FIELDS
    if unknown:
        raise bad(f"unknown field {', '.join(sorted(unknown))} (fields: {', '.join(sorted(_FIELDS))})")
    name = raw.get("name")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise bad("'name' must be a word (letters, digits, _ . -)")
    rule = raw.get("rule")
    if rule not in RULES:
        raise bad(f"unknown rule {rule!r}: choose one of {', '.join(RULES)}")
    match = raw.get("match")
    if isinstance(match, dict):
        match = [match]
    if not isinstance(match, list) or not match or not all(isinstance(m, dict) and m for m in match):
        raise bad("'match' must be a list of tables of tag conditions, e.g. [{ highway = \"traffic_signals\" }]")
    kinds = raw.get("kinds")
    if kinds is not None and (not isinstance(kinds, list) or set(kinds) - set(KINDS)):
        raise bad(f"'kinds' must list kinds among {', '.join(KINDS)}")
    value = raw.get("value")
    value_key, value_parse = None, "number"
    if rule == "max":
        if not isinstance(value, dict) or not isinstance(value.get("key"), str):
            raise bad("rule 'max' needs value = { key = \"…\", parse = \"number\" | \"speed\" }")
        value_key, value_parse = value["key"], value.get("parse", "number")
        if value_parse not in PARSERS:
            raise bad(f"unknown value parser {value_parse!r}: choose one of {', '.join(PARSERS)}")
    elif value is not None:
        raise bad(f"'value' only applies to rule 'max', not {rule!r}")
    mask = raw.get("mask", [])
    if not isinstance(mask, list) or not all(isinstance(m, str) and m for m in mask):
        raise bad("'mask' must be a list of tag patterns like \"bridge:*\" or \"highway=traffic_signals\"")
    keep_zero = raw.get("keep_zero", 1.0)
    if not isinstance(keep_zero, (int, float)) or not 0 <= keep_zero <= 1:
        raise bad("'keep_zero' must be a probability between 0 and 1")
    clamp = raw.get("clamp", [-math.inf, math.inf])
    if (not isinstance(clamp, list) or len(clamp) != 2 or not all(isinstance(c, (int, float)) for c in clamp)
            or clamp[0] > clamp[1]):
        raise bad("'clamp' must be [low, high] with low ≤ high")
    missing = raw.get("missing")
    if missing is not None and not isinstance(missing, (int, float)):
        raise bad("'missing' must be a number")
    return TaskSpec(
        name=name, rule=rule, match=tuple(_conditions(m, bad) for m in match),
        unless=_conditions(raw.get("unless", {}), bad), kinds=tuple(kinds) if kinds else None,
        value_key=value_key, value_parse=value_parse, missing=missing,
        drop_unparsed=bool(raw.get("drop_unparsed", True)), mask=tuple(mask), keep_zero=float(keep_zero),
        clamp=(float(clamp[0]), float(clamp[1])), description=str(raw.get("description", "")), source=text)


def _conditions(table, bad) -> dict[str, tuple[str, ...] | None]:
    if not isinstance(table, dict):
        raise bad("tag conditions must be tables, e.g. { bridge = \"*\" }")
    out = {}
    for key, allowed in table.items():
        if allowed == "*":
            out[key] = None
        elif isinstance(allowed, str):
            out[key] = (allowed,)
        elif isinstance(allowed, list) and allowed and all(isinstance(v, str) for v in allowed):
            out[key] = tuple(allowed)
        else:
            raise bad(f"condition on {key!r} must be \"*\", a value or a list of values")
    return out
