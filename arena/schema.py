"""YAML text -> typed values: the reader of config files and command-line values, and
the check of each value against its dataclass field's annotation.

Everything a field allows is in its annotation, so no other place restates it:
`Literal["no", "bf16", "fp16"]` lists the choices; `Annotated[int, Range(1)]` bounds a
number; `Annotated[list[float], Length(2)]` fixes a list's length. Plain YAML scalars and
command-line values stay text (`Text`, `Arg`) until the field's type reads them.

The reader bounds its work whatever the file holds: its size, its nesting, and the
number of values it expands to through aliases (`&a` / `*a`), which a few lines can
make exponential; an alias that contains itself is refused.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import yaml

from .registry import ConfigError, suggest

MAX_CHARS = 1_000_000  # a config or grid file is a few hundred lines
MAX_DEPTH = 32  # nesting of mappings and lists, aliases expanded (configs use 4)
MAX_VALUES = 100_000  # values after expanding aliases
INT64 = 2**63  # every integer field fits a 64-bit signed integer (torch's and numpy's)


@dataclass(frozen=True)
class Range:
    """Bounds of a number field: `Annotated[int, Range(1)]` is an integer >= 1."""

    low: float | None = None
    high: float | None = None
    open_low: bool = False  # > low instead of >= low
    open_high: bool = False  # < high instead of <= high
    note: str = ""  # what the bounds mean, appended to the message

    def check(self, value: float, key: str) -> None:
        below = self.low is not None and (value <= self.low if self.open_low else value < self.low)
        above = self.high is not None and (value >= self.high if self.open_high else value > self.high)
        if below or above:
            raise ConfigError(f"{key}: must be {self.describe()}{f' ({self.note})' if self.note else ''}, "
                              f"got {value}")

    def describe(self) -> str:
        if self.high is None:
            return f"{'>' if self.open_low else '>='} {self.low}"
        if self.low is None:
            return f"{'<' if self.open_high else '<='} {self.high}"
        return f"in {'(' if self.open_low else '['}{self.low}, {self.high}{')' if self.open_high else ']'}"


@dataclass(frozen=True)
class Length:
    """The number of items of a list field: `Annotated[list[float], Length(2, "beta1, beta2")]`."""

    n: int
    names: str = ""

    def check(self, value: list, key: str) -> None:
        if len(value) != self.n:
            names = f" ({self.names})" if self.names else ""
            raise ConfigError(f"{key}: expected {self.n} values{names}, got {len(value)}: {value}")


# The bounds used across the config sections and the objectives' options.
Count = Annotated[int, Range(1)]  # sizes, steps, repeats: at least one
NonNegativeInt = Annotated[int, Range(0)]
NonNegative = Annotated[float, Range(0)]  # weights, norms: 0 = off
Positive = Annotated[float, Range(0, open_low=True)]  # learning rates, scales
Fraction = Annotated[float, Range(0, 1, open_high=True)]  # decays, betas, dropout: [0, 1)
# A run's base seed: the seeds derived from it (arena.seeds, x 10^6) stay within torch's 64 bits.
Seed = Annotated[int, Range(0, 2**32 - 1)]


class Text(str):
    """A plain (unquoted) YAML scalar as written. The schema, not YAML 1.1's guess,
    decides what it is: `no` stays a string in a string field and `1e-3` is a number
    in a float field (YAML 1.1 reads them as false and as a string)."""


class Arg(Text):
    """A command-line value: the text itself for a string field (`run.dir=/tmp/x #1`
    keeps `#1`: a shell argument is not YAML); quoted whole, the text inside the quotes
    (`train.mixed_precision='no'` is `no`, `"C:\\new"` keeps its backslash), YAML flow syntax for a list, mapping or
    section (`optim.betas=[0.5, 0.9]`)."""


class _Loader(yaml.SafeLoader):
    """safe_load, except that plain scalars stay Text for the schema to type, and the
    nesting is bounded while the document is composed (the composer recurses)."""

    def __init__(self, stream):
        super().__init__(stream)
        self.depth = 0

    def compose_node(self, parent, index):
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                raise _TooBig(f"nested deeper than {MAX_DEPTH} levels")
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_object(self, node, deep=False):
        if (isinstance(node, yaml.ScalarNode) and node.style is None
                and node.tag == self.resolve(yaml.ScalarNode, node.value, (True, False))):
            return Text(node.value)  # an implicit tag: YAML guessed; an explicit !!tag is kept
        return super().construct_object(node, deep)


class _TypedLoader(_Loader):
    """The same bounds, scalars typed by YAML itself: for files without a schema (grids)."""

    def construct_object(self, node, deep=False):
        return yaml.SafeLoader.construct_object(self, node, deep)


class _TooBig(Exception):
    pass


def _expanded_size(root: yaml.Node) -> None:
    """Raise _TooBig when the document, aliases expanded, holds more than MAX_VALUES
    values or nests deeper than MAX_DEPTH, or when an alias contains itself. Each node is
    measured once (an alias is the node it names): the work is linear in the file."""
    size: dict[int, tuple[int, int]] = {}  # id(node) -> (values, depth), aliases expanded
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    open_nodes: set[int] = set()
    while stack:
        node, done = stack.pop()
        if isinstance(node, yaml.ScalarNode):
            size[id(node)] = (1, 1)
            continue
        children = [c for pair in node.value for c in pair] if isinstance(node, yaml.MappingNode) else node.value
        if done:
            open_nodes.discard(id(node))
            values = 1 + sum(size[id(c)][0] for c in children)
            depth = 1 + max((size[id(c)][1] for c in children), default=0)
            if values > MAX_VALUES:
                raise _TooBig(f"more than {MAX_VALUES} values once its aliases are expanded")
            if depth > MAX_DEPTH:
                raise _TooBig(f"nested deeper than {MAX_DEPTH} levels once its aliases are expanded")
            size[id(node)] = (values, depth)
            continue
        if id(node) in size:
            continue
        if id(node) in open_nodes:
            raise _TooBig("an alias refers to a mapping or list that contains it")
        open_nodes.add(id(node))
        stack.append((node, True))
        for child in children:
            if id(child) in open_nodes:
                raise _TooBig("an alias refers to a mapping or list that contains it")
            if id(child) not in size:
                stack.append((child, False))


def _read(text: str, loader_cls: type = _Loader) -> Any:
    """YAML text -> plain values (scalars as Text); raises _TooBig or yaml.YAMLError."""
    if len(text) > MAX_CHARS:
        raise _TooBig(f"{len(text)} characters; a config holds at most {MAX_CHARS}")
    loader = loader_cls(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded_size(node)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def read_yaml_text(text: str, where: str, typed: bool = False) -> Any:
    """YAML text -> plain values (scalars as Text, or typed by YAML itself for a file with
    no schema such as a grid), within the bounds above; any problem is a ConfigError that
    starts with `where` (a file's name)."""
    try:
        return _read(text, _TypedLoader if typed else _Loader)
    except _TooBig as err:
        raise ConfigError(f"{where}: {err}") from None
    except yaml.YAMLError as err:  # one line: where, and what the parser met
        mark = getattr(err, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{where}: not valid YAML{at}: {problem}") from None


NULLS = ("", "~", "null", "Null", "NULL")
TRUE = ("true", "True", "TRUE", "yes", "Yes", "YES", "on", "On", "ON")
FALSE = ("false", "False", "FALSE", "no", "No", "NO", "off", "Off", "OFF")


def parse_arg(value: Any, key: str) -> Any:
    """A command-line value read as YAML (flow syntax); anything else as it is."""
    if not isinstance(value, Arg):
        return value
    try:
        return _read(value)
    except (_TooBig, yaml.YAMLError) as err:
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{key}: cannot read {str(value)!r}: {problem}") from None


def is_null(value: Any) -> bool:
    return value is None or (isinstance(value, Text) and value in NULLS)


def _guess(value: Any) -> Any:
    """YAML's own reading of Text, for fields typed Any (the counts in train.phases)."""
    if isinstance(value, Text):
        return yaml.safe_load(value)
    if isinstance(value, dict):
        return {str(k): _guess(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_guess(v) for v in value]
    return value


def _number(value: Any, kind: type, key: str) -> Any:
    """An int, or a float (an int is a float too); Text is read by Python, then YAML (0x1F, .inf)."""
    number = None
    accepted = (int, float) if kind is float else int
    if isinstance(value, Text):
        try:
            number = kind(value)
        except ValueError:
            try:
                guessed = yaml.safe_load(value)
            except yaml.YAMLError:
                guessed = None
            if isinstance(guessed, accepted) and not isinstance(guessed, bool):
                number = kind(guessed)
    elif isinstance(value, accepted) and not isinstance(value, bool):
        number = kind(value)
    if number is None:
        raise ConfigError(f"{key}: expected {'an integer' if kind is int else 'a number'}, got {show(value)}")
    if kind is float and not math.isfinite(number):
        raise ConfigError(f"{key}: expected a finite number, got {show(value)}")
    if kind is int and not -INT64 <= number < INT64:
        raise ConfigError(f"{key}: {number} does not fit a 64-bit integer")
    return number


def show(value: Any) -> str:
    return repr(str(value)) if isinstance(value, Text) else repr(value)


def type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def choices(tp: Any) -> tuple:
    """The values a Literal annotation allows (looking through Annotated and `| None`)."""
    origin = typing.get_origin(tp)
    if origin is Annotated:
        return choices(typing.get_args(tp)[0])
    if origin in (typing.Union, types.UnionType):
        return tuple(c for arg in typing.get_args(tp) for c in choices(arg))
    return typing.get_args(tp) if origin is Literal else ()


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`; return it converted to that type."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return _guess(parse_arg(value, key))
    if origin is Annotated:
        base, *rules = typing.get_args(tp)
        value = coerce(value, base, key)
        for rule in rules:
            rule.check(value, key)
        return value
    if origin is Literal:
        allowed = typing.get_args(tp)
        text = coerce(value, str, key)
        if text not in allowed:
            raise ConfigError(f"{key}: unknown value '{text}'{suggest(text, allowed)}; "
                              f"valid choices: {', '.join(allowed)}")
        return text
    if origin in (typing.Union, types.UnionType):
        return _coerce_union(value, tp, key)
    if dataclasses.is_dataclass(tp):
        return build_dataclass(tp, value, key)
    if origin is list:
        (item,) = typing.get_args(tp) or (Any,)
        value = parse_arg(value, key)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {show(value)}")
        return [coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        _, vtp = typing.get_args(tp) or (str, Any)
        value = parse_arg(value, key)
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {show(value)}")
        return {str(k): coerce(v, vtp, f"{key}.{k}") for k, v in value.items()}
    return _coerce_scalar(value, tp, key)


def _coerce_union(value: Any, tp: Any, key: str) -> Any:
    args = typing.get_args(tp)
    if type(None) in args and is_null(value):
        return None
    options = [arg for arg in args if arg is not type(None)]
    if len(options) == 1:  # X | None: X's own message says more
        return coerce(value, options[0], key)
    for arg in options:
        try:
            return coerce(value, arg, key)
        except ConfigError:
            pass
    raise ConfigError(f"{key}: expected {type_name(tp)}, got {show(value)}")


def _coerce_scalar(value: Any, tp: Any, key: str) -> Any:
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, Text) and value in TRUE + FALSE:
            return value in TRUE
        raise ConfigError(f"{key}: expected true or false, got {show(value)}")
    if tp in (int, float):
        return _number(value, tp, key)
    if tp is str:
        if isinstance(value, Arg) and len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"" \
                and value[0] not in value[1:-1]:
            value = value[1:-1]  # quoted whole (as a script may write it): the text inside, taken literally
        if isinstance(value, str):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {show(value)}")
    raise TypeError(f"{key}: unsupported annotation {tp!r}")


def field_types(cls: type) -> dict[str, Any]:
    """A dataclass's field annotations, Annotated rules kept."""
    return typing.get_type_hints(cls, include_extras=True)


def _field_default(cls: type, name: str) -> Any:
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None if f.default is dataclasses.MISSING else f.default


def build_dataclass(cls: type, values: Any, key: str, base: Any = None) -> Any:
    """Instantiate `cls` from a mapping over `base` (an instance; None: the field
    defaults); unknown keys and wrong types raise ConfigError. A nested dataclass field
    is built over its own default, so `objective.prior.hidden: [16]` keeps the rest of
    the prior that the objective declares (DIM's is not PriorConfig's)."""
    values = parse_arg(values, key)
    if is_null(values):
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f"{key}: expected a mapping of {cls.__name__} fields (on the command line "
                          f"{key}.field=value), got {show(values)}")
    hints = field_types(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for k, v in values.items():
        k = str(k)
        if k not in names:
            raise ConfigError(
                f"{key}.{k}: unknown key{suggest(k, names)}; valid keys: {', '.join(names)}"
            )
        default = _field_default(cls, k) if base is None else getattr(base, k)
        if dataclasses.is_dataclass(hints[k]) and dataclasses.is_dataclass(default):
            kwargs[k] = build_dataclass(hints[k], v, f"{key}.{k}", base=default)
        else:
            kwargs[k] = coerce(v, hints[k], f"{key}.{k}")
    return cls(**kwargs) if base is None else dataclasses.replace(base, **kwargs)
