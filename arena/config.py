"""YAML -> typed dataclasses, strict.

A config has fixed sections (run, data, train, optim, eval) and two sections whose
fields belong to the chosen objective (model, objective): the objective registered
under `objective.name` declares their dataclasses, so `model.widht: 4` fails with
"did you mean 'width'" just like a typo in `train`. A file may name others under
`base:` (a name or a list); bases apply in order, then the file's own keys (see
`resolve`). Plain YAML scalars and command-line values stay text until the field's
type reads them (`Text`, `Arg`).

    cfg = load_config("ie_digits", ["train.steps=200"])
"""
from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .data import DataConfig
from .registry import ConfigError, suggest

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


@dataclass
class RunConfig:
    dir: str = ""  # "" -> runs/<config name>
    seed: int = 0
    # "" (start fresh), "latest", "auto" (latest when run.dir holds a checkpoint, else fresh:
    # a requeued job reruns the same command), or a checkpoint directory
    resume: str = ""


@dataclass
class PlayerOptim:
    """Per-player overrides of the optimizer defaults (None = inherit)."""

    lr: float | None = None
    betas: list[float] | None = None
    weight_decay: float | None = None
    clip_norm: float | None = None


@dataclass
class OptimConfig:
    name: str = "adam"  # adam | adamw | sgd
    lr: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.5, 0.999])
    weight_decay: float = 0.0
    clip_norm: float = 0.0  # 0 = no gradient clipping
    schedule: str = "constant"  # constant | linear (to 0 at train.steps)
    players: dict[str, PlayerOptim] = field(default_factory=dict)


@dataclass
class TrainConfig:
    steps: int = 1000  # updates of the main player (G for GANs, the encoder for DIM)
    batch_size: int = 64  # global: split evenly over processes
    phases: list[list[Any]] | None = None  # [[phase, repeats], ...]; None = the objective's default
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    sample_every: int = 500
    log_every: int = 50
    num_samples: int = 64  # images in a training sample grid
    mixed_precision: str = "no"  # no | bf16 | fp16
    # auto | on | off: fused optimizers, channels_last nets and batches. auto = on CUDA only;
    # on = on any device (the CPU runs them too: the tests exercise the GPU's code there)
    gpu_paths: str = "auto"
    ema: dict[str, float] | None = None  # player -> decay; None = the objective's default, {} = off
    progress: bool = True


@dataclass
class EvalConfig:
    every: int = 0  # 0 = no metrics during training
    metrics: list[str] = field(default_factory=lambda: ["fid", "isc", "kid"])
    num_samples: int = 5000  # during training; the eval.fid_is CLI defaults to 50000
    features: str = "auto"  # auto | inception | extractor name | weights path
    inception_weights: str = ""  # local copy of torch-fidelity's Inception weights


@dataclass
class Config:
    run: RunConfig
    data: DataConfig
    model: Any  # the objective's Model dataclass
    objective: Any  # the objective's Options dataclass (has `name`)
    optim: OptimConfig
    train: TrainConfig
    eval: EvalConfig
    name: str = "config"  # the config's file stem; names the default run dir

    def to_dict(self) -> dict:
        # `name` is where the config came from, not a setting: it is not written out.
        return {f.name: _to_plain(getattr(self, f.name)) for f in dataclasses.fields(self) if f.name != "name"}

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


SECTIONS = {
    "run": RunConfig,
    "data": DataConfig,
    "optim": OptimConfig,
    "train": TrainConfig,
    "eval": EvalConfig,
}


