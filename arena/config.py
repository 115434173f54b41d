"""YAML -> typed dataclasses, strict.

A config has fixed sections (run, data, train, optim, eval) and two sections whose
fields belong to the chosen objective (model, objective): the objective registered
under `objective.name` declares their dataclasses, so `model.widht: 4` fails with
"did you mean 'width'" just like a typo in `train`. A file may name others under
`base:` (a name or a list); bases apply in order, then the file's own keys (see
`resolve`). Reading the YAML and checking each value against its field's type
(choices, bounds) is arena/schema.py's; the checks here span several fields.

    cfg = load_config("ie_digits", ["train.steps=200"])
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml

from .data import DataConfig
from .registry import ConfigError, suggest
from .schema import (INT64, Arg, Count, Fraction, Length, NonNegative, NonNegativeInt, Positive, Range, Seed,
                     build_dataclass, coerce, is_null, parse_arg, read_yaml_text, show)

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


@dataclass
class RunConfig:
    dir: str = ""  # "" -> runs/<config name>
    seed: Seed = 0
    # "" (start fresh), "latest", "auto" (latest when run.dir holds a checkpoint, else fresh:
    # a requeued job reruns the same command), or a checkpoint directory
    resume: str = ""


# Adam's (beta1, beta2); SGD takes beta1 as its momentum
Betas = Annotated[list[Fraction], Length(2, "beta1, beta2")]


@dataclass
class PlayerOptim:
    """Per-player overrides of the optimizer defaults (None = inherit)."""

    lr: Positive | None = None
    betas: Betas | None = None
    weight_decay: NonNegative | None = None
    clip_norm: NonNegative | None = None


@dataclass
class OptimConfig:
    name: Literal["adam", "adamw", "sgd"] = "adam"
    lr: Positive = 1e-4
    betas: Betas = field(default_factory=lambda: [0.5, 0.999])
    weight_decay: NonNegative = 0.0
    clip_norm: NonNegative = 0.0  # 0 = no gradient clipping
    schedule: Literal["constant", "linear"] = "constant"  # linear: to 0 at train.steps
    players: dict[str, PlayerOptim] = field(default_factory=dict)


@dataclass
class MonitorConfig:
    """k-NN (and optionally linear-probe) accuracy of an encoder on held-out labelled images
    while it trains (eval/monitor.py checks the objective and measures)."""

    enabled: bool = False
    every: Count = 500  # steps; at this interval it costs well under 5% of training (docs/dim.md)
    k: Count = 20  # neighbours voting, weighted exp(cos / temperature): solo-learn's defaults
    temperature: Positive = 0.07
    bank: NonNegativeInt = 5000  # labelled TRAIN images whose features are the neighbours (0 = all)
    queries: NonNegativeInt = 1000  # labelled TEST images classified (0 = all)
    layers: list[Literal["y", "fc", "conv"]] = field(default_factory=lambda: ["y", "conv"])
    linear: bool = False  # also a quick linear probe (softmax regression on the bank)
    linear_steps: Count = 100


@dataclass
class TrainConfig:
    steps: Count = 1000  # updates of the main player (G for GANs, the encoder for DIM)
    batch_size: Count = 64  # global: split evenly over processes
    phases: list[list[Any]] | None = None  # [[phase, repeats], ...]; None = the objective's default
    checkpoint_every: Count = 500
    keep_checkpoints: Count = 3
    sample_every: Count = 500
    log_every: Count = 50
    # images in a training sample grid (their latents are drawn once, at the start)
    num_samples: Annotated[int, Range(1, 10_000, note="images in one sample grid")] = 64
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    # fused optimizers, channels_last nets and batches. auto = on CUDA only; on = on any
    # device (the CPU runs them too: the tests exercise the GPU's code there)
    gpu_paths: Literal["auto", "on", "off"] = "auto"
    # player -> decay; None = the objective's default, {} = off
    ema: dict[str, Annotated[float, Range(0, 1, open_high=True, note="an EMA decay")]] | None = None
    progress: bool = True
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    # experiment trackers fed the logged values through accelerate.tracking (tensorboard,
    # wandb, ...); metrics.jsonl is always written. [] = jsonl only
    log_with: list[str] = field(default_factory=list)


@dataclass
class EvalConfig:
    every: Annotated[int, Range(0, note="0 = no metrics during training")] = 0
    metrics: list[str] = field(default_factory=lambda: ["fid", "isc", "kid"])
    num_samples: Count = 5000  # during training; the eval.fid_is CLI defaults to 50000
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
    folder = next((c for c in candidates if c.is_dir()), None)
    if folder is not None:
        raise ConfigError(f"{'--config' if near is None else 'base'}: {_label(folder)} is a directory, "
                          f"not a config file; name a .yaml file")
    known = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
    tried = f"--config: no file '{name}'" if near is None else f"no {_label(near / path.parent / stem)}.yaml"
    raise ConfigError(f"{tried} and no configs/{stem}.yaml{suggest(stem, known)}; known configs: {', '.join(known)}")


def _label(path: Path) -> str:
    """How a file is named in messages and in --print-config: relative to the repo if inside."""
    try:
        return str(path.resolve().relative_to(CONFIG_DIR.parent))
    except ValueError:
        return str(path)


def read_config_text(path: Path) -> str:
    """A config file's text (UTF-8, as YAML files are); any problem names the file."""
    try:
        data = path.read_bytes()
    except IsADirectoryError:
        raise ConfigError(f"{_label(path)}: is a directory, not a config file") from None
    except OSError as err:
        raise ConfigError(f"{_label(path)}: cannot read: {err.strerror}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{_label(path)}: not UTF-8 text (byte 0x{data[err.start]:02x} at offset {err.start}); "
                          f"save the file as UTF-8") from None


