"""YAML -> typed dataclasses, strict.

A config has fixed sections (run, data, train, optim, eval) and two sections whose
fields belong to the chosen objective (model, objective): the objective registered
under `objective.name` declares their dataclasses, so `model.widht: 4` fails with
"did you mean 'width'" just like a typo in `train`. A file may name others under
`base:` (a name or a list); bases apply in order, then the file's own keys (see
`resolve`).

    cfg = load_config("ie_digits", ["train.steps=200"])
"""
from __future__ import annotations

import dataclasses
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
    resume: str = ""  # "" (start fresh), "latest", or a checkpoint directory


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
class ObjectiveHeader:
    name: str = "prior_match"


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


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`; return it converted (int -> float only)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return build_dataclass(tp, value, key)
    if origin is list:
        (item,) = typing.get_args(tp) or (Any,)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        ktp, vtp = typing.get_args(tp) or (str, Any)
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return {str(k): _coerce(v, vtp, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise TypeError(f"{key}: unsupported annotation {tp!r}")


def build_dataclass(cls: type, values: dict | None, key: str) -> Any:
    """Instantiate `cls` from a mapping; unknown keys and wrong types raise ConfigError."""
    values = values or {}
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for k, v in values.items():
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
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{_label(path)}: not valid YAML: {err}") from None
    except OSError as err:
        raise ConfigError(f"{_label(path)}: cannot read: {err.strerror}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{_label(path)}: expected a mapping of sections (run:, data:, ...) at the top level, "
                          f"got a {type(raw).__name__}")
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
    """['train.steps=200', 'data.name=cifar10'] -> nested dict; values are YAML scalars."""
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
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else ""
    return tree


def merge(base: dict, extra: dict) -> dict:
    """`extra` over `base`: mappings merge key by key, anything else is replaced whole."""
    out = dict(base)
    for k, v in extra.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def config_from_dict(raw: dict, name: str = "config") -> Config:
    from .objective import OBJECTIVES  # the objective declares the model/objective sections

    if not isinstance(raw, dict):
        raise ConfigError(f"config '{name}': expected a mapping at the top level")
    valid = list(SECTIONS) + ["model", "objective"]
    for k in raw:
        if k not in valid:
            raise ConfigError(f"{k}: unknown section{suggest(k, valid)}; valid sections: {', '.join(valid)}")
    header = raw.get("objective") or {}
    if not isinstance(header, dict) or "name" not in header:
        raise ConfigError(
            f"objective.name: missing; choose one of {', '.join(OBJECTIVES.names())}"
        )
    objective_cls = OBJECTIVES.get(header["name"], key="objective.name")
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
            source = resolved.origins.get(key)
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


def validate(cfg: Config) -> None:
    """Cross-field checks that a dataclass type alone cannot express."""
    from .data import DATASETS, check_config
    from .objective import OBJECTIVES

    DATASETS.get(cfg.data.name, key="data.name")
    check_config(cfg.data)
    choices = {
        "train.mixed_precision": (cfg.train.mixed_precision, ["no", "bf16", "fp16"]),
        "optim.name": (cfg.optim.name, ["adam", "adamw", "sgd"]),
        "optim.schedule": (cfg.optim.schedule, ["constant", "linear"]),
    }
    for key, (value, valid) in choices.items():
        if value not in valid:
            raise ConfigError(f"{key}: unknown value '{value}'{suggest(value, valid)}; valid choices: {', '.join(valid)}")
    for key in ("steps", "batch_size", "checkpoint_every", "keep_checkpoints", "sample_every", "log_every"):
        if getattr(cfg.train, key) < 1:
            raise ConfigError(f"train.{key}: must be >= 1, got {getattr(cfg.train, key)}")
    if cfg.train.phases is not None:
        for i, item in enumerate(cfg.train.phases):
            if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)
                    and isinstance(item[1], int) and item[1] >= 1):
                raise ConfigError(f"train.phases[{i}]: expected [phase_name, repeats >= 1], got {item!r}")
    objective_cls = OBJECTIVES.get(cfg.objective.name, key="objective.name")
    objective_cls.check_config(cfg)
    if not cfg.run.dir:
        cfg.run.dir = os.path.join("runs", cfg.name)
