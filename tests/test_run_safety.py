"""What a run keeps and refuses: finite checkpoints, readable resumes, stated resume rules,
orderly stops on SIGTERM / Ctrl-C, writable run directories (issue 11), and checkpoint
rotation / metrics / config.yaml round trips (issue 14)."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from arena import checkpoint as ckpt
from arena.config import config_from_dict, load_config
from arena.registry import ConfigError
from arena.runs import load_run
from arena.trainer import Hook, NonFiniteLoss, NonFiniteWeights, train
from eval import fid_is, sample_grid
from tests import fixtures
from tests.helpers import ROOT, assert_same_state, tiny

SMALL = ["data.name=shapes", "data.resolution=8", "data.num_images=256", "model.width=4", "model.out_dim=3",
         "objective.prior.hidden=[16]", "train.batch_size=16", "train.log_every=1", "train.sample_every=100"]


def run(path, *overrides, hooks=()):
    return train(tiny("prior_match_digits", path, *SMALL, *overrides), list(hooks))


def steps_of(path) -> list[int]:
    return [ckpt.step_of(p) for p in ckpt.checkpoint_dirs(path)]


def metric_steps(path) -> list[int]:
    return [json.loads(line)["step"] for line in (Path(path) / "metrics.jsonl").read_text().splitlines()]


def poison_at(step: int, net: str = "E", tensor: str = "head.weight") -> Hook:
    """A hook that puts a NaN into one weight after `step` (hooks run before that step's save)."""

    def fn(r, s):
        if s == step:
            with torch.no_grad():
                dict(r.objective.nets[net].named_parameters())[tensor].view(-1)[0] = float("nan")

    return Hook(every=1, fn=fn)


# -- non-finite weights ------------------------------------------------------------------

def test_non_finite_weights_are_never_saved_and_the_message_names_what_exists(tmp_path):
    with pytest.raises(NonFiniteWeights, match=r"by step 2 in E: 1 tensor \(head.weight\); stopping without "
                                               r"saving them\. The newest checkpoint is .*checkpoint-000001 \(step 1\)"):
        run(tmp_path, "train.steps=4", "train.checkpoint_every=1", hooks=[poison_at(2)])
    assert steps_of(tmp_path) == [1]


def test_non_finite_loss_without_any_checkpoint_says_none_was_saved(tmp_path):
    with pytest.raises(NonFiniteLoss, match=r"at step 3; stopping\. No checkpoint exists under .*checkpoints: "
                                            r"none was saved"):
        run(tmp_path, "train.steps=6", "train.checkpoint_every=5", hooks=[poison_at(2)])
    assert steps_of(tmp_path) == []


def corrupt_weights(run_dir: Path) -> Path:
    """Write NaN into E's head of the newest checkpoint, as an older version could have saved it."""
    where = ckpt.resolve_checkpoint(run_dir, "latest")
    state, _ = ckpt.load(where)
    state["nets"]["E"]["head.weight"][0, 0] = float("inf")
    torch.save(state, where / "state.pt")
    return where


def test_eval_refuses_non_finite_weights_naming_checkpoint_and_tensors(tmp_path, capsys):
    run(tmp_path, "train.steps=1")
    where = corrupt_weights(tmp_path)
    with pytest.raises(ConfigError, match=rf"{where} holds non-finite weights .* in E: 1 tensor \(head.weight\)"):
        load_run(tmp_path)
    assert fid_is.main(["--run", str(tmp_path), "--num-samples", "10"]) == 2
    assert sample_grid.main(["--run", str(tmp_path), "--out", str(tmp_path / "g.png")]) == 2
    err = capsys.readouterr().err
    assert err.count("head.weight") == 2 and "Traceback" not in err
    assert not (tmp_path / "g.png").exists()


# -- unreadable checkpoints --------------------------------------------------------------

@pytest.mark.parametrize("damage", ["truncated", "empty"])
def test_an_unreadable_newest_checkpoint_is_named_and_skipped(tmp_path, capsys, damage):
    run(tmp_path, "train.steps=4", "train.checkpoint_every=2")
    bad = tmp_path / "checkpoints" / "checkpoint-000004" / "state.pt"
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"")

    _, _, step = load_run(tmp_path)  # eval: falls back, names the file, changes nothing
    assert step == 2
    err = capsys.readouterr().err
    assert f"{bad} cannot be read" in err and "checkpoint-000002" in err
    assert fid_is.main(["--run", str(tmp_path), "--checkpoint", str(bad.parent)]) == 2  # named: no fallback
    assert f"{bad} cannot be read" in capsys.readouterr().err
    assert bad.is_file()

    run(tmp_path, "train.steps=6", "train.checkpoint_every=2", "run.resume=latest")
    out, err = capsys.readouterr()
    assert f"{bad} cannot be read" in err and "moved the unreadable checkpoint-000004 aside" in err
    assert "resumed from" in out and "checkpoint-000002 at step 2" in out
    moved = tmp_path / "checkpoints" / "checkpoint-000004.unreadable" / "state.pt"  # kept, out of the rotation
    assert moved.read_bytes() == (data[: len(data) // 2] if damage == "truncated" else b"")
    assert steps_of(tmp_path) == [2, 4, 6]
    assert metric_steps(tmp_path) == [1, 2, 3, 4, 5, 6]


def test_no_readable_checkpoint_is_a_clear_error(tmp_path):
    run(tmp_path, "train.steps=2")
    (tmp_path / "checkpoints" / "checkpoint-000002" / "state.pt").write_bytes(b"not a zip")
    with pytest.raises(ConfigError, match=r"run.resume: none of the 1 checkpoints .* can be read"):
        run(tmp_path, "train.steps=4", "run.resume=latest")


# -- resume rules ------------------------------------------------------------------------

def optimizer_group(run_dir, player="E") -> dict:
    state, _ = ckpt.load(ckpt.resolve_checkpoint(run_dir, "latest"))
    return state["optimizers"][player]


def test_resume_applies_the_configs_optimizer_settings_and_keeps_the_state(tmp_path, capsys):
    run(tmp_path, "train.steps=2", "optim.lr=0.001")
    run(tmp_path, "train.steps=3", "run.resume=latest", "optim.lr=0.0001", "optim.betas=[0.9, 0.99]",
        "optim.weight_decay=0.01")
    out = capsys.readouterr().out
    assert "E: optimizer state from the checkpoint, settings from the config: lr 0.001 -> 0.0001, " \
           "betas (0.5, 0.999) -> (0.9, 0.99), weight_decay 0.0 -> 0.01" in out
    opt = optimizer_group(tmp_path)
    assert opt["param_groups"][0]["lr"] == 1e-4 and tuple(opt["param_groups"][0]["betas"]) == (0.9, 0.99)
    assert opt["param_groups"][0]["weight_decay"] == 0.01
    assert all(int(s["step"]) == 3 for s in opt["state"].values())  # moments carried over, not reset


def test_resume_with_a_linear_schedule_reports_no_lr_change(tmp_path, capsys):
    run(tmp_path, "train.steps=2", "optim.schedule=linear", "optim.lr=0.001")
    assert optimizer_group(tmp_path)["param_groups"][0]["lr"] == 0.0005  # saved decayed (step 2 of 2 ran at 1/2)
    capsys.readouterr()
    run(tmp_path, "train.steps=4", "run.resume=latest", "optim.schedule=linear", "optim.lr=0.001")
    assert "settings from the config" not in capsys.readouterr().out
    run(tmp_path, "train.steps=5", "run.resume=latest", "optim.schedule=linear", "optim.lr=0.002")
    assert "settings from the config: lr 0.001 -> 0.002" in capsys.readouterr().out
    assert optimizer_group(tmp_path)["param_groups"][0]["lr"] == pytest.approx(0.002 * (1 - 4 / 5))


@pytest.mark.parametrize("legacy", [False, True])
def test_resume_with_another_optimizer_kind_is_refused(tmp_path, legacy):
    run(tmp_path, "train.steps=1")
    if legacy:  # a checkpoint from before the optimizer's class was stored
        where = ckpt.resolve_checkpoint(tmp_path, "latest")
        state, _ = ckpt.load(where)
        del state["optimizer_types"]
        torch.save(state, where / "state.pt")
    with pytest.raises(ConfigError, match=r"optim.name: .*checkpoint-000001 holds adam state for player '\w+' but "
                                          r"the config asks for sgd;.*Resume with optim.name=adam"):
        run(tmp_path, "train.steps=2", "run.resume=latest", "optim.name=sgd")


def test_resume_from_an_older_checkpoint_is_refused_in_place_and_branches_elsewhere(tmp_path):
    run(tmp_path / "a", "train.steps=4", "train.checkpoint_every=2")
    older = tmp_path / "a" / "checkpoints" / "checkpoint-000002"
    with pytest.raises(ConfigError, match=r"older than checkpoint-000004 .*set run.dir to a new directory.*"
                                          r"move checkpoint-000004 out of"):
        run(tmp_path / "a", "train.steps=6", f"run.resume={older}")
    assert steps_of(tmp_path / "a") == [2, 4] and metric_steps(tmp_path / "a") == [1, 2, 3, 4]
    run(tmp_path / "b", "train.steps=3", f"run.resume={older}")  # a branch in a new run.dir
    assert steps_of(tmp_path / "b") == [3] and metric_steps(tmp_path / "b") == [3]


def test_resume_from_a_path_that_is_no_checkpoint_says_so_beside_a_run(tmp_path):
    run(tmp_path, "train.steps=2")
    with pytest.raises(ConfigError, match=r"run.resume: nowhere is not a checkpoint directory \(no state.pt in it\)"):
        run(tmp_path, "train.steps=3", "run.resume=nowhere")
    assert metric_steps(tmp_path) == [1, 2]


def test_a_fresh_run_into_a_dir_with_checkpoints_is_refused_before_any_work(tmp_path):
    run(tmp_path, "train.steps=4", "train.checkpoint_every=2")
    config = (tmp_path / "config.yaml").read_text()
    with pytest.raises(ConfigError, match=rf"run.dir: {tmp_path} already holds checkpoints of a run "
                                          r"\(checkpoint-000004 is the newest\); to continue it, set "
                                          r"run.resume=latest; to start a new run, set run.dir to a new directory"):
        run(tmp_path, "train.steps=3", "train.checkpoint_every=1", "model.width=8")
    # the old run is untouched, and continues
    assert steps_of(tmp_path) == [2, 4] and metric_steps(tmp_path) == [1, 2, 3, 4]
    assert (tmp_path / "config.yaml").read_text() == config
    run(tmp_path, "train.steps=5", "train.checkpoint_every=2", "run.resume=latest")
    assert steps_of(tmp_path) == [2, 4, 5] and metric_steps(tmp_path) == [1, 2, 3, 4, 5]


def test_resume_at_or_past_train_steps_changes_nothing(tmp_path, capsys):
    run(tmp_path, "train.steps=2")
    config = (tmp_path / "config.yaml").read_text()
    run(tmp_path, "train.steps=2", "run.resume=latest", "train.log_every=7")
    assert "nothing to train: the run is complete (train.steps=2)" in capsys.readouterr().out
    assert (tmp_path / "config.yaml").read_text() == config and metric_steps(tmp_path) == [1, 2]
    with pytest.raises(ConfigError, match=r"train.steps: 1 is below the step of .*checkpoint-000002 \(2\)"):
        run(tmp_path, "train.steps=1", "run.resume=latest")
    assert (tmp_path / "config.yaml").read_text() == config


def stop_at(step: int) -> Hook:
    def fn(r, s):
        if s == step:
            raise KeyboardInterrupt("killed")  # after step's metrics row, before its checkpoint

    return Hook(every=1, fn=fn)


def test_a_stop_signal_at_the_last_step_finishes_the_run(tmp_path, capsys):
    ran = []

    def signal_then_record(r, s):
        ran.append(s)
        if s == 2:  # read after step 3 of 3: the run is complete, its last hooks still run
            os.kill(os.getpid(), signal.SIGTERM)

    run(tmp_path, "train.steps=3", hooks=[Hook(every=1, fn=signal_then_record)])
    assert ran == [1, 2, 3] and steps_of(tmp_path) == [3]
    assert "SIGTERM at the last step: finishing the run" in capsys.readouterr().out


def test_kill_and_resume_leaves_each_step_once_in_metrics(tmp_path, capsys):
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, "train.steps=6", "train.checkpoint_every=2", hooks=[stop_at(5)])
    assert metric_steps(tmp_path) == [1, 2, 3, 4, 5] and steps_of(tmp_path) == [2, 4]
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 6, "encoder/lo')  # a row cut short by the kill
    run(tmp_path, "train.steps=6", "train.checkpoint_every=2", "run.resume=latest")
    assert "dropped 2 rows after step 4" in capsys.readouterr().out
    assert metric_steps(tmp_path) == [1, 2, 3, 4, 5, 6]


# -- run directory -----------------------------------------------------------------------

@pytest.mark.parametrize("where", ["run", "checkpoints"])
def test_a_run_dir_or_checkpoints_that_is_a_file_fails_before_training(tmp_path, capsys, where):
    import train as train_cli

    target = tmp_path / "run" if where == "run" else tmp_path / "run" / "checkpoints"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("a file")
    rc = train_cli.main(["--config", "prior_match_digits", f"run.dir={tmp_path / 'run'}", *SMALL, "train.steps=2"])
    assert rc == 2
    assert f"error: run.dir: {target} exists and is not a directory" in capsys.readouterr().err
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_an_unwritable_checkpoints_dir_fails_before_training(tmp_path, monkeypatch):
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    if os.geteuid() != 0:
        checkpoints.chmod(0o500)
    else:  # root writes through any permission bits: make the write itself fail as it would
        real = Path.write_bytes

        def refused(self, data):
            if self.parent == checkpoints:
                raise PermissionError(13, "Permission denied", str(self))
            return real(self, data)

        monkeypatch.setattr(Path, "write_bytes", refused)
    try:
        with pytest.raises(ConfigError, match=rf"run.dir: cannot write to {checkpoints} \(Permission denied\)"):
            run(tmp_path, "train.steps=2")
    finally:
        checkpoints.chmod(0o700)
    assert not (tmp_path / "metrics.jsonl").exists()


# -- SIGTERM / Ctrl-C: a real process ------------------------------------------------------

def stop_with(sig: int, run_dir: Path, *extra: str, group: bool = False) -> tuple[subprocess.CompletedProcess, int]:
    """Start train.py, wait for two metrics rows, send `sig`; -> (finished process, rc)."""
    cmd = [sys.executable, "train.py", "--config", "prior_match_digits", f"run.dir={run_dir}", "train.progress=false",
           *SMALL, "train.steps=100000", "train.checkpoint_every=100000", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    metrics = run_dir / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 2):
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "the run did not start logging"
        time.sleep(0.1)
    if group:  # as a scheduler does: every process of the job, data workers included
        os.killpg(proc.pid, sig)
    else:
        proc.send_signal(sig)
    try:
        out, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err), proc.returncode


