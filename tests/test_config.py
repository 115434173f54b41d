"""Config loading: name resolution, overrides, and every kind of bad input named clearly."""
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import train as train_cli
from arena.config import CONFIG_DIR, load_config, parse_overrides, resolve_config_path
from arena.registry import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def test_every_shipped_config_loads():
    names = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
    assert "prior_match_digits" in names
    for name in names:
        cfg = load_config(name)
        assert cfg.run.dir == f"runs/{name}"


def test_name_resolution_with_and_without_suffix_and_path(tmp_path):
    assert resolve_config_path("prior_match_digits") == resolve_config_path("prior_match_digits.yaml")
    own = tmp_path / "mine.yaml"
    own.write_text(yaml.safe_dump({"objective": {"name": "prior_match"}}))
    cfg = load_config(str(own))
    assert cfg.name == "mine" and cfg.run.dir == "runs/mine"
    with pytest.raises(ConfigError, match="did you mean 'prior_match_digits'"):
        resolve_config_path("prior_match_digit")


def test_overrides_are_typed_by_the_schema_not_by_yaml():
    # the command line keeps text; the field's type reads it
    assert parse_overrides(["train.steps=7", "data.name=shapes", "optim.betas=[0.0, 0.9]"]) == {
        "train": {"steps": "7"}, "data": {"name": "shapes"}, "optim": {"betas": "[0.0, 0.9]"}}
    cfg = load_config("prior_match_digits", ["train.steps=7", "optim.lr=1", "run.dir=/tmp/x",
                                             "optim.betas=[0.0, 0.9]"])
    assert cfg.train.steps == 7 and cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)
    assert cfg.run.dir == "/tmp/x" and cfg.optim.betas == [0.0, 0.9]


@pytest.mark.parametrize("override, key, value", [
    ("train.mixed_precision=no", "train.mixed_precision", "no"),  # YAML 1.1: false
    ("optim.lr=1e-3", "optim.lr", 1e-3),  # YAML 1.1: the string '1e-3'
    ("optim.lr=1_000.5", "optim.lr", 1000.5),
    ("data.root=2024", "data.root", "2024"),  # YAML: the integer 2024
    ("run.dir=/tmp/x #1", "run.dir", "/tmp/x #1"),  # YAML: a comment
    ("run.dir=yes", "run.dir", "yes"),
    ("train.mixed_precision='no'", "train.mixed_precision", "no"),  # quoted, as a shell script may write it
    ('run.dir="/tmp/x y"', "run.dir", "/tmp/x y"),
    ('run.dir="C:\\new"', "run.dir", "C:\\new"),  # inside the quotes literally: no YAML escapes
    ("run.dir='it's'", "run.dir", "'it's'"),  # a quote inside: not quoted whole, the text as it is
    ("run.dir=it's", "run.dir", "it's"),
    ("run.dir='", "run.dir", "'"),
    ("train.progress=no", "train.progress", False),
    ("train.progress=True", "train.progress", True),
    ("data.augment=null", "data.augment", None),
    ("data.augment=on", "data.augment", True),
    ("train.ema={G: 1e-1}", "train.ema", {"G": 0.1}),
    ("data.categories=[bedroom, 2019]", "data.categories", ["bedroom", "2019"]),
    ("train.phases=[[discriminator, 3], [encoder, 1]]", "train.phases", [["discriminator", 3], ["encoder", 1]]),
])
def test_valid_values_are_read_by_their_field_type(override, key, value, tmp_path):
    cfg = load_config("prior_match_digits", [override])
    section, field = key.split(".")
    got = getattr(getattr(cfg, section), field)
    assert got == value and type(got) is type(value)


def test_a_yaml_file_is_read_by_the_schema_too(tmp_path):
    own = tmp_path / "mine.yaml"
    own.write_text("base: prior_match_digits\ntrain:\n  mixed_precision: no\n  progress: no\n"
                   "optim:\n  lr: 1e-3\ndata:\n  root: 2024\nrun:\n  dir: '/tmp/x #1'  # a comment\n")
    cfg = load_config(str(own))
    assert cfg.train.mixed_precision == "no" and cfg.train.progress is False
    assert cfg.optim.lr == 1e-3 and cfg.data.root == "2024" and cfg.run.dir == "/tmp/x #1"
    assert yaml.safe_load(cfg.to_yaml())["train"]["mixed_precision"] == "no"  # written back quoted


