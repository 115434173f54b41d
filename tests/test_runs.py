"""arena.runs: the one rule that trains, resumes or reuses a run, for every experiment command."""
import pytest

from arena import checkpoint as ckpt
from arena.registry import ConfigError
from arena.runs import NOT_IDENTITY, ensure_trained, identity, identity_hash, plan_run, read_run_config
from tests.helpers import tiny

SMALL = ["data.name=shapes", "data.resolution=8", "data.num_images=256", "model.width=4", "model.out_dim=3",
         "objective.prior.hidden=[16]", "train.batch_size=16", "train.sample_every=100"]


def cfg(run_dir, *overrides):
    return tiny("prior_match_digits", run_dir, *SMALL, "train.checkpoint_every=1", *overrides)


def steps(run_dir):
    return [ckpt.step_of(p) for p in ckpt.checkpoint_dirs(run_dir)]


def test_fresh_then_reuse_then_resume_after_a_stop(tmp_path):
    run = tmp_path / "r"
    first = ensure_trained(cfg(run, "train.steps=2"))
    assert first.how == "fresh" and first.objective is not None and steps(run) == [1, 2]
    again = ensure_trained(cfg(run, "train.steps=2", "train.log_every=7", "train.progress=true"))
    assert again.how == "reuse" and again.done == 2 and again.objective is None  # volatile keys differ only
    ckpt.checkpoint_dirs(run)[-1].joinpath("state.pt").unlink()  # as if stopped after step 1
    state = ensure_trained(cfg(run, "train.steps=2"))
    assert (state.how, state.done, state.cfg.run.resume) == ("resume", 1, "latest") and steps(run)[-1] == 2


def test_a_changed_config_trains_beside_the_old_run_and_finds_it_again(tmp_path):
    run = tmp_path / "r"
    ensure_trained(cfg(run, "train.steps=1"))
    said = []
    other = ensure_trained(cfg(run, "train.steps=1", "run.seed=3"), say=said.append)
    assert other.how == "fresh" and other.run_dir.parent == tmp_path and other.run_dir.name.startswith("r-")
    assert steps(run) == [1] and steps(other.run_dir) == [1]  # both kept
    assert "r holds a run of another config (run.seed: 0 there, 3 now)" in said[0]
    again = plan_run(cfg(run, "train.steps=1", "run.seed=3"))
    assert again.how == "reuse" and again.run_dir == other.run_dir


def test_identity_leaves_out_only_what_never_changes_the_weights(tmp_path):
    flat = identity(cfg(tmp_path).to_dict())
    assert not set(NOT_IDENTITY) & set(flat)
    assert {"train.steps", "train.batch_size", "run.seed", "objective.name", "train.sample_every"} <= set(flat)
    assert not any(k.startswith("train.monitor") for k in flat)  # a whole section left out
    # watching a run (the monitor, trackers) names the same run: a finished row is reused
    watched = cfg(tmp_path, "train.monitor.enabled=true", "train.monitor.every=7", "train.log_with=[tensorboard]")
    assert identity_hash(watched) == identity_hash(cfg(tmp_path))
    assert identity_hash(cfg(tmp_path, "train.steps=7")) != identity_hash(cfg(tmp_path))


@pytest.mark.parametrize("text, message", [("a: [1, 2\n", "not a readable config"), ("- 1\n- 2\n", "holds a list"),
                                           ("\xff\xfe", "not a readable config")])
def test_a_damaged_config_yaml_is_named_never_trained_over(tmp_path, text, message):
    run = tmp_path / "r"
    run.mkdir()
    (run / "config.yaml").write_bytes(text.encode("latin-1"))
    with pytest.raises(ConfigError, match=message):
        plan_run(cfg(run, "train.steps=1"))
    with pytest.raises(ConfigError, match=message):
        read_run_config(run)
    assert (run / "config.yaml").read_bytes() == text.encode("latin-1")