def test_ctrl_c_finishes_the_step_saves_and_resumes_exactly(tmp_path, cpu_only):
    # cpu_only: bit-exact on any machine (the train.py process inherits ACCELERATE_USE_CPU)
    done, rc = stop_with(signal.SIGINT, tmp_path / "stopped")
    assert rc == 130, done.stderr[-3000:]
    step = metric_steps(tmp_path / "stopped")[-1]
    assert f"stopped by SIGINT after step {step}; saved {tmp_path / 'stopped' / 'checkpoints'}" in done.stderr
    assert "Traceback" not in done.stderr and steps_of(tmp_path / "stopped") == [step]
    # resumed for two more steps == an unbroken run of as many steps
    resumed = tiny("prior_match_digits", tmp_path / "stopped", *SMALL, f"train.steps={step + 2}", "run.resume=latest")
    train(resumed)
    train(tiny("prior_match_digits", tmp_path / "once", *SMALL, f"train.steps={step + 2}"))
    a, _ = ckpt.load(ckpt.resolve_checkpoint(tmp_path / "stopped", "latest"))
    b, _ = ckpt.load(ckpt.resolve_checkpoint(tmp_path / "once", "latest"))
    assert_same_state({k: a[k] for k in ("step", "nets", "optimizers", "data")},
                      {k: b[k] for k in ("step", "nets", "optimizers", "data")})


