"""Config loading: name resolution, overrides, and every kind of bad input named clearly."""
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import arena.prior_match  # noqa: F401
import dim  # noqa: F401
import implicit_gen  # noqa: F401
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


def test_overrides_are_typed_yaml_scalars():
    assert parse_overrides(["train.steps=7", "data.name=shapes", "optim.betas=[0.0, 0.9]"]) == {
        "train": {"steps": 7}, "data": {"name": "shapes"}, "optim": {"betas": [0.0, 0.9]}}
    cfg = load_config("prior_match_digits", ["train.steps=7", "optim.lr=1", "run.dir=/tmp/x"])
    assert cfg.train.steps == 7 and cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)
    assert cfg.run.dir == "/tmp/x"


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
        from arena.trainer import build_objective
        from arena.objective import DataInfo
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
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_print_config_prints_the_resolved_config_and_exits(tmp_path):
    out = subprocess.run([sys.executable, "train.py", "--config", "ie_digits.yaml", "--print-config",
                          "train.steps=3"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    cfg = yaml.safe_load(out)
    assert cfg["train"]["steps"] == 3 and cfg["objective"]["name"] == "ie"
    assert cfg["run"]["dir"] == "runs/ie_digits"
