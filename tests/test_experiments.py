"""Every experiment command on the one driver: stopped by SIGTERM and rerun the same way
it finishes the work; hostile grids, names and flags are messages before any training;
every command of the README answers --help."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from arena.trainer import Hook, Stopped
from eval import ablation, experiment, figure14, gen_ablation, reproduce
from tests.helpers import ROOT

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "ACCELERATE_USE_CPU": "true",
       "PYTHONPATH": str(ROOT)}
TINY_IE = "[model.width=8, model.z_dim=8, train.batch_size=16, train.sample_every=1000, train.log_every=1, " \
          "objective.ema_bn_batches=2]"


def sigterm_at_step(monkeypatch, step: int) -> None:
    """The next training any command starts gets a real SIGTERM after `step` (the trainer's
    handler then finishes the step after it, saves and raises Stopped), as a scheduler sends."""
    real = experiment.ensure_trained

    def with_signal(cfg, hooks=(), say=None):
        def fn(r, s):
            if s == step:
                os.kill(os.getpid(), signal.SIGTERM)

        monkeypatch.setattr(experiment, "ensure_trained", real)  # once
        return real(cfg, [*hooks, Hook(every=1, fn=fn)], say=say)

    monkeypatch.setattr(experiment, "ensure_trained", with_signal)


def test_a_gen_ablation_cell_stopped_by_sigterm_resumes_when_the_command_is_rerun(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DIM_FIDELITY_CACHE", str(tmp_path / "cache"))
    grid = tmp_path / "grid.yaml"
    grid.write_text(f"steps: 6\ncommon: {TINY_IE}\ncells: {{ie: {{config: ie_digits}}}}\n")
    out = tmp_path / "res.json"
    argv = ["--grid", str(grid), "--runs-root", str(tmp_path / "runs"), "--out", str(out), "--num-samples", "100",
            "--device", "cpu"]
    sigterm_at_step(monkeypatch, 2)
    assert gen_ablation.main(argv) == 128 + signal.SIGTERM
    err = capsys.readouterr().err
    assert "stopped by SIGTERM after step 3" in err and "run the same command again" in err and not out.exists()
    assert gen_ablation.main(argv) == 0  # the same command again
    err = capsys.readouterr().err
    assert "training 6 steps, resuming at step 3" in err and "already holds checkpoints" not in err
    (cell,) = json.loads(out.read_text())["cells"]
    assert cell["step"] == 6 and cell["trained"] == "resume" and cell["fid"] > 0
    assert out.with_suffix(".md").read_text().startswith("| cell |")


def test_a_reproduce_row_stopped_by_sigterm_resumes_when_the_command_is_rerun(tmp_path, capsys, monkeypatch):
    argv = ["digits", "--rows", "dim_l", "--scale", "0.01", "--measure-scale", "0.01", "--no-progress", "--runs",
            str(tmp_path / "runs"), "--out", str(tmp_path / "results")]
    sigterm_at_step(monkeypatch, 2)
    assert reproduce.main(argv) == 128 + signal.SIGTERM
    assert "stopped by SIGTERM after step 3" in capsys.readouterr().err
    assert reproduce.main(argv) == 0
    run = tmp_path / "runs" / "scale-0.01" / "dim_l_digits"
    assert f"{run}: training 5 steps, resuming at step 3" in capsys.readouterr().out
    rows = {r["row"]: r for r in json.loads((tmp_path / "results" / "digits-x0.01-m0.01.json").read_text())["rows"]}
    assert rows["dim_l"]["status"] == "measured" and rows["dim_l"]["step"] == 5


def test_a_measurement_is_kept_for_a_reused_run_and_taken_again_for_a_retrained_one(tmp_path):
    """The driver's measure_key: the same run and settings are not measured twice, but a run
    directory removed and trained again (same dir, same step, new weights) is."""
    import shutil

    from arena.config import load_config

    run = tmp_path / "runs" / "dim"
    cfg = load_config("dim_l_digits", ["train.steps=2", "train.checkpoint_every=2", "train.progress=false",
                                       "train.batch_size=16", "model.width=0.125", f"run.dir={run}"])
    calls = []

    def measure(spec, state):
        calls.append(state.how)
        return {"measured": len(calls)}

    def once():  # two specs of one run, as a reproduce row probed and sampled in two column groups
        results = experiment.Results(tmp_path / "out.json", {"v": 1})
        experiment.run_specs([experiment.Spec("a", cfg), experiment.Spec("b", cfg)], experiment.on_main(measure),
                             results, measure_key={"v": 1}, say=lambda m: None)
        return json.loads((tmp_path / "out.json").read_text())["records"][0]

    first = once()
    assert calls == ["fresh", "reuse"] and first["trained"] == "fresh"
    assert once()["measure_key"] == first["measure_key"] and len(calls) == 2  # reused: both kept
    shutil.rmtree(run)  # what --retrain does
    once()
    assert calls == ["fresh", "reuse", "fresh", "reuse"]  # both specs measure the new weights


def test_ablation_stopped_in_a_cell_says_so_and_exits_with_the_signal(tmp_path, monkeypatch, capsys):
    def stopped(cfg, hooks=(), say=None):
        raise Stopped("stopped by SIGTERM after step 3; continue with run.resume=latest", signal.SIGTERM)

    monkeypatch.setattr(experiment, "ensure_trained", stopped)
    code = ablation.main(["--config", "dim_l_digits", "--alpha", "1", "--beta", "0", "--steps", "5",
                          "--out", str(tmp_path / "h.png"), "--runs-root", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert code == 143 and "stopped by SIGTERM after step 3" in err and "run the same command again" in err


# ---------------------------------------------------------------------------- bad input: messages


def grid(tmp_path, text: str) -> str:
    p = tmp_path / "g.yaml"
    p.write_text(text)
    return str(p)


@pytest.mark.parametrize("text, message", [
    ("steps: [1\n", "not valid YAML (line"),
    ("- a\n- b\n", "the top level must be a mapping of keys, not a list"),
    ("steps: 2\ncells: {../x: {config: ie_digits}}\n", "cannot name a run directory"),
    ("steps: 2\ncells: {a/b: {config: ie_digits}}\n", "cannot name a run directory"),
    ("steps: 2\ncells: {.hidden: {config: ie_digits}}\n", "cannot name a run directory"),
    ("steps: 2\ncommon: model.width=8\ncells: {a: {config: ie_digits}}\n", "common: expected a list"),
    ("steps: 2\ncells: {a: {config: ie_digits, overrides: [1, 2]}}\n", "expected a list of KEY=VALUE"),
    ("steps: 1e99\ncells: {a: {config: ie_digits}}\n", "'steps' must be an integer"),
    ("steps: " + "[" * 100000 + "]" * 100000 + "\n", "nested deeper than 32 levels"),  # the reader's bound
    ("steps: 2\ncommon: [&a [" + ",".join(["x"] * 9) + "], " + "".join(  # aliases: 9^20 leaves, never walked
        f"&a{i} [" + ",".join([f"*a{i - 1}" if i > 1 else "*a"] * 9) + "], " for i in range(1, 20)) +
     "]\ncells: {a: {config: ie_digits}}\n", "more than 100000 values once its aliases are expanded"),
])
def test_gen_ablation_refuses_bad_grid_files_before_any_training(tmp_path, capsys, text, message):
    runs = tmp_path / "runs"
    assert gen_ablation.main(["--grid", grid(tmp_path, text), "--out", str(tmp_path / "o.json"),
                              "--runs-root", str(runs)]) == 2
    assert message in capsys.readouterr().err and not runs.exists() and not (tmp_path / "o.json").exists()


def test_gen_ablation_out_that_is_a_directory_is_refused_before_training(tmp_path, capsys):
    text = "steps: 2\ncells: {a: {config: ie_digits}}\n"
    assert gen_ablation.main(["--grid", grid(tmp_path, text), "--out", str(tmp_path), "--runs-root",
                              str(tmp_path / "runs")]) == 2
    assert "is a directory; name a file" in capsys.readouterr().err and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("extra, message", [
    (["model.widht=8"], "did you mean 'width'"),
    (["--ratio", "0"], "--ratio must be from 1"),
    (["--steps", "0"], "--steps must be from 1"),
    (["--samples", "0"], "--samples must be from 1"),
])
def test_figure14_bad_flags_and_overrides_are_messages(tmp_path, capsys, extra, message):
    code = figure14.main(["--panels", "ie", "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "f.png"),
                          *extra])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err and not (tmp_path / "f.png").exists()


def test_ablation_svm_runs_0_is_refused_by_its_own_flag_before_training(tmp_path, capsys):
    code = ablation.main(["--config", "dim_l_digits", "--svm-runs", "0", "--out", str(tmp_path / "h.png"),
                          "--runs-root", str(tmp_path / "runs")])
    assert code == 2 and "--svm-runs must be >= 1, got 0" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("scale", ["inf", "nan", "0", "-1"])
def test_reproduce_scale_must_be_a_finite_positive_number(tmp_path, capsys, scale):
    assert reproduce.main(["digits", "--scale", scale, "--runs", str(tmp_path / "r"), "--out",
                           str(tmp_path / "o")]) == 2
    assert "--scale must be a number in (0, 10000]" in capsys.readouterr().err


def test_reproduce_dry_run_names_a_damaged_dataset_file_as_the_rows_problem(tmp_path, capsys):
    root = tmp_path / "data" / "tiny-imagenet-200"
    from PIL import Image

    for d in (root / "train" / "n01" / "images", root / "val" / "images"):
        d.mkdir(parents=True)
        Image.new("RGB", (64, 64)).save(d / "a.JPEG")
    (root / "wnids.txt").write_text("n01\n")
    (root / "val" / "val_annotations.txt").write_text("a.JPEG n01 0 0 64 64\n")  # spaces, not tabs
    code = reproduce.main(["table2", "--dry-run", "--rows", "dim_l_nce_tinyimagenet", "--data-root",
                           str(tmp_path / "data"), "--runs", str(tmp_path / "r"), "--out", str(tmp_path / "o")])
    out = capsys.readouterr().out
    assert code == 2 and "PROBLEM" in out and "tiny" in out.split("PROBLEM")[1].split("\n")[0].lower()


@pytest.mark.parametrize("text", ["a: [1, 2\n", "- 1\n- 2\n"])
def test_reproduce_names_a_run_dirs_damaged_config_yaml(tmp_path, capsys, text):
    run = tmp_path / "runs" / "scale-0.01" / "dim_l_digits"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(text)
    assert reproduce.main(["digits", "--rows", "dim_l", "--scale", "0.01", "--runs", str(tmp_path / "runs"),
                           "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert f"{run / 'config.yaml'}" in err and "row 'dim_l'" in err and (run / "config.yaml").read_text() == text


def test_a_non_object_line_in_metrics_loses_no_measurement(tmp_path):
    from eval.row_measures import steps_per_s

    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "steps_per_s": 4.0}\n[1, 2]\n7\n"x"\n{bad\n'
                                            '{"step": 2, "steps_per_s": 6.0}\n')
    assert steps_per_s(tmp_path) == 5.0


# ---------------------------------------------------------------------------- --help


CLIS = sorted(p.stem for p in (ROOT / "eval").glob("*.py") if "__main__" in p.read_text())
SCRIPTS = ["train.py", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "benchmarks").glob("*.py")
                                if "__main__" in p.read_text())]


HELP_ALL = """
import contextlib, io, runpy, sys
bad = []
for target in sys.argv[1:]:
    sys.argv = [target, "--help"]
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            runpy.run_path(target, run_name="__main__") if target.endswith(".py") else \
                runpy.run_module(target, run_name="__main__", alter_sys=True)
        bad.append(f"{target}: returned without exiting")
    except SystemExit as e:
        if e.code not in (0, None) or "usage:" not in out.getvalue():
            bad.append(f"{target}: exit {e.code}")
    except BaseException as e:
        bad.append(f"{target}: {type(e).__name__}: {e}")
