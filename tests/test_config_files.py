"""Config files: inheritance (`base:`), the shipped configs' values, --print-config."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from arena.config import CONFIG_DIR, annotated_yaml, config_from_dict, load_config, resolve
from arena.registry import ConfigError

ROOT = Path(__file__).resolve().parent.parent
# Every shipped config fully resolved by the loader as it was before configs could
# inherit (one file per experiment). A deliberate change of a config's values edits its
# entry here in the same commit, so the diff shows the change.
SNAPSHOT = Path(__file__).resolve().parent / "snapshots" / "resolved_configs.json"


def _canonical(tree) -> str:
    # JSON text tells 1 from 1.0, which a plain == of the dicts would not
    return json.dumps(tree, sort_keys=True)


def test_every_shipped_config_resolves_to_its_snapshot_values():
    snapshot = json.loads(SNAPSHOT.read_text())
    names = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
    assert names == sorted(snapshot)
    differ = []
    for name in names:
        got = json.loads(_canonical(load_config(name).to_dict()))
        for section, values in snapshot[name].items():
            for key in sorted(set(values) | set(got[section])):
                if _canonical(values.get(key)) != _canonical(got[section].get(key)):
                    differ.append(f"{name}: {section}.{key} = {got[section].get(key)!r}, snapshot {values.get(key)!r}")
        assert set(got) == set(snapshot[name]), name
    assert not differ, "\n".join(differ)


def write(folder: Path, name: str, tree: dict | str) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(tree if isinstance(tree, str) else yaml.safe_dump(tree))
    return path


def test_bases_merge_in_order_and_the_file_overrides_them(tmp_path):
    write(tmp_path, "a", {"objective": {"name": "prior_match", "prior": {"name": "uniform", "hidden": [8, 8]}},
                          "train": {"steps": 5, "batch_size": 8}, "optim": {"betas": [0.1, 0.2]}})
    write(tmp_path, "b", {"train": {"steps": 6}, "optim": {"betas": [0.3, 0.4]}})
    mine = write(tmp_path, "mine", {"base": ["a", "b"], "objective": {"prior": {"hidden": [4]}},
                                    "train": {"log_every": 3}})
    cfg = load_config(str(mine))
    assert cfg.name == "mine"
    assert cfg.train.steps == 6 and cfg.train.batch_size == 8 and cfg.train.log_every == 3  # mappings merge
    assert cfg.optim.betas == [0.3, 0.4]  # the later base wins
    assert cfg.objective.prior.hidden == [4] and cfg.objective.prior.name == "uniform"  # lists replaced whole
    resolved = resolve(str(mine), ["train.steps=9"])
    assert "base" not in resolved.raw
    assert resolved.chain == [str(tmp_path / n) + ".yaml" for n in ("a", "b", "mine")]
    assert resolved.origins[("train", "batch_size")] == str(tmp_path / "a.yaml")
    assert resolved.origins[("objective", "prior", "hidden")] == str(tmp_path / "mine.yaml")
    assert resolved.origins[("train", "steps")] == "command line"


def test_an_empty_mapping_in_a_file_replaces_the_bases_mapping(tmp_path):
    assert load_config("ie_digits").train.ema == {"G": 0.99}
    mine = write(tmp_path, "mine", "base: ie_digits\ntrain:\n  ema: {}\n")
    assert load_config(str(mine)).train.ema == {} == load_config("ie_digits", ["train.ema={}"]).train.ema
    assert resolve(str(mine)).origins[("train", "ema")] == str(mine)
    assert "  ema: {}  # " + str(mine) in annotated_yaml(str(mine)).splitlines()


def test_a_shared_base_is_applied_once_before_both_of_its_children(tmp_path):
    # the shipped dim_l_nce_coord_occlude_* rows rely on this: coord's `coord: both` must
    # not be undone by occlude's copy of the common base's `coord: none`
    write(tmp_path, "common", {"objective": {"name": "prior_match", "sigmoid": False}, "train": {"steps": 3}})
    write(tmp_path, "left", {"base": "common", "objective": {"sigmoid": True}})
    write(tmp_path, "right", {"base": "common", "train": {"steps": 4}})
    mine = write(tmp_path, "mine", {"base": ["left", "right"]})
    cfg = load_config(str(mine))
    assert cfg.objective.sigmoid is True and cfg.train.steps == 4
    assert [Path(p).stem for p in resolve(str(mine)).chain] == ["common", "left", "right", "mine"]


def test_a_base_is_found_next_to_the_file_first_then_in_configs(tmp_path):
    (tmp_path / "sub").mkdir()
    write(tmp_path / "sub", "local", {"train": {"steps": 11}})
    mine = write(tmp_path, "mine", {"base": ["ie_digits", "sub/local"]})
    cfg = load_config(str(mine))
    assert cfg.objective.name == "ie" and cfg.train.steps == 11 and cfg.run.dir == "runs/mine"


def test_a_cycle_names_the_files(tmp_path):
    write(tmp_path, "a", {"base": "b"})
    write(tmp_path, "b", {"base": "a.yaml"})
    with pytest.raises(ConfigError, match=r"base: cycle .*a\.yaml -> .*b\.yaml -> .*a\.yaml"):
        load_config(str(tmp_path / "a.yaml"))


def test_a_missing_base_names_the_file_and_the_base(tmp_path):
    mine = write(tmp_path, "mine", {"base": ["ie_digits", "ie_digit"]})
    with pytest.raises(ConfigError) as err:
        load_config(str(mine))
    assert f"{mine}: base 'ie_digit'" in str(err.value) and "did you mean 'ie_digits'" in str(err.value)


@pytest.mark.parametrize("text, message", [
    ("base: {a: b}\n", "base: expected a config name or a list of names, got {'a': 'b'}"),
    ("base: [ie_digits, {x: 1}]\n", "base: expected a config name or a list of names"),
    ("- ie_digits\n", "expected a mapping of sections (run:, data:, ...) at the top level, got a list"),
    ("ie_digits\n", "expected a mapping of sections (run:, data:, ...) at the top level, got 'ie_digits'"),
])
def test_a_malformed_file_is_named(tmp_path, text, message):
    mine = write(tmp_path, "mine", text)
    with pytest.raises(ConfigError) as err:
        load_config(str(mine))
    assert str(mine) in str(err.value) and message in str(err.value)


def test_print_config_shows_the_chain_and_which_file_set_each_value():
    out = subprocess.run([sys.executable, "train.py", "--config", "dim_l_nce_coord_occlude_stl10", "--print-config",
                          "train.steps=3"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    chain = ("configs/bases/cifar10.yaml -> configs/bases/stl10.yaml -> configs/bases/dim.yaml -> "
             "configs/dim_l_nce_stl10.yaml -> configs/dim_l_nce_coord_stl10.yaml -> "
             "configs/dim_l_nce_occlude_stl10.yaml -> configs/dim_l_nce_coord_occlude_stl10.yaml")
    assert chain in out.splitlines()[0]
    lines = [line.strip() for line in out.splitlines()]
    assert "occlude: true  # configs/dim_l_nce_occlude_stl10.yaml" in lines
    assert "occlusion_block: 21" in lines  # alexnet64 conv3's receptive field, filled in by the code
    assert "coord: both  # configs/dim_l_nce_coord_stl10.yaml" in lines
    assert "encoder: alexnet64  # configs/bases/stl10.yaml" in lines
    assert "steps: 3  # command line" in lines
    assert "num_workers: -1" in lines  # a default: no source
    assert yaml.safe_load(out) == load_config("dim_l_nce_coord_occlude_stl10", ["train.steps=3"]).to_dict()


def test_the_saved_config_has_no_base_and_reloads_to_the_same_config(tmp_path):
    for name in ("dim_l_nce_coord_occlude_cifar10", "supervised_stl10", "wgan_gp_lsun", "ie_digits"):
        cfg = load_config(name)
        saved = yaml.safe_load(cfg.to_yaml())
        assert "base" not in saved
        again = config_from_dict(saved, name=name)
        assert again == cfg
        assert yaml.safe_load(annotated_yaml(name)) == saved


def test_paper_defaults_are_written_once_and_the_occlusion_block_follows_the_encoder():
    # bases/dim.yaml names the objective only: DIM's paper defaults are DIMModel / DIMOptions'
    assert yaml.safe_load((CONFIG_DIR / "bases" / "dim.yaml").read_text()) == {"objective": {"name": "dim"}}
    for name in sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")):
        own = yaml.safe_load((CONFIG_DIR / f"{name}.yaml").read_text()).get("objective") or {}
        assert "occlusion_block" not in own, name
    # A.6: the block is the receptive field of the local features
    assert load_config("dim_l_nce_occlude_cifar10").objective.occlusion_block == 10  # dcgan32 conv2
    assert load_config("dim_l_nce_occlude_stl10").objective.occlusion_block == 21  # alexnet64 conv3
    assert load_config("dim_l_nce_occlude_cifar10", ["objective.occlusion_block=8"]).objective.occlusion_block == 8


def test_yaml_merge_keys_and_anchors_still_work(tmp_path):
    write(tmp_path, "mine", "base: prior_match_digits\ntrain:\n  <<: &s {steps: 7, log_every: 2}\n"
                            "  batch_size: 16\neval: {metrics: &m [fid]}\n")
    cfg = load_config(str(tmp_path / "mine.yaml"))
    assert (cfg.train.steps, cfg.train.log_every, cfg.train.batch_size) == (7, 2, 16) and cfg.eval.metrics == ["fid"]


def test_without_the_method_packages_an_objective_name_says_how_they_register():
    code = ("from arena.config import load_config\n"
            "try:\n    load_config('ie_digits')\nexcept Exception as err:\n    print(err)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert "unknown objective 'ie'" in out and "import dim, implicit_gen" in out
