"""Config files and command lines a hostile but fair user may write: each is refused
with a message naming the file or key, quickly, without a traceback."""
import time

import pytest
import yaml

import train as train_cli
from arena.config import load_config
from arena.objective import DataInfo, build_objective
from arena.registry import ConfigError
from arena.runs import read_run_config
from arena.schema import MAX_DEPTH, MAX_VALUES


def write(tmp_path, text: str | bytes, name: str = "mine.yaml"):
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def refused(path, *overrides) -> str:
    start = time.perf_counter()
    with pytest.raises(ConfigError) as err:
        load_config(str(path), list(overrides))
    assert time.perf_counter() - start < 5, "the loader's work is bounded"
    return str(err.value)


def alias_bomb(mapping: bool) -> str:
    """Nine lines that expand to 10^8 values: each level names the previous one ten times."""
    if mapping:
        lines = ["l0: &l0 {" + ", ".join(f"k{i}: x" for i in range(10)) + "}"]
        lines += [f"l{n}: &l{n} {{" + ", ".join(f"k{i}: *l{n - 1}" for i in range(10)) + "}" for n in range(1, 8)]
    else:
        lines = ["l0: &l0 [x, x, x, x, x, x, x, x, x, x]"]
        lines += [f"l{n}: &l{n} [" + ", ".join([f"*l{n - 1}"] * 10) + "]" for n in range(1, 8)]
    return "x-anchors:\n" + "".join(f"  {line}\n" for line in lines)


@pytest.mark.parametrize("mapping", [True, False])
def test_an_alias_bomb_is_refused_at_once(tmp_path, mapping):
    text = alias_bomb(mapping).replace("x-anchors:", "model:")  # under a section the loader walks
    path = write(tmp_path, "base: prior_match_digits\n" + text + "objective: {prior: {hidden: *l7}}\n")
    message = refused(path)
    assert str(path) in message and f"more than {MAX_VALUES} values once its aliases are expanded" in message


def test_a_self_containing_alias_is_refused(tmp_path):
    path = write(tmp_path, "base: prior_match_digits\nrun: &r {dir: x, seed: *r}\n")
    assert "an alias refers to a mapping or list that contains it" in refused(path)


@pytest.mark.parametrize("text", ["run: " + "[" * 5000 + "]" * 5000 + "\n",
                                  "".join("  " * i + f"k{i}:\n" for i in range(300)) + "  " * 300 + "x\n"])
def test_deep_nesting_is_refused(tmp_path, text):
    assert f"nested deeper than {MAX_DEPTH} levels" in refused(write(tmp_path, text))


def test_aliases_within_the_bounds_still_work(tmp_path):
    path = write(tmp_path, "base: prior_match_digits\nobjective:\n  prior: {hidden: &h [8, 8]}\n"
                           "optim: {betas: [0.1, 0.2]}\nx-unused: *h\n".replace("x-unused: *h\n", ""))
    assert load_config(str(path)).objective.prior.hidden == [8, 8]


def test_a_huge_file_is_refused_before_it_is_parsed(tmp_path):
    path = write(tmp_path, "# " + "x" * 2_000_000 + "\nobjective: {name: prior_match}\n")
    assert "characters; a config holds at most" in refused(path)


def test_many_keys_resolve_in_linear_time(tmp_path):
    # 4,000 keys a layer, set again by the next layer: the origins of the values are found
    # once per key, not once per pair of keys
    keys = "".join(f"  k{i}: {i}\n" for i in range(4_000))
    write(tmp_path, "base: prior_match_digits\nx:\n" + keys, "a.yaml")
    path = write(tmp_path, "base: a\nx:\n" + keys)
    assert "x: unknown section" in refused(path)


def test_a_latin1_file_is_named(tmp_path):
    path = write(tmp_path, "# caf\xe9\nbase: prior_match_digits\n".encode("latin-1"))
    message = refused(path)
    assert str(path) in message and "not UTF-8 text" in message and "0xe9" in message


def test_a_base_that_is_a_directory_is_named_as_one(tmp_path):
    (tmp_path / "shared.yaml").mkdir()
    path = write(tmp_path, "base: shared\n")
    message = refused(path)
    assert "is a directory, not a config file" in message and "does not exist" not in message