def _to_plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {f.name: _to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    return value


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


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
    """safe_load, except that plain scalars stay Text for the schema to type."""

    def construct_object(self, node, deep=False):
        if (isinstance(node, yaml.ScalarNode) and node.style is None
                and node.tag == self.resolve(yaml.ScalarNode, node.value, (True, False))):
            return Text(node.value)  # an implicit tag: YAML guessed; an explicit !!tag is kept
        return super().construct_object(node, deep)


NULLS = ("", "~", "null", "Null", "NULL")
TRUE = ("true", "True", "TRUE", "yes", "Yes", "YES", "on", "On", "ON")
FALSE = ("false", "False", "FALSE", "no", "No", "NO", "off", "Off", "OFF")


def _parse_arg(value: Any, key: str) -> Any:
    """A command-line value read as YAML (flow syntax); anything else as it is."""
    if not isinstance(value, Arg):
        return value
    try:
        return yaml.load(value, Loader=_Loader)
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{key}: cannot read {str(value)!r}: {problem}") from None


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
    if isinstance(value, Text):
        try:
            number = kind(value)
        except ValueError:
            try:
                guessed = yaml.safe_load(value)
            except yaml.YAMLError:
                guessed = None
            if isinstance(guessed, (int, float) if kind is float else int) and not isinstance(guessed, bool):
                number = kind(guessed)
    elif isinstance(value, (int, float) if kind is float else int) and not isinstance(value, bool):
        number = kind(value)
    if number is None:
        raise ConfigError(f"{key}: expected {'an integer' if kind is int else 'a number'}, got {_show(value)}")
    if kind is float and not math.isfinite(number):
        raise ConfigError(f"{key}: expected a finite number, got {_show(value)}")
    return number


def _show(value: Any) -> str:
    return repr(str(value)) if isinstance(value, Text) else repr(value)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`; return it converted to that type."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return _guess(_parse_arg(value, key))
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if type(None) in args and (value is None or (isinstance(value, Text) and value in NULLS)):
            return None
        options = [arg for arg in args if arg is not type(None)]
        if len(options) == 1:  # X | None: X's own message says more
            return _coerce(value, options[0], key)
        for arg in options:
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                pass
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {_show(value)}")
    if dataclasses.is_dataclass(tp):
        return build_dataclass(tp, value, key)
    if origin is list:
        (item,) = typing.get_args(tp) or (Any,)
        value = _parse_arg(value, key)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {_show(value)}")
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        ktp, vtp = typing.get_args(tp) or (str, Any)
        value = _parse_arg(value, key)
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {_show(value)}")
        return {str(k): _coerce(v, vtp, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, Text) and value in TRUE + FALSE:
            return value in TRUE
        raise ConfigError(f"{key}: expected true or false, got {_show(value)}")
    if tp in (int, float):
        return _number(value, tp, key)
    if tp is str:
        if isinstance(value, Arg) and len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"" \
                and value[0] not in value[1:-1]:
            value = value[1:-1]  # quoted whole (as a script may write it): the text inside, taken literally
        if isinstance(value, str):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {_show(value)}")
    raise TypeError(f"{key}: unsupported annotation {tp!r}")


def build_dataclass(cls: type, values: Any, key: str) -> Any:
    """Instantiate `cls` from a mapping; unknown keys and wrong types raise ConfigError."""
    values = _parse_arg(values, key)
    if values is None or (isinstance(values, Text) and values in NULLS):
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f"{key}: expected a mapping of {cls.__name__} fields (on the command line "
                          f"{key}.field=value), got {_show(values)}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for k, v in values.items():
        k = str(k)
        if k not in names:
            raise ConfigError(
                f"{key}.{k}: unknown key{suggest(k, names)}; valid keys: {', '.join(names)}"
            )
        kwargs[k] = _coerce(v, hints[k], f"{key}.{k}")
    return cls(**kwargs)


def _stem(path: Path) -> str:
    return path.name[:-5] if path.name.endswith(".yaml") else path.name


def resolve_config_path(name: str, near: Path | None = None) -> Path:
    """A path to a YAML file, or a name looked up in configs/ (with or without .yaml).

    `near` is the folder of a file that names `name` as its base: a file there wins
    over configs/, so a config and its bases can live together anywhere.
    """
    path = Path(name)
    stem = _stem(path)
    folders = [near] if near is not None else [Path()]  # a base is relative to its file, --config to the cwd
    candidates = [c for f in folders for c in (f / path, f / path.parent / f"{stem}.yaml")]
    candidates += [CONFIG_DIR / path.parent / f"{stem}.yaml", CONFIG_DIR / f"{stem}.yaml"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    known = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
    tried = f"--config: no file '{name}'" if near is None else f"no {_label(near / path.parent / stem)}.yaml"
    raise ConfigError(f"{tried} and no configs/{stem}.yaml{suggest(stem, known)}; known configs: {', '.join(known)}")


def _label(path: Path) -> str:
    """How a file is named in messages and in --print-config: relative to the repo if inside."""
    try:
        return str(path.resolve().relative_to(CONFIG_DIR.parent))
    except ValueError:
        return str(path)


def _read_yaml(path: Path) -> dict:
    try:
        raw = yaml.load(path.read_text(), Loader=_Loader)
    except yaml.YAMLError as err:
        raise ConfigError(f"{_label(path)}: not valid YAML: {err}") from None
    except OSError as err:
        raise ConfigError(f"{_label(path)}: cannot read: {err.strerror}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        got = "a list" if isinstance(raw, list) else _show(raw)
        raise ConfigError(f"{_label(path)}: expected a mapping of sections (run:, data:, ...) at the top level, "
                          f"got {got}")
    return raw


def _linearize(path: Path, chain: tuple[Path, ...] = ()) -> list[tuple[Path, dict]]:
    """The files `path` inherits from, each once, every file after all of its bases.

    Depth-first, bases in the order listed, keeping each file's first appearance: with
    `base: [a, b]` where a and b share a base c, the order is c, a, b, file, so c's
    values cannot undo a's (a naive merge of the two resolved bases would).
    """
    path = path.resolve()
    if path in chain:
        loop = " -> ".join(_label(p) for p in (*chain[chain.index(path):], path))
        raise ConfigError(f"base: cycle {loop}")
    raw = _read_yaml(path)
    bases = raw.pop("base", [])
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) and b for b in bases):
        raise ConfigError(f"{_label(path)}: base: expected a config name or a list of names, got {bases!r}")
    order: list[tuple[Path, dict]] = []
    for name in bases:
        try:
            base_path = resolve_config_path(name, near=path.parent)
        except ConfigError as err:
            raise ConfigError(f"{_label(path)}: base '{name}': {err}") from None
        for item in _linearize(base_path, (*chain, path)):
            if all(item[0] != seen for seen, _ in order):
                order.append(item)
    return [*order, (path, raw)]


def _leaves(tree: dict, prefix: tuple = ()):
    """(key path, value) of every non-mapping value; an empty mapping is a value."""
    for k, v in tree.items():
        if isinstance(v, dict) and v:
            yield from _leaves(v, (*prefix, k))
        else:
            yield (*prefix, k), v


@dataclass
class Resolved:
    """A config file with its bases and overrides applied, before typing."""

    raw: dict
    name: str  # the file's stem
    chain: list[str]  # the files applied, first to last
    origins: dict[tuple, str]  # key path -> the file (or "command line") that set it


def resolve(name: str, overrides: list[str] | None = None) -> Resolved:
    """Apply a config's bases (deep merge of mappings; lists and scalars replaced) and
    the command-line overrides, remembering which file set each value."""
    path = resolve_config_path(name)
    layers = [(_label(p), raw) for p, raw in _linearize(path)]
    layers.append(("command line", parse_overrides(overrides or [])))
    raw: dict = {}
    origins: dict[tuple, str] = {}
    for label, layer in layers:
        raw = merge(raw, layer)
        for key, _ in _leaves(layer):
            # a value replaces whatever its key held before, mapping or not
            origins = {k: v for k, v in origins.items() if k[:len(key)] != key}
            origins[key] = label
    return Resolved(raw, path.stem, [label for label, _ in layers[:-1]], origins)


def parse_overrides(overrides: list[str]) -> dict:
    """['train.steps=200', 'data.name=cifar10'] -> nested dict of Arg texts, typed later
    by the schema (build_dataclass)."""
    tree: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}': expected key.sub=value")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"override '{item}': empty key part")
        node = tree
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{item}': '{part}' is set twice")
        node[parts[-1]] = Arg(raw)
    return tree


def merge(base: dict, extra: dict) -> dict:
    """`extra` over `base`: mappings merge key by key, anything else is replaced whole. An
    empty mapping is a value (`ema: {}` means no EMA), so it replaces too, as it does on
    the command line."""
    out = dict(base)
    for k, v in extra.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and v and isinstance(out.get(k), dict) else v
    return out


def config_from_dict(raw: dict, name: str = "config") -> Config:
    from .objective import OBJECTIVES  # the objective declares the model/objective sections

    if not isinstance(raw, dict):
        raise ConfigError(f"config '{name}': expected a mapping at the top level")
    valid = list(SECTIONS) + ["model", "objective"]
    for k in raw:
        if k not in valid:
            raise ConfigError(f"{k}: unknown section{suggest(k, valid)}; valid sections: {', '.join(valid)}")
    header = _parse_arg(raw.get("objective"), "objective")
    if header is None or (isinstance(header, Text) and header in NULLS):
        header = {}
    if not isinstance(header, dict):
        raise ConfigError(f"objective: expected a mapping of the objective's fields (on the command line "
                          f"objective.field=value), got {_show(header)}")
    if "name" not in header:
        raise ConfigError(
            f"objective.name: missing; choose one of {', '.join(OBJECTIVES.names())}"
        )
    objective_cls = OBJECTIVES.get(_coerce(header["name"], str, "objective.name"), key="objective.name")
    sections = {k: build_dataclass(cls, raw.get(k), k) for k, cls in SECTIONS.items()}
    cfg = Config(
        model=build_dataclass(objective_cls.Model, raw.get("model"), "model"),
        objective=build_dataclass(objective_cls.Options, header, "objective"),
        name=name,
        **sections,
    )
    validate(cfg)
    return cfg


def load_config(name: str, overrides: list[str] | None = None) -> Config:
    resolved = resolve(name, overrides)
    return config_from_dict(resolved.raw, name=resolved.name)


def annotated_yaml(name: str, overrides: list[str] | None = None) -> str:
    """The resolved config as YAML, each value that a file or override set followed by
    `# <file>`, headed by the chain of files (what --print-config shows)."""
    resolved = resolve(name, overrides)
    cfg = config_from_dict(resolved.raw, name=resolved.name)
    lines = [f"# {resolved.name}: {' -> '.join(resolved.chain)} (later files override earlier ones)",
             "# values without a comment are the defaults of the code"]

    def emit(tree: dict, prefix: tuple, indent: str) -> None:
        for k, v in tree.items():
            key = (*prefix, k)
            source = resolved.origins.get(key) or ("from the config's name" if key == ("run", "dir") else None)
            note = f"  # {source}" if source else ""
            if isinstance(v, dict) and v:
                lines.append(f"{indent}{k}:{note}")
                emit(v, key, indent + "  ")
            else:
                text = yaml.safe_dump(v, default_flow_style=True, width=10**9).strip()
                text = text[:-3].rstrip() if text.endswith("\n...") or text.endswith("...") else text
                lines.append(f"{indent}{k}: {text}{note}")

    emit(cfg.to_dict(), (), "")
    return "\n".join(lines) + "\n"


def check_optim(key: str, optim: OptimConfig | PlayerOptim) -> None:
    """The optimizer's numbers (None: a player inherits optim's own)."""
    if optim.lr is not None and not optim.lr > 0:
        raise ConfigError(f"{key}.lr: must be > 0, got {optim.lr}")
    for name in ("weight_decay", "clip_norm"):
        value = getattr(optim, name)
        if value is not None and value < 0:
            raise ConfigError(f"{key}.{name}: must be >= 0, got {value}")
    betas = optim.betas
    if betas is not None and not (len(betas) == 2 and all(0 <= b < 1 for b in betas)):
        # Adam's (beta1, beta2); SGD takes beta1 as its momentum
        raise ConfigError(f"{key}.betas: expected two numbers in [0, 1) (beta1, beta2), got {betas}")


def validate(cfg: Config) -> None:
    """Cross-field checks that a dataclass type alone cannot express."""
    from .data import check_config
    from .objective import OBJECTIVES

    check_config(cfg.data)
    choices = {
        "train.mixed_precision": (cfg.train.mixed_precision, ["no", "bf16", "fp16"]),
        "optim.name": (cfg.optim.name, ["adam", "adamw", "sgd"]),
        "train.gpu_paths": (cfg.train.gpu_paths, ["auto", "on", "off"]),
        "optim.schedule": (cfg.optim.schedule, ["constant", "linear"]),
    }
    for key, (value, valid) in choices.items():
        if value not in valid:
            raise ConfigError(f"{key}: unknown value '{value}'{suggest(value, valid)}; valid choices: {', '.join(valid)}")
    for key in ("steps", "batch_size", "checkpoint_every", "keep_checkpoints", "sample_every", "log_every",
                "num_samples"):
        if getattr(cfg.train, key) < 1:
            raise ConfigError(f"train.{key}: must be >= 1, got {getattr(cfg.train, key)}")
    for player, decay in (cfg.train.ema or {}).items():
        if not 0 <= decay < 1:
            raise ConfigError(f"train.ema.{player}: must be a decay in [0, 1), got {decay}")
    if cfg.eval.every < 0:
        raise ConfigError(f"eval.every: must be >= 0 (0 = no metrics during training), got {cfg.eval.every}")
    if cfg.eval.num_samples < 1:
        raise ConfigError(f"eval.num_samples: must be >= 1, got {cfg.eval.num_samples}")
    check_optim("optim", cfg.optim)
    for player, over in cfg.optim.players.items():
        check_optim(f"optim.players.{player}", over)
    if cfg.train.phases is not None:
        for i, item in enumerate(cfg.train.phases):
            if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)
                    and isinstance(item[1], int) and item[1] >= 1):
                raise ConfigError(f"train.phases[{i}]: expected [phase_name, repeats >= 1], got {item!r}")
    if getattr(cfg.objective, "penalty_every", 1) < 1:
        raise ConfigError(f"objective.penalty_every: must be >= 1 (1 = every step), got {cfg.objective.penalty_every}")
    objective_cls = OBJECTIVES.get(cfg.objective.name, key="objective.name")
    objective_cls.check_config(cfg)
    if not cfg.run.dir:
        cfg.run.dir = os.path.join("runs", cfg.name)