print("BAD", bad)
"""


def test_every_command_answers_help():
    # one interpreter for all (torch is imported once), each command run as `python -m X --help` runs it
    done = subprocess.run([sys.executable, "-c", HELP_ALL, *[f"eval.{c}" for c in CLIS], *SCRIPTS], cwd=ROOT,
                          env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "BAD []" in done.stdout, (done.stdout[-2000:], done.stderr[-2000:])
    assert len(CLIS) >= 10 and "reproduce" in CLIS and "train.py" in SCRIPTS


@pytest.mark.parametrize("text", ["a: [1, 2\n", "- 1\n- 2\n"])
def test_dim_probes_random_init_names_a_damaged_config_yaml(tmp_path, capsys, text):
    from eval import dim_probes

    (tmp_path / "config.yaml").write_text(text)
    assert dim_probes.main(["--run", str(tmp_path), "--random-init", "--no-append"]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "config.yaml") in err and "Traceback" not in err


@pytest.mark.parametrize("path", sorted((ROOT / "eval" / "grids").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_grid_reads_and_resolves_every_cell(path):
    grid = gen_ablation.read_grid(str(path))
    for name in grid["cells"]:
        cfg = gen_ablation.cell_config(name, grid, Path("runs") / "g")
        assert cfg.run.dir == str(Path("runs") / "g" / name) and cfg.train.steps >= 1


def test_dim_probes_on_a_vae_reads_z_and_a_layer_an_encoder_lacks_is_a_message(tmp_path, capsys):
    from arena.config import load_config
    from eval import dim_probes

    tiny = ["--no-append", "--probes", "ndm", "--layers", "y", "--ndm-steps", "3", "--max-train", "64",
            "--max-test", "32"]
    for name in ("vae_digits", "dim_l_digits"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.yaml").write_text(load_config(name).to_yaml())
    assert dim_probes.main(["--run", str(tmp_path / "vae_digits"), "--random-init", *tiny]) == 0
    out = json.loads(capsys.readouterr().out.splitlines()[0])
    assert set(out["ndm"]) == {"z", "sigmoid(z)"}  # the VAE's ndm_layer: a posterior sample
    assert dim_probes.main(["--run", str(tmp_path / "dim_l_digits"), "--random-init", "--ndm-layer", "z", *tiny]) == 2
    err = capsys.readouterr().err
    assert "layer(s) z" in err and "gives conv, fc, y" in err and "Traceback" not in err
    assert dim_probes.main(["--run", str(tmp_path / "vae_digits"), "--random-init", *tiny, "--layers", "w"]) == 2
    assert "unknown layer 'w'; valid choices: conv, fc, y, z" in capsys.readouterr().err