def test_an_interrupt_that_could_not_save_is_a_message(tmp_path, capsys, monkeypatch):
    import train as train_cli

    def interrupted(cfg, hooks):
        raise KeyboardInterrupt  # e.g. Ctrl-C while the data loads, or a second Ctrl-C during the stop

    monkeypatch.setattr(train_cli, "train", interrupted)
    assert train_cli.main(["--config", "prior_match_digits", f"run.dir={tmp_path}"]) == 130
    assert capsys.readouterr().err == "[arena] interrupted; nothing saved beyond the newest checkpoint\n"


def test_sigterm_to_the_job_with_data_workers_saves_and_exits_143(tmp_path):
    fixtures.make_imagefolder(tmp_path / "images")
    done, rc = stop_with(signal.SIGTERM, tmp_path / "run", "data.name=imagefolder", f"data.root={tmp_path / 'images'}",
                         "data.num_workers=1", "train.batch_size=2", group=True)
    assert rc == 143, done.stderr[-3000:]
    step = metric_steps(tmp_path / "run")[-1]
    assert f"stopped by SIGTERM after step {step}" in done.stderr and "continue with run.resume=latest" in done.stderr
    assert "Traceback" not in done.stderr and steps_of(tmp_path / "run") == [step]
    _, _, loaded = load_run(tmp_path / "run")
    assert loaded == step


