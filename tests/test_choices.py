"""Allowed values live in the field types: the loader reads them there, and the tables
that give each choice its meaning cover exactly those choices."""
import typing

import pytest

from arena.config import OptimConfig, TrainConfig, load_config
from arena.prior import ACTIVATIONS, PriorConfig, PriorDiscriminator
from arena.registry import ConfigError
from arena.schema import choices, field_types
from arena.trainer import make_optimizer
from dim.coords import COORD_OPTIONS
from dim.baselines.aae import AAEOptions
from dim.baselines.bigan import BiGANOptions
from dim.baselines.vae import NDM_CODES, VAEOptions
from dim.objective import DIMOptions
from dim.supervised import SupervisedModel
from implicit_gen.ie import IEOptions


def test_each_choice_table_covers_exactly_the_types_choices():
    assert set(choices(field_types(IEOptions)["t_activation"])) == set(ACTIVATIONS)
    assert set(choices(field_types(DIMOptions)["coord"])) == set(COORD_OPTIONS)
    assert set(choices(field_types(VAEOptions)["ndm_code"])) == set(NDM_CODES)
    assert choices(field_types(TrainConfig)["mixed_precision"]) == ("no", "bf16", "fp16")
    assert choices(field_types(PriorConfig)["encoder_loss"]) == ("nonsaturating", "saturating")
    assert choices(field_types(SupervisedModel)["head_input"]) == ("conv", "fc", "y")


@pytest.mark.parametrize("name", choices(field_types(OptimConfig)["name"]))
def test_every_optimizer_choice_builds(name):
    cfg = load_config("prior_match_digits", [f"optim.name={name}"])
    opt = make_optimizer(cfg, "E", PriorDiscriminator(2, [3]))
    assert type(opt).__name__.lower() == name and opt.param_groups[0]["lr"] == cfg.optim.lr


@pytest.mark.parametrize("key, value", [
    ("objective.g_target", "mu_q"), ("objective.contractive_on", "neither"), ("objective.t_clip", "some"),
    ("objective.t_activation", "tanh"), ("objective.encoder_loss", "saturate"), ("optim.name", "adamm"),
    ("train.mixed_precision", "fp32"),
])
def test_a_value_outside_the_choices_names_the_key_and_the_closest_choice(key, value):
    with pytest.raises(ConfigError) as err:
        load_config("ie_digits", [f"{key}={value}"])
    message = str(err.value)
    assert message.startswith(f"{key}: unknown value '{value}'") and "valid choices: " in message
    section, field = key.split(".")
    tp = typing.get_type_hints(type(getattr(load_config("ie_digits"), section)), include_extras=True)[field]
    assert all(c in message for c in choices(tp))


def test_options_shared_by_objectives_come_from_one_base():
    from arena.objective import LazyPenalty
    from implicit_gen.base import GeneratorOptions
    from implicit_gen.gans import NSGANCPOptions, PlainOptions, WGANGPOptions
    from arena.prior_match import PriorMatchOptions

    for cls in (DIMOptions, IEOptions, NSGANCPOptions, WGANGPOptions, PriorMatchOptions, AAEOptions, BiGANOptions):
        assert issubclass(cls, LazyPenalty) and "penalty_every" not in cls.__dict__.get("__annotations__", {})
    for cls in (IEOptions, NSGANCPOptions, WGANGPOptions, PlainOptions):
        assert issubclass(cls, GeneratorOptions) and "ema_bn_batches" not in cls.__dict__.get("__annotations__", {})
    with pytest.raises(ConfigError, match="objective.penalty_every: must be >= 1, got 0"):
        load_config("wgan_gp_digits", ["objective.penalty_every=0"])
    with pytest.raises(ConfigError, match="objective.ema_bn_batches: must be >= 0, got -1"):
        load_config("nsgan_cp_digits", ["objective.ema_bn_batches=-1"])


def test_the_core_never_names_the_packages_above_it():
    """Imports flow one way (DESIGN.md): arena imports neither dim, implicit_gen nor eval,
    not even as a module name in a string (an import the tools could not see)."""
    import ast
    from pathlib import Path

    above = ("dim", "implicit_gen", "eval")
    root = Path(__file__).resolve().parent.parent

    def is_module(text: str) -> bool:  # "dim.objective" is; a message such as "eval.every: ..." is not
        return text.replace(".", "").replace("_", "").isalnum() and (root / (text.replace(".", "/") + ".py")).is_file()

    for path in sorted((root / "arena").rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                names = [node.value] if is_module(node.value) else []
            for name in names:
                assert name.split(".")[0] not in above, f"{path.name} names {name}"
