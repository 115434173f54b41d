"""The run directory keeps one run (issue 22 "Runs lost or mixed", issue 21 item 6): a
resume from another run's checkpoint never mixes two runs, a second trainer meets a
lock that a killed one does not leave behind, nothing is written through a link, a full
disk loses nothing, a foreign state.pt is named and skipped, a resume that cannot be
exact says so, the data position survives a new batch size, run.resume=auto, and
metrics.jsonl lines that are not objects."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import train as train_cli
from arena import checkpoint as ckpt
from arena import rundir
from arena.data import DataConfig, build_dataset
from arena.registry import ConfigError
from arena.runs import load_run
from arena.stream import BatchStream
from arena.trainer import train
from tests.helpers import ROOT, tiny
from tests.test_run_safety import SMALL, metric_steps, run, steps_of


def tree(path: Path) -> dict[str, bytes]:
    """Every file under path with its bytes: what must not change (the lock file names its
    latest holder)."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*"))
            if p.is_file() and p.name != rundir.LOCK_NAME}


# -- a resume from another run's checkpoint ----------------------------------------------

def test_a_resume_from_another_runs_checkpoint_into_a_dir_with_its_own_run_is_refused(tmp_path):
    run(tmp_path / "a", "train.steps=4", "train.checkpoint_every=2")
    run(tmp_path / "b", "train.steps=3", "train.checkpoint_every=1", "model.width=8")
    a, b = tree(tmp_path / "a"), tree(tmp_path / "b")
    other = tmp_path / "a" / "checkpoints" / "checkpoint-000002"
    with pytest.raises(ConfigError, match=rf"run.resume: {other} is a checkpoint of another run directory, and "
                                          rf"run.dir {tmp_path / 'b'} holds checkpoints of its own "
                                          r"\(checkpoint-000003 is the newest\).*set run.dir to a new directory"):
        run(tmp_path / "b", "train.steps=6", "train.checkpoint_every=1", f"run.resume={other}")
    assert tree(tmp_path / "a") == a and tree(tmp_path / "b") == b  # nothing of either run lost
    run(tmp_path / "b", "train.steps=4", "train.checkpoint_every=1", "model.width=8", "run.resume=latest")
    assert steps_of(tmp_path / "b") == [2, 3, 4] and metric_steps(tmp_path / "b") == [1, 2, 3, 4]


def test_a_branch_into_a_dir_with_only_metrics_rows_keeps_none_of_them(tmp_path):
    run(tmp_path / "a", "train.steps=4", "train.checkpoint_every=2")
    (tmp_path / "c").mkdir()  # rows of a run stopped before its first checkpoint
    (tmp_path / "c" / "metrics.jsonl").write_text('{"step": 1, "x": 1}\n{"step": 2, "x": 2}\n')
    run(tmp_path / "c", "train.steps=3", f"run.resume={tmp_path / 'a' / 'checkpoints' / 'checkpoint-000002'}")
    assert steps_of(tmp_path / "c") == [3] and metric_steps(tmp_path / "c") == [3]


# -- one trainer per run directory -------------------------------------------------------