# -- issue 14: rotation, config.yaml -----------------------------------------------------

def test_rotation_keeps_the_newest_k_checkpoints_across_a_resume(tmp_path):
    run(tmp_path, "train.steps=6", "train.checkpoint_every=2", "train.keep_checkpoints=2")
    assert steps_of(tmp_path) == [4, 6]
    run(tmp_path, "train.steps=11", "train.checkpoint_every=2", "train.keep_checkpoints=3", "run.resume=latest")
    assert steps_of(tmp_path) == [8, 10, 11]  # every 2 steps, and the last step
    assert not list((tmp_path / "checkpoints").glob(".*"))


def test_saved_config_yaml_reloads_to_the_same_config(tmp_path):
    cfg = tiny("prior_match_digits", tmp_path, *SMALL, "train.steps=1", "train.ema={E: 0.9}",
               "optim.players={D: {lr: 0.0005}}", "train.mixed_precision=bf16")
    train(cfg)
    again = load_config(str(tmp_path / "config.yaml"))
    assert again.to_dict() == cfg.to_dict()
    state, _ = ckpt.load(ckpt.resolve_checkpoint(tmp_path, "latest"))
    assert config_from_dict(yaml.safe_load(state["config"])).to_dict() == cfg.to_dict()


def test_two_processes_stop_after_the_same_step_when_one_gets_sigterm(tmp_path):
    from tests.helpers import launch_two_cpu_processes

    script = tmp_path / "stop2.py"
    script.write_text(f"""
import json, os, signal, sys
import torch
sys.path.insert(0, {str(ROOT)!r})
from accelerate import PartialState
from tests.helpers import tiny
from arena.distributed import shutdown
from arena.trainer import Hook, Stopped, train

def signal_rank1(run, step):  # only rank 1 is told; rank 0 must stop with it
    if run.procs.rank == 1 and step == 2:
        os.kill(os.getpid(), signal.SIGTERM)

cfg = tiny("prior_match_digits", {str(tmp_path / 'run')!r}, *{SMALL!r}, "train.steps=50", "train.checkpoint_every=50")
try:
    train(cfg, [Hook(every=1, fn=signal_rank1, all_processes=True)])
    result = "finished"
except Stopped as err:
    result = str(err)
rank = PartialState().process_index
result = [result, len(torch.distributed.distributed_c10d._world.pg_map)]  # the default group, and any train() left
shutdown()
json.dump(result, open({str(tmp_path)!r} + f"/rank{{rank}}.json", "w"))
""")
    launch_two_cpu_processes(script)
    for rank in (0, 1):
        result, groups_left = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert result.startswith("stopped by SIGTERM after step 3;") and groups_left == 1
    assert steps_of(tmp_path / "run") == [3] and metric_steps(tmp_path / "run") == [1, 2, 3]
    _, rng1 = ckpt.load(tmp_path / "run" / "checkpoints" / "checkpoint-000003", rank=1)
    assert rng1 is not None


