"""Space files: which config keys a sweep varies, and over what values.

A space file maps config keys, spelled exactly as ``sentex fit`` takes them on the command line,
to either a list of values or a numeric range::

    model.init_args.lora_r: [8, 16, 32]                                      # a list: grid / categorical
    model.init_args.lora_target_modules: [[query, value], [query, key, value, dense]]
    model.init_args.learning_rate: {low: 1e-5, high: 1e-3, log: true}        # a range: TPE
    trainer.max_epochs: {low: 1, high: 4}                                    # integer bounds: an int range

When every entry is a list the sweep is a grid (every combination once); any range makes it a TPE
search. Everything here is pure: reading, checking (every problem at once, one line each) and
turning a trial's values into command-line overrides. Whether the keys exist in the recipe is
checked by :mod:`sentex.sweep.recipe`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from sentex.errors import SentexError

# What Optuna stores as a categorical choice; anything else (lists, mappings) goes in as its YAML text.
Primitive = None | bool | int | float | str
RANGE_FIELDS = ("low", "high", "log", "step")


class SpaceError(SentexError):
    """A space file that cannot be used; the message has one line per problem, each naming the file and key."""

    def __init__(self, name: str, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        lines = [f"{name}: {p}" for p in self.problems]
        head = [] if len(lines) == 1 else [f"{name}: {len(lines)} problems in the space file"]
        super().__init__("\n".join(head + lines))


class SpaceLoader(yaml.SafeLoader):
    """PyYAML's safe loader, reading ``1e-5`` as a float.

    YAML 1.1 (PyYAML) wants a dot in a float (``1.0e-5``) and reads ``1e-5`` as a string; the
    sentex parser (jsonargparse) reads it as a float, so a space file must too.
    """


SpaceLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d[\d_]*)?(?:\.\d*)?[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def cli_text(value: Any) -> str:
    """A value as ``sentex fit`` reads it after ``--key=``: one line of flow-style YAML.

    >>> cli_text(8), cli_text(["query", "value"]), cli_text(0.0005), cli_text(None), cli_text("8")
    ('8', '[query, value]', '0.0005', 'null', "'8'")
    """
    # A one-element flow list, brackets removed: a bare scalar would get YAML's "..." end marker.
    return yaml.safe_dump([value], default_flow_style=True, width=math.inf).strip()[1:-1]


def choice_label(value: Any) -> Primitive:
    """What Optuna stores for a list entry: the value itself, or its YAML text when it is not a scalar.

    >>> choice_label(16), choice_label(["query", "value"])
    (16, '[query, value]')
    """
    return value if value is None or isinstance(value, (bool, int, float, str)) else cli_text(value)


@dataclass(frozen=True)
class Param:
    """One entry of a space file.

    Attributes:
        key: the dotted config key (``model.init_args.lora_r``).
        choices: the values of a list entry; ``None`` for a range.
        low: a range's lower bound.
        high: a range's upper bound.
        log: sample a range on a log scale.
        step: a range's step (``None``: continuous, or 1 for an int range).
    """

    key: str
    choices: tuple[Any, ...] | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None

    @property
    def is_range(self) -> bool:
        return self.choices is None

    @property
    def is_int(self) -> bool:
        """A range with integer bounds (sampled with ``suggest_int``)."""
        return self.is_range and isinstance(self.low, int) and isinstance(self.high, int)

    @property
    def labels(self) -> list[Primitive]:
        """The choices as Optuna stores them (see :func:`choice_label`)."""
        return [choice_label(v) for v in self.choices or ()]

    def value_of(self, label: Any) -> Any:
        """The config value of what Optuna suggested (a choice's label, or a number of the range)."""
        return self.choices[self.labels.index(label)] if self.choices is not None else label

    def spec(self) -> dict[str, Any]:
        """A JSON-able description, stored with the study so a resumed sweep can check it is the same space."""
        if self.choices is not None:
            return {"key": self.key, "choices": self.labels}
        return {"key": self.key, "low": self.low, "high": self.high, "log": self.log, "step": self.step}


@dataclass(frozen=True)
class Space:
    """A checked space file.

    Attributes:
        name: the file's name, for messages.
        params: its usable entries, in file order.
        keys: every config key of the file, in file order.
        problems: ``(key, "key: problem")`` for the entries that are not usable (only when read with
            ``strict=False``, so that the recipe check can report them together with its own).
    """

    name: str
    params: tuple[Param, ...]
    keys: tuple[str, ...] = ()
    problems: tuple[tuple[str, str], ...] = ()

    @property
    def is_grid(self) -> bool:
        """Every entry is a list: sample the full grid (Optuna's ``GridSampler``)."""
        return all(not p.is_range for p in self.params)

    @property
    def grid_size(self) -> int:
        """The number of combinations of a grid (``math.prod`` of the list lengths)."""
        return math.prod(len(p.choices or ()) for p in self.params)

    def grid(self) -> dict[str, list[Primitive]]:
        """The ``GridSampler`` search space: key -> labels."""
        return {p.key: p.labels for p in self.params}

    def spec(self) -> list[dict[str, Any]]:
        return [p.spec() for p in self.params]

    def values(self, suggested: Mapping[str, Any]) -> dict[str, Any]:
        """Config values (key -> value) of a trial's suggested parameters."""
        return {p.key: p.value_of(suggested[p.key]) for p in self.params if p.key in suggested}


def override_args(values: Mapping[str, Any]) -> list[str]:
    """``sentex fit`` arguments that set ``values`` (key -> value).

    >>> override_args({"model.init_args.lora_r": 8, "model.init_args.lora_target_modules": ["query", "value"]})
    ['--model.init_args.lora_r=8', '--model.init_args.lora_target_modules=[query, value]']
    """
    return [f"--{key}={cli_text(value)}" for key, value in values.items()]


def as_number(value: Any) -> int | float | None:
    """An int or float bound as written (``None`` for anything else, booleans included).

    >>> as_number(3), as_number(1e-5), as_number("3"), as_number(True)
    (3, 1e-05, None, None)
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value if math.isfinite(value) else None


def range_problems(key: str, entry: Mapping[Any, Any]) -> list[str]:
    """What is wrong with a range entry (``{low, high[, log, step]}``); empty when it is usable.

    >>> range_problems("x", {"low": 1e-3, "high": 1e-5})
    ['x: low (0.001) must be below high (1e-05)']
    >>> range_problems("x", {"low": 0, "high": 1, "log": True})
    ['x: a log range needs low > 0, got 0']
    >>> range_problems("x", {"lo": 1, "high": 2})
    ["x: unknown field 'lo' (a range has low, high, log, step; write other keys dotted: a.b.c: [...])", 'x: no low']
    """
    problems = [
        f"{key}: unknown field {field!r} (a range has {', '.join(RANGE_FIELDS)}; write other keys dotted: a.b.c: [...])"
        for field in entry
        if field not in RANGE_FIELDS
    ]
    bounds = {}
    for field in ("low", "high"):
        if field not in entry:
            problems.append(f"{key}: no {field}")
        elif (bounds.setdefault(field, as_number(entry[field]))) is None:
            problems.append(f"{key}: {field} must be a number, got {entry[field]!r}")
    low, high = bounds.get("low"), bounds.get("high")
    log, step = entry.get("log", False), entry.get("step")
    if not isinstance(log, bool):
        problems.append(f"{key}: log must be true or false, got {log!r}")
    if low is not None and high is not None and not low < high:
        problems.append(f"{key}: low ({low}) must be below high ({high})")
    if log is True and low is not None and low <= 0:
        problems.append(f"{key}: a log range needs low > 0, got {low}")
    if step is not None:
        if as_number(step) is None or step <= 0:
            problems.append(f"{key}: step must be a number above 0, got {step!r}")
        elif log is True:
            problems.append(f"{key}: step and log cannot be combined (Optuna samples one or the other)")
        elif isinstance(low, int) and isinstance(high, int) and not isinstance(step, int):
            problems.append(f"{key}: an integer range needs an integer step, got {step!r}")
    return problems


def list_problems(key: str, entry: list[Any]) -> list[str]:
    """What is wrong with a list entry; empty when it is usable.

    >>> list_problems("x", []), list_problems("x", [8, 16, 8])
    (['x: empty list (give at least one value)'], ['x: 8 is listed twice'])
    """
    if not entry:
        return [f"{key}: empty list (give at least one value)"]
    seen: set[str] = set()
    problems = []
    for value in entry:
        text = cli_text(value)
        if text in seen:
            problems.append(f"{key}: {text} is listed twice")
        seen.add(text)
    return problems


def is_config_key(key: Any) -> bool:
    """A dotted name as the command line takes it.

    >>> is_config_key("model.init_args.lora_r"), is_config_key("model init"), is_config_key(3)
    (True, False, False)
    """
    return isinstance(key, str) and re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", key) is not None


def parse_space(data: Any, name: str, strict: bool = True) -> Space:
    """Check a loaded space file and turn it into a :class:`Space`.

    Args:
        data: the file's YAML contents.
        name: the file's name, for messages.
        strict: raise on any problem; with ``False`` the problems of single entries are returned in
            :attr:`Space.problems` instead.

    Raises:
        SpaceError: listing every problem found.

    >>> space = parse_space({"model.init_args.lora_r": [8, 16], "data.batch_size": [16, 32]}, "s.yaml")
    >>> space.is_grid, space.grid_size
    (True, 4)
    >>> parse_space({"a": [], "b": {"low": 2, "high": 1}, "c": 3}, "s.yaml")
    Traceback (most recent call last):
    ...
    sentex.sweep.space.SpaceError: s.yaml: 3 problems in the space file
    s.yaml: a: empty list (give at least one value)
    s.yaml: b: low (2) must be below high (1)
    s.yaml: c: must be a list of values or a range {low, high, log, step}, got 3
    """
    if not isinstance(data, Mapping) or not data:
        raise SpaceError(name, ["expected a mapping of config keys to value lists or ranges (key: [a, b])"])
    problems: list[tuple[str, str]] = []
    params = []
    for key, entry in data.items():
        if not is_config_key(key):
            found = [f"{key!r}: not a config key (dotted names, e.g. model.init_args.lora_r)"]
        elif isinstance(entry, list):
            found = list_problems(key, entry)
            if not found:
                params.append(Param(key, choices=tuple(entry)))
        elif isinstance(entry, Mapping):
            found = range_problems(key, entry)
            if not found:
                low, high, step = entry["low"], entry["high"], entry.get("step")
                params.append(Param(key, low=low, high=high, log=entry.get("log", False), step=step))
        else:
            found = [f"{key}: must be a list of values or a range {{{', '.join(RANGE_FIELDS)}}}, got {entry!r}"]
        problems += [(str(key), problem) for problem in found]
    if strict and problems:
        raise SpaceError(name, [problem for _, problem in problems])
    keys = tuple(k for k in data if isinstance(k, str))
    return Space(name, tuple(params), keys, () if strict else tuple(problems))


def read_space(path: str | Path, strict: bool = True) -> Space:
    """Read and check a space file (see :func:`parse_space`).

    Raises:
        SpaceError: a missing or unreadable file, bad YAML, or bad entries.
    """
    path = Path(path)
    if not path.is_file():
        raise SpaceError(str(path), ["file not found" if not path.exists() else "not a file"])
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=SpaceLoader)
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise SpaceError(str(path), [f"not valid YAML{where}: {getattr(err, 'problem', None) or err}"]) from None
    return parse_space(data, str(path), strict)


def short_names(keys: Sequence[str]) -> dict[str, str]:
    """The shortest unambiguous tails of dotted keys, for table headers and plot titles.

    >>> short_names(["model.init_args.lora_r", "data.batch_size"])
    {'model.init_args.lora_r': 'lora_r', 'data.batch_size': 'batch_size'}
    >>> short_names(["model.init_args.x", "data.x"])
    {'model.init_args.x': 'init_args.x', 'data.x': 'data.x'}
    """
    depth = max((k.count(".") + 1 for k in keys), default=1)
    for n in range(1, depth + 1):
        names = {k: ".".join(k.split(".")[-n:]) for k in keys}
        if len(set(names.values())) == len(names):
            return names
    return {k: k for k in keys}
