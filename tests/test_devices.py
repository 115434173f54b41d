"""The suite and the toolkit where a GPU exists, or an optional extra does not.

CPU machines run the simulations (a GPU reported but the CPU asked for; lmdb missing);
the tests marked `cuda` run only where a GPU exists (tests/conftest.py skips them elsewhere).
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from arena.runs import load_run
from arena.trainer import train
from tests.helpers import ROOT, tiny

PRIOR_SMALL = ["data.name=shapes", "data.resolution=8", "data.num_images=64", "model.width=4", "model.out_dim=3",
               "objective.prior.hidden=[16]", "train.batch_size=16", "train.steps=2"]


def device_of(objective) -> torch.device:
    return next(objective.nets.parameters()).device


def test_train_honours_accelerate_use_cpu_where_a_gpu_is_reported(tmp_path, monkeypatch, cpu_only):
    """`ACCELERATE_USE_CPU=true` (what `accelerate launch --cpu` sets, and the tests' way to pin
    the CPU) must keep train() off a GPU that torch reports. Simulated: train() is told a GPU
    exists when it picks its device (the rest of the run sees the real machine)."""
    import accelerate

    real_state, real_available = accelerate.PartialState, torch.cuda.is_available
    asked = {}

    def state(cpu: bool = False, **kwargs):
        asked["cpu"] = cpu
        monkeypatch.setattr(torch.cuda, "is_available", real_available)
        return real_state(cpu=cpu, **kwargs)

    monkeypatch.setattr(accelerate, "PartialState", state)  # arena.distributed.processes() asks it
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    objective = train(tiny("prior_match_digits", tmp_path, *PRIOR_SMALL))
    assert asked == {"cpu": True} and device_of(objective).type == "cpu"


def test_suite_without_the_lsun_extra_skips_the_lmdb_tests(tmp_path):
    """Without lmdb (the optional `lsun` extra) the LSUN tests skip and the shared dataset
    fixtures still build; the missing-package error itself stays tested (it passes)."""
    code = ("import sys; sys.modules['lmdb'] = None; import pytest; "
            "sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', 'tests/test_data.py', '-k', 'lsun or loader_kwargs']))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "the lsun extra (lmdb) is not installed" in proc.stdout  # skipped, not errors
    assert " passed" in proc.stdout  # test_loader_kwargs (the shared fixtures) and the missing-lmdb error


# ---------------------------------------------------------------------------- on a GPU


IE_SMALL = ["model.width=8", "model.z_dim=8", "train.batch_size=16", "train.steps=2", "train.sample_every=1",
            "train.num_samples=16", "data.resolution=16"]


@pytest.fixture(scope="module")
def gpu_run(tmp_path_factory):
    """A tiny ie_digits run trained on the GPU in bf16 (the process state is reset so that an
    earlier cpu_only test cannot leave it on the CPU)."""
    from accelerate import PartialState

    saved = os.environ.pop("ACCELERATE_USE_CPU", None)
    PartialState._reset_state()
    run = tmp_path_factory.mktemp("gpu") / "ie"
    try:
        objective = train(tiny("ie_digits", run, *IE_SMALL, "train.mixed_precision=bf16"))
    finally:
        PartialState._reset_state()
        if saved is not None:
            os.environ["ACCELERATE_USE_CPU"] = saved
    return run, objective


@pytest.mark.cuda
def test_bf16_training_steps_on_the_gpu_are_finite(gpu_run):
    run, objective = gpu_run
    assert device_of(objective).type == "cuda"
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = {k: v for k, v in lines[-1].items() if k.endswith("/loss")}
    assert losses and all(math.isfinite(v) for v in losses.values()), lines[-1]
    for net in objective.nets.values():
        assert all(torch.isfinite(p).all() for p in net.parameters())


@pytest.mark.cuda
def test_ema_sampling_on_the_gpu(gpu_run):
    run, objective = gpu_run
    assert (run / "samples" / "step-000002.png").is_file()  # the trainer's EMA grid
    z = objective.latent(8, torch.Generator().manual_seed(0))  # CPU latents: generate moves them
    a, b = objective.generate(z, ema=True), objective.generate(z, ema=True)
    assert a.is_cuda and a.shape == (8, 1, 16, 16) and torch.isfinite(a).all() and a.abs().max() <= 1
    assert torch.equal(a, b)
    assert not torch.equal(a, objective.generate(z, ema=False))  # the EMA copy is a different net


@pytest.mark.cuda
def test_load_run_onto_the_gpu_matches_the_cpu(gpu_run, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # TF32 convs differ from fp32 by ~1e-3
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    run, _ = gpu_run
    _, on_gpu, step = load_run(run, device="cuda")
    _, on_cpu, _ = load_run(run, device="cpu")
    assert step == 2 and device_of(on_gpu).type == "cuda"
    assert all(p.is_cuda for ema in on_gpu.ema.values() for p in ema.parameters())
    z = on_cpu.latent(8, torch.Generator().manual_seed(1))
    assert torch.allclose(on_gpu.generate(z).cpu(), on_cpu.generate(z), atol=1e-4)


@pytest.mark.cuda
def test_fid_is_on_the_gpu_matches_the_cpu(gpu_run, tmp_path, monkeypatch, capsys):
    from eval import fid_is

    run, _ = gpu_run
    monkeypatch.setenv("DIM_FIDELITY_CACHE", str(tmp_path / "cache"))
    values = {}
    for device in ("cuda", "cpu"):
        args = ["--run", str(run), "--num-samples", "200", "--metrics", "fid,kid,isc", "--features", "digits-32",
                "--batch-size", "50", "--device", device]
        assert fid_is.main(args) == 0
        values[device] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for k in ("fid", "kid_mean", "isc_mean"):
        assert math.isfinite(values["cuda"][k])
        assert values["cuda"][k] == pytest.approx(values["cpu"][k], rel=1e-2, abs=1e-3), k