@pytest.mark.parametrize("override, message", [
    ("optim.betas=0.5", "optim.betas: expected a list, got '0.5'"),
    ("optim.betas={a: 1}", "optim.betas: expected a list"),
    ("eval.metrics=fid", "eval.metrics: expected a list, got 'fid'"),
    ("eval.metrics=[[fid]]", "eval.metrics[0]: expected a string"),
    ("objective.prior.hidden=16", "objective.prior.hidden: expected a list"),
    ("objective.prior.hidden=[16, -2]", "objective.prior.hidden[1]: must be >= 1, got -2"),
    ("train.phases={discriminator: 1}", "train.phases: expected a list"),
    ("train.phases=[discriminator, 1]", "train.phases[0]: expected a list"),
])
def test_wrong_types_where_a_list_is_expected(override, message, tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config("prior_match_digits", [override])
    assert message in str(err.value)


@pytest.mark.parametrize("override, message", [
    ("optim.players.Q.lr=1e-3", "optim.players.Q: unknown player 'Q'"),
    ("optim.players.d.lr=1e-3", "optim.players.d: unknown player 'd' (did you mean 'D'?)"),
    ("train.ema.Z=0.9", "train.ema.Z: unknown player 'Z'"),
])
def test_unknown_players_are_refused_everywhere(override, message, tmp_path, capsys):
    cfg = load_config("prior_match_digits", [override])
    with pytest.raises(ConfigError) as err:
        build_objective(cfg, DataInfo(1, 16))
    assert message in str(err.value) and "players of objective 'prior_match': E, D" in str(err.value)
    assert train_cli.main(["--config", "prior_match_digits", override, f"run.dir={tmp_path / 'run'}"]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # refused before the run directory is made


def test_known_players_pass():
    cfg = load_config("ie_digits", ["optim.players.T.lr=1e-3", "train.ema.G=0.9"])
    build_objective(cfg, DataInfo(1, 16))


@pytest.mark.parametrize("argv", [
    ["--config", "prior_match_digits", "train.steps=3", "--print-config", "train.log_every=2"],
    ["train.steps=3", "--config", "prior_match_digits", "--print-config", "train.log_every=2"],
    ["train.steps=3", "train.log_every=2", "--print-config", "--config", "prior_match_digits"],
])
def test_overrides_go_before_or_after_the_options(argv, capsys):
    assert train_cli.main(argv) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["train"]["steps"] == 3 and printed["train"]["log_every"] == 2


def test_a_partial_nested_override_keeps_the_objectives_own_defaults():
    cfg = load_config("dim_l_digits", ["objective.prior.hidden=[16]"])
    assert cfg.objective.prior.hidden == [16] and cfg.objective.prior.penalty == 1.0  # DIM's, not PriorConfig's


@pytest.mark.parametrize("text, message", [
    ("train: [1\n", "not valid YAML"),
    ("- a\n- b\n", "holds a list, not a config mapping"),
    ("a: &a [*a]\n", "an alias refers to a mapping or list that contains it"),
    ("# caf\xe9\n".encode("latin-1"), "not UTF-8 text"),
    ("objective: {name: prior_match}\ntrain: {steps: -1}\n", "train.steps: must be >= 1, got -1"),
    (None, "not found"),
])
def test_a_runs_config_file_that_is_broken_is_named(tmp_path, text, message):
    run = tmp_path / "run"
    run.mkdir()
    if text is not None:
        (run / "config.yaml").write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ConfigError) as err:
        read_run_config(run)
    assert "config.yaml" in str(err.value) and message in str(err.value)


def test_a_runs_config_file_loads(tmp_path):
    cfg = load_config("ie_digits", ["train.steps=7"])
    (tmp_path / "config.yaml").write_text(cfg.to_yaml())
    again = read_run_config(tmp_path)
    assert again.train.steps == 7 and again.run.dir == str(tmp_path) and again.name == tmp_path.name


def test_a_file_without_a_schema_is_read_typed_within_the_same_bounds(tmp_path):
    from arena.schema import read_yaml_text

    assert read_yaml_text("a: [1, 2.5, no, x]\n", "grid.yaml", typed=True) == {"a": [1, 2.5, False, "x"]}
    with pytest.raises(ConfigError, match="grid.yaml: more than"):
        read_yaml_text(alias_bomb(mapping=True), "grid.yaml", typed=True)