@pytest.mark.parametrize("override, message", [
    ("train=5", "train: expected a mapping of TrainConfig fields (on the command line train.field=value), got '5'"),
    ("objective=5", "objective: expected a mapping of the objective's fields"),
    ("train.steps=[1", "train.steps: expected an integer, got '[1'"),
    ("train.phases=[[encoder, 1]", "train.phases: cannot read '[[encoder, 1]'"),
    ("optim.lr=-1", "optim.lr: must be > 0, got -1.0"),
    ("optim.lr=0", "optim.lr: must be > 0, got 0.0"),
    ("optim.lr=nan", "optim.lr: expected a finite number, got 'nan'"),
    ("optim.weight_decay=-0.1", "optim.weight_decay: must be >= 0"),
    ("optim.clip_norm=-1", "optim.clip_norm: must be >= 0"),
    ("optim.betas=[0.5]", "optim.betas: expected 2 values (beta1, beta2), got 1: [0.5]"),
    ("optim.betas=[0.5, 1.0]", "optim.betas[1]: must be in [0, 1), got 1.0"),
    ("optim.betas=[0.5, x]", "optim.betas[1]: expected a number, got 'x'"),
    ("optim.players.D.lr=-2", "optim.players.D.lr: must be > 0"),
    ("optim.players.D.betas=[0.9, 0.99, 0.9]", "optim.players.D.betas: expected 2 values"),
    ("train.ema.G=1.5", "train.ema.G: must be in [0, 1) (an EMA decay), got 1.5"),
    ("train.num_samples=0", "train.num_samples: must be in [1, 10000]"),
    ("eval.every=-1", "eval.every: must be >= 0"),
    ("eval.num_samples=0", "eval.num_samples: must be >= 1"),
    ("run.seed=-1", "run.seed: must be in [0, 4294967295], got -1"),
    ("run.seed=9223372036854775808", "run.seed: 9223372036854775808 does not fit a 64-bit integer"),
    ("train.steps=0", "train.steps: must be >= 1, got 0"),
    ("train.num_samples=1000000000", "train.num_samples: must be in [1, 10000] (images in one sample grid)"),
    ("train.steps=99999999999999999999", "train.steps: 99999999999999999999 does not fit a 64-bit integer"),
    ("train.batch_size=-3", "train.batch_size: must be >= 1, got -3"),
    ("train.phases=[[discriminator, 99999999999999999999], [encoder, 1]]", "train.phases[0]: expected [phase_name"),
    ("train.phases=[[discriminator, true], [encoder, 1]]", "train.phases[0]: expected [phase_name"),
    ("objective.penalty_every=0", "objective.penalty_every: must be >= 1"),
    ("optim.name=adamm", "optim.name: unknown value 'adamm' (did you mean 'adam'?); valid choices: adam, adamw, sgd"),
    ("optim.schedule=cosine", "valid choices: constant, linear"),
    ("objective.prior.encoder_loss=saturate",
     "objective.prior.encoder_loss: unknown value 'saturate' (did you mean 'saturating'?)"),
])
def test_invalid_values_are_named_without_a_traceback(override, message, tmp_path, capsys):
    with pytest.raises(ConfigError) as err:
        load_config("prior_match_digits", [override])
    assert message in str(err.value)
    assert train_cli.main(["--config", "prior_match_digits", override, f"run.dir={tmp_path}"]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("override, message", [
    ("train.stesp=5", "train.stesp: unknown key (did you mean 'steps'?)"),
    ("model.widht=4", "model.widht: unknown key (did you mean 'width'?)"),
    ("trian.steps=5", "trian: unknown section (did you mean 'train'?)"),
    ("train.steps=abc", "train.steps: expected an integer, got 'abc'"),
    ("train.steps=1.5", "train.steps: expected an integer"),
    ("optim.lr=fast", "optim.lr: expected a number, got 'fast'"),
    ("train.progress=maybe", "train.progress: expected true or false"),
    ("objective.name=prior_matc", "objective.name: unknown objective 'prior_matc' (did you mean 'prior_match'?)"),
    ("data.name=cifar", "data.name: unknown dataset 'cifar' (did you mean 'cifar10'?)"),
    ("train.mixed_precision=bf61", "train.mixed_precision: unknown value 'bf61' (did you mean 'bf16'?)"),
    ("objective.prior.name=unifrom", "unknown prior 'unifrom' (did you mean 'uniform'?)"),
    ("train.phases=[[critic, 2]]", "train.phases: unknown phase 'critic'"),
    ("data.resolution=4", "data.resolution must be an integer >= 8"),
    ("data.download=true", "data.download: 'digits' cannot be downloaded"),
])
def test_bad_config_is_named(override, message, tmp_path):
    with pytest.raises(ConfigError) as err:
        cfg = load_config("prior_match_digits", [override, f"run.dir={tmp_path}"])
        # phase names are checked when the objective is built
        from arena.objective import DataInfo, build_objective
        build_objective(cfg, DataInfo(1, 16)).schedule()
    assert message in str(err.value)


def test_valid_choices_are_listed():
    with pytest.raises(ConfigError, match="valid choices: .*ie.*nsgan_cp.*prior_match.*wgan_gp"):
        load_config("prior_match_digits", ["objective.name=nope"])


def test_missing_data_root_fails_before_training_with_the_path(tmp_path, capsys):
    code = train_cli.main(["--config", "prior_match_digits", "data.name=cifar10",
                           f"data.root={tmp_path / 'nowhere'}", f"run.dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err
    assert code == 2
    assert str(tmp_path / "nowhere") in err and "cifar-10-batches-py" in err
    assert not (tmp_path / "run").exists()  # refused before the run directory is made


def test_print_config_prints_the_resolved_config_and_exits(tmp_path):
    out = subprocess.run([sys.executable, "train.py", "--config", "ie_digits.yaml", "--print-config",
                          "train.steps=3"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    cfg = yaml.safe_load(out)
    assert cfg["train"]["steps"] == 3 and cfg["objective"]["name"] == "ie"
    assert cfg["run"]["dir"] == "runs/ie_digits"


def test_objectives_register_on_import_and_loading_a_run_skips_accelerate():
    # A fresh interpreter: importing the method packages registers their objectives, and
    # loading a run for evaluation needs neither the trainer nor accelerate.
    code = ("import sys; import dim, implicit_gen, arena.runs; from arena.objective import OBJECTIVES; "
            "names = OBJECTIVES.names(); "
            "assert 'accelerate' not in sys.modules and 'arena.trainer' not in sys.modules, sorted(sys.modules); "
            "print(' '.join(names))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["aae", "bigan", "dim", "gan", "ie", "lsgan", "nat", "nsgan_cp", "prior_match", "supervised",
                           "vae", "wgan_gp"]