def read_mapping(text: str, where: str) -> dict:
    """A config's YAML text -> its top-level mapping (None for an empty file)."""
    raw = read_yaml_text(text, where)
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        got = "a list" if isinstance(raw, list) else show(raw)
        raise ConfigError(f"{where}: expected a mapping of sections (run:, data:, ...) at the top level, "
                          f"got {got}")
    return raw


def _read_yaml(path: Path) -> dict:
    return read_mapping(read_config_text(path), _label(path))


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


def _has_leaf(tree: dict, key: tuple) -> bool:
    """Whether `tree` sets `key` itself (not only keys below it)."""
    node: Any = tree
    for part in key:
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def resolve(name: str, overrides: list[str] | None = None) -> Resolved:
    """Apply a config's bases (deep merge of mappings; lists and scalars replaced) and
    the command-line overrides, remembering which file set each value: the last layer
    that holds the value's key (layers x keys work, whatever the files hold)."""
    path = resolve_config_path(name)
    layers = [(_label(p), raw) for p, raw in _linearize(path)]
    layers.append(("command line", parse_overrides(overrides or [])))
    raw: dict = {}
    for _, layer in layers:
        raw = merge(raw, layer)
    origins = {key: next(label for label, layer in reversed(layers) if _has_leaf(layer, key))
               for key, _ in _leaves(raw)}
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
    header = parse_arg(raw.get("objective"), "objective")
    if is_null(header):
        header = {}
    if not isinstance(header, dict):
        raise ConfigError(f"objective: expected a mapping of the objective's fields (on the command line "
                          f"objective.field=value), got {show(header)}")
    if "name" not in header:
        raise ConfigError(
            f"objective.name: missing; choose one of {', '.join(OBJECTIVES.names())}"
        )
    objective_cls = OBJECTIVES.get(coerce(header["name"], str, "objective.name"), key="objective.name")
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


def check_phases(phases: list | None) -> None:
    """train.phases: [[phase_name, repeats >= 1], ...] (the names are the objective's to check)."""
    for i, item in enumerate(phases or []):
        if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)
                and isinstance(item[1], int) and not isinstance(item[1], bool) and 1 <= item[1] < INT64):
            raise ConfigError(f"train.phases[{i}]: expected [phase_name, repeats >= 1], got {item!r}")


def validate(cfg: Config) -> None:
    """Cross-field checks that a field's type alone cannot express."""
    from .data import check_config
    from .metrics_log import check_tracker_names
    from .objective import OBJECTIVES

    check_config(cfg.data)
    check_phases(cfg.train.phases)
    check_tracker_names(cfg.train.log_with)
    OBJECTIVES.get(cfg.objective.name, key="objective.name").check_config(cfg)
    if not cfg.run.dir:
        cfg.run.dir = os.path.join("runs", cfg.name)


def config_from_text(text: str, where: str, name: str) -> Config:
    """A resolved config saved as YAML (a checkpoint's copy; a run's config.yaml is read by
    arena.runs.read_run_config) -> Config; any problem is a ConfigError naming `where`."""
    if not isinstance(text, str):
        raise ConfigError(f"{where}: expected the YAML text of a config, got {type(text).__name__}")
    raw = read_mapping(text, where)
    try:
        return config_from_dict(raw, name=name)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None