def test_a_loss_non_finite_on_one_process_stops_every_process_at_the_same_check(tmp_path):
    from tests.helpers import launch_two_cpu_processes

    script = tmp_path / "nan2.py"
    script.write_text(f"""
import json, sys
import torch
sys.path.insert(0, {str(ROOT)!r})
from accelerate import PartialState
from tests.helpers import tiny
from arena.prior_match import PriorMatch
from arena.distributed import processes, shutdown
from arena.trainer import NonFiniteLoss, train

rank = processes().rank  # the trainer's process layout (a bare PartialState() would not pin the CPU)
calls = [0]
real = PriorMatch.loss

def loss(self, phase, batch, batch_size):  # a logged value that goes inf on rank 1 only, from its 5th call
    out = real(self, phase, batch, batch_size)
    calls[0] += 1
    bad = rank == 1 and calls[0] >= 5
    return {{**out, "probe": torch.tensor(float("inf") if bad else 1.0)}}

PriorMatch.loss = loss
cfg = tiny("prior_match_digits", {str(tmp_path / 'run')!r}, *{SMALL!r}, "train.steps=20", "train.log_every=4")
try:
    train(cfg)
    result = "finished"
except NonFiniteLoss as err:
    result = str(err)
shutdown()
json.dump(result, open({str(tmp_path)!r} + f"/rank{{rank}}.json", "w"))
""")
    launch_two_cpu_processes(script)
    results = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert results[0] == results[1] and "became non-finite (nan or inf) at step" in results[0], results
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # both stopped at the first log (step 4), unwritten