def start_trainer(run_dir: Path) -> subprocess.Popen:
    """train.py in a process of its own, once it logs (it runs until killed)."""
    cmd = [sys.executable, "train.py", "--config", "prior_match_digits", f"run.dir={run_dir}", "train.progress=false",
           *SMALL, "train.steps=100000", "train.checkpoint_every=100000"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not ((run_dir / "metrics.jsonl").is_file() and (run_dir / "metrics.jsonl").read_text().count("\n") >= 2):
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "the trainer did not start logging"
        time.sleep(0.1)
    return proc


def test_a_second_trainer_is_refused_and_a_killed_one_leaves_no_lock(tmp_path):
    proc = start_trainer(tmp_path)
    try:
        for resume in ([], ["run.resume=latest"], ["run.resume=auto"]):  # a second fresh start, and resumes
            with pytest.raises(ConfigError, match=rf"run.dir: {tmp_path} is in use by another trainer "
                                                  rf"\(pid {proc.pid} on .* since .*\); one run directory takes "
                                                  r"one trainer at a time"):
                run(tmp_path, "train.steps=2", *resume)
        assert proc.poll() is None  # the running trainer goes on
    finally:
        proc.send_signal(signal.SIGKILL)  # no chance to release anything
        proc.wait(timeout=60)
    run(tmp_path, "train.steps=2", "run.resume=auto")  # killed before its first checkpoint: a fresh start
    assert steps_of(tmp_path) == [2] and metric_steps(tmp_path) == [1, 2]


def test_the_lock_is_one_per_directory_within_a_process_too(tmp_path):
    rundir.lock(tmp_path)
    try:
        with pytest.raises(ConfigError, match="is in use by another trainer in this process"):
            run(tmp_path, "train.steps=1")
        assert not (tmp_path / "metrics.jsonl").exists()
    finally:
        rundir.unlock(tmp_path)
    run(tmp_path, "train.steps=1")
    run(tmp_path, "train.steps=2", "run.resume=latest")  # the first run released it
    assert steps_of(tmp_path) == [1, 2]


def test_an_unexpected_error_while_claiming_is_a_message_and_releases_the_lock(tmp_path, monkeypatch):
    """Any error after the lock is taken (here: reading the checkpoints fails) releases it
    and reaches the caller as a ConfigError naming the run directory."""
    def unreadable(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(rundir, "resume_source", unreadable)
    with pytest.raises(ConfigError, match=rf"run.dir: {tmp_path}: PermissionError"):
        run(tmp_path, "train.steps=1")
    monkeypatch.undo()
    run(tmp_path, "train.steps=1")  # not "in use by another trainer in this process"
    assert steps_of(tmp_path) == [1]


def test_every_process_of_a_launch_meets_the_lock(tmp_path):
    from tests.helpers import launch_two_cpu_processes

    script = tmp_path / "locked2.py"
    script.write_text(f"""
import json, sys
sys.path.insert(0, {str(ROOT)!r})
from tests.helpers import tiny
from arena.distributed import processes, shutdown
from arena.registry import ConfigError
from arena.trainer import train

rank = processes().rank
try:
    train(tiny("prior_match_digits", {str(tmp_path / 'run')!r}, *{SMALL!r}, "train.steps=2"))
    result = "trained"
except ConfigError as err:
    result = str(err)
shutdown()
json.dump(result, open({str(tmp_path)!r} + f"/rank{{rank}}.json", "w"))
""")
    (tmp_path / "run").mkdir()
    rundir.lock(tmp_path / "run")  # this process holds it
    try:
        launch_two_cpu_processes(script)
    finally:
        rundir.unlock(tmp_path / "run")
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert results[0] == results[1] and f"pid {os.getpid()} on" in results[0], results
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


# -- symbolic links ------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["checkpoints", "samples", "trackers", "metrics.jsonl", "config.yaml",
                                  "checkpoint inside"])
def test_nothing_is_written_through_a_link_in_the_run_dir(tmp_path, name):
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "folder").mkdir(parents=True)
    (elsewhere / "file").write_text("precious\n")
    (elsewhere / "folder" / "keep").write_text("precious\n")
    before = tree(elsewhere)
    run_dir = tmp_path / "run"
    if name == "checkpoint inside":  # a checkpoint of the run that is a link: rotation would follow it
        run(run_dir, "train.steps=1")
        link = run_dir / "checkpoints" / "checkpoint-000000"
        target = elsewhere / "folder"
    else:
        run_dir.mkdir()
        link = run_dir / name
        target = elsewhere / ("folder" if name in ("checkpoints", "samples", "trackers") else "file")
    link.symlink_to(target)
    resume = ["run.resume=latest"] if name == "checkpoint inside" else []
    with pytest.raises(ConfigError, match=rf"run.dir: {link} is a symbolic link \(to {target}\); a run writes, "
                                          r"rotates and deletes only inside its run directory"):
        run(run_dir, "train.steps=3", "train.checkpoint_every=1", "train.keep_checkpoints=1",
            "train.sample_every=1", *resume)
    assert tree(elsewhere) == before


def test_a_run_dir_that_is_itself_a_link_is_the_directory_it_points_to(tmp_path):
    (tmp_path / "scratch").mkdir()
    (tmp_path / "run").symlink_to(tmp_path / "scratch")
    run(tmp_path / "run", "train.steps=2")
    run(tmp_path / "run", "train.steps=3", "run.resume=latest")
    assert steps_of(tmp_path / "scratch") == [2, 3] and metric_steps(tmp_path / "scratch") == [1, 2, 3]


# -- a full disk ------------------------------------------------------------------------------

def test_a_full_disk_while_saving_is_a_message_and_loses_nothing(tmp_path, monkeypatch, capsys):
    run(tmp_path, "train.steps=2", "train.checkpoint_every=2")
    saved = tree(tmp_path / "checkpoints")
    real = torch.save

    def disk_full(obj, f, *args, **kwargs):
        if "checkpoint-000004" in getattr(f, "name", ""):
            f.write(b"PK\x03\x04 half a file")
            raise OSError(28, "No space left on device")
        return real(obj, f, *args, **kwargs)

    monkeypatch.setattr(ckpt.torch, "save", disk_full)
    rc = train_cli.main(["--config", "prior_match_digits", f"run.dir={tmp_path}", "train.progress=false", *SMALL,
                         "train.steps=4", "train.checkpoint_every=2", "run.resume=latest"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert (f"error: run.dir: cannot write checkpoint-000004 to {tmp_path / 'checkpoints'} (No space left on "
            f"device); the partial save was removed and the newest checkpoint, "
            f"{tmp_path / 'checkpoints' / 'checkpoint-000002'}, is intact") in err
    assert tree(tmp_path / "checkpoints") == saved and steps_of(tmp_path) == [2]  # no .tmp-checkpoint left
    monkeypatch.setattr(ckpt.torch, "save", real)
    run(tmp_path, "train.steps=4", "train.checkpoint_every=2", "run.resume=latest")  # space again: it continues
    assert steps_of(tmp_path) == [2, 4] and metric_steps(tmp_path) == [1, 2, 3, 4]


def test_a_save_that_fails_on_one_process_stops_every_process_with_the_message(tmp_path):
    """Rank 1 cannot write its RNG file (a full disk on its node): every process raises the
    same message instead of the others waiting in the save's next collective, the partial
    save is removed and the earlier checkpoint stays."""
    from tests.helpers import launch_two_cpu_processes

    script = tmp_path / "full2.py"
    script.write_text(f"""
import json, sys
sys.path.insert(0, {str(ROOT)!r})
import torch
from tests.helpers import tiny
from arena import checkpoint as ckpt
from arena.distributed import processes, shutdown
from arena.registry import ConfigError
from arena.trainer import train

rank = processes().rank
real = torch.save
def disk_full(obj, f, *args, **kwargs):
    if rank == 1 and "checkpoint-000004" in getattr(f, "name", ""):
        raise OSError(28, "No space left on device")
    return real(obj, f, *args, **kwargs)
ckpt.torch.save = disk_full
try:
    train(tiny("prior_match_digits", {str(tmp_path / 'run')!r}, *{SMALL!r}, "train.steps=4",
               "train.checkpoint_every=2"))
    result = "trained"
except ConfigError as err:
    result = str(err)
shutdown()
json.dump(result, open({str(tmp_path)!r} + f"/rank{{rank}}.json", "w"))
""")
    launch_two_cpu_processes(script)
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert results[0] == results[1] and "cannot write checkpoint-000004" in results[0], results
    assert "No space left on device" in results[0]
    assert steps_of(tmp_path / "run") == [2] and not list((tmp_path / "run" / "checkpoints").glob(".tmp-*"))


# -- foreign state.pt ----------------------------------------------------------------------------

@pytest.mark.parametrize("missing", ["nets", "config"])
def test_a_foreign_state_pt_is_named_and_skipped_like_a_truncated_one(tmp_path, capsys, missing):
    run(tmp_path, "train.steps=4", "train.checkpoint_every=2")
    newest = tmp_path / "checkpoints" / "checkpoint-000004"
    state, _ = ckpt.load(newest)
    del state[missing]  # readable, weights-only, but not a checkpoint of this toolkit
    torch.save(state, newest / "state.pt")
    named = rf"checkpoint file {newest / 'state.pt'} is not a checkpoint of this toolkit: it has no '{missing}'"
    with pytest.raises(ConfigError, match=named):
        load_run(tmp_path, str(newest))
    assert load_run(tmp_path)[2] == 2  # latest falls back
    run(tmp_path, "train.steps=5", "train.checkpoint_every=2", "run.resume=latest")
    err = capsys.readouterr().err
    assert f"it has no '{missing}'" in err and "moved the unreadable checkpoint-000004 aside" in err
    assert steps_of(tmp_path) == [2, 4, 5] and metric_steps(tmp_path) == [1, 2, 3, 4, 5]
    torch.save({"weights": torch.zeros(2)}, newest / "state.pt")  # a stranger's file, named explicitly
    with pytest.raises(ConfigError, match=rf"run.resume: checkpoint file {newest / 'state.pt'} is not a checkpoint "
                                          r"of this toolkit: it has no 'step' \(it has 'weights'\)"):
        run(tmp_path / "branch", "train.steps=6", f"run.resume={newest}")


# -- resumes that cannot be exact -------------------------------------------------------------------

def test_a_resume_without_its_rng_file_says_it_is_not_exact(tmp_path, capsys):
    run(tmp_path, "train.steps=2")
    where = tmp_path / "checkpoints" / "checkpoint-000002"
    (where / "rng-rank0.pt").unlink()
    run(tmp_path, "train.steps=3", "run.resume=latest")
    assert (f"warning: {where} has no rng-rank0.pt: those processes continue from a fresh random state, so this "
            f"resume is not exact") in capsys.readouterr().err


def test_a_new_batch_size_continues_at_the_same_image_of_the_epoch():
    ds = build_dataset(DataConfig(name="shapes", resolution=8, num_images=22), "train")
    order = BatchStream(ds, 6, seed=5).permutation(0)
    first = BatchStream(ds, 6, seed=5)
    next(first), next(first)
    assert first.state_dict() == {"epoch": 0, "position": 12}
    resumed = BatchStream(ds, 4, seed=5)  # train.batch_size 6 -> 4
    resumed.load_state_dict(first.state_dict())
    for lo in (12, 16):  # the rest of epoch 0, at the new size: images 12..19 of its order
        assert torch.equal(next(resumed).x, ds.images[order[lo:lo + 4]].float() / 127.5 - 1)
    assert resumed.state_dict() == {"epoch": 0, "position": 20}
    # 2 images remain, fewer than a batch: epoch 1 starts (as an epoch's tail always waits)
    assert torch.equal(next(resumed).x, ds.images[resumed.permutation(1)[:4]].float() / 127.5 - 1)


def test_a_run_resumed_at_another_batch_size_keeps_its_data_position(tmp_path):
    run(tmp_path, "train.steps=1")  # 3 data batches of 16 a step
    assert ckpt.load(tmp_path / "checkpoints" / "checkpoint-000001")[0]["data"] == {"epoch": 0, "position": 48}
    run(tmp_path, "train.steps=2", "run.resume=latest", "train.batch_size=32")
    assert ckpt.load(tmp_path / "checkpoints" / "checkpoint-000002")[0]["data"] == {"epoch": 0, "position": 144}


# -- run.resume=auto ----------------------------------------------------------------------------

def test_resume_auto_starts_an_empty_dir_and_continues_a_run(tmp_path, capsys):
    run(tmp_path, "train.steps=2", "run.resume=auto")  # nothing there: a fresh start
    assert "resumed from" not in capsys.readouterr().out and steps_of(tmp_path) == [2]
    run(tmp_path, "train.steps=4", "run.resume=auto")  # the same command after a requeue: continues
    assert f"resumed from {tmp_path / 'checkpoints' / 'checkpoint-000002'} at step 2" in capsys.readouterr().out
    run(tmp_path, "train.steps=4", "run.resume=auto")
    assert "nothing to train: the run is complete" in capsys.readouterr().out
    assert steps_of(tmp_path) == [2, 4] and metric_steps(tmp_path) == [1, 2, 3, 4]


# -- metrics.jsonl lines that are not objects ----------------------------------------------------------

JUNK = [b"[1, 2]\n", b'"text"\n', b"null\n", b"7\n", b"\xff\xfe not utf-8\n", b"[" * 100_000 + b"\n",
        b'{"step": true}\n', b"{not json\n"]


def test_metrics_lines_that_are_not_objects_do_not_stop_a_resume_or_a_reader(tmp_path, capsys):
    run(tmp_path, "train.steps=2")
    path = tmp_path / "metrics.jsonl"
    with open(path, "ab") as f:
        f.write(b"".join(JUNK) + b'{"step": 3, "late": 1}\n')
    run(tmp_path, "train.steps=3", "run.resume=latest")
    assert "dropped 1 rows after step 2" in capsys.readouterr().out  # the row of step 3, not the junk
    data = path.read_bytes()
    assert all(line in data for line in JUNK)  # kept byte for byte: not ours to judge
    assert [row["step"] for row in rundir.read_metrics(path)] == [1, 2, True, 3]
    assert all(isinstance(row, dict) for row in rundir.read_metrics(path))
    from eval.row_measures import steps_per_s

    assert steps_per_s(tmp_path) > 0  # a table's throughput column reads past the junk too


def test_a_resume_on_fewer_processes_than_saved_says_it_is_not_exact(tmp_path, capsys):
    run(tmp_path, "train.steps=2")
    where = tmp_path / "checkpoints" / "checkpoint-000002"
    (where / "rng-rank1.pt").write_bytes((where / "rng-rank0.pt").read_bytes())  # as if 2 processes saved it
    run(tmp_path, "train.steps=3", "run.resume=latest")
    assert (f"warning: {where} was saved by more processes than the 1 of this resume (rng-rank1.pt are not used)"
            in capsys.readouterr().err)


def test_a_lock_file_that_is_a_directory_is_a_message(tmp_path):
    (tmp_path / ".lock").mkdir()
    with pytest.raises(ConfigError, match=rf"run.dir: cannot open the lock file {tmp_path / '.lock'} \("):
        run(tmp_path, "train.steps=1")
