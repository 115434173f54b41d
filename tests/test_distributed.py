"""N processes, one objective: the differentiable all-gather and SyncBatchNorm make DIM with
2 CPU processes (gloo) train what 1 process trains on the same global batch."""
from __future__ import annotations

import copy
import json

import torch
from torch import nn

from arena import checkpoint as ckpt
from arena.distributed import SyncBatchNorm, convert_sync_batchnorm, gather
from arena.objective import Batch, DataInfo
from arena.trainer import train
from dim import DIM
from tests.helpers import ROOT, launch_two_cpu_processes, tiny

INFO = DataInfo(channels=1, resolution=16, num_classes=10)
# dcgan32 at width 1/8 on 16 px digits, small critics; every estimator, global + local
# MI, the prior term and absolute coordinates (per-image terms with batch norm).
TINY = ["model.width=0.125", "model.mi_units=128", "model.global_units=64", "model.coord_hidden=64",
        "objective.prior.hidden=[32, 16]", "model.sync_bn=true", "train.batch_size=16"]
CASES = {
    "jsd": ["objective.estimator=jsd", "objective.alpha=0.5", "objective.beta=1.0", "objective.coord=absolute"],
    "nce": ["objective.estimator=nce", "objective.alpha=0.5", "objective.beta=1.0"],
    "dv": ["objective.estimator=dv", "objective.alpha=0.0", "objective.beta=1.0"],
}
# Trainer end to end: SGD (linear in the gradient, so float rounding stays rounding; Adam's
# g / sqrt(v) would magnify it where a gradient is ~0), no prior (its samples are per-process noise).
TRAIN = ["model.width=0.125", "model.mi_units=128", "model.sync_bn=true", "objective.estimator=nce",
         "objective.gamma=0", "optim.name=sgd", "optim.lr=0.05", "train.batch_size=16", "train.steps=3",
         "train.checkpoint_every=3", "train.log_every=1", "data.num_images=64"]


def assert_close(got: torch.Tensor, ref: torch.Tensor, what: str) -> None:
    """Equal up to float32 rounding of a different summation order, relative to the
    tensor's scale, plus 1e-6 for gradients that are exactly 0 in exact arithmetic (NCE is
    invariant to a shift of the local embeddings, so their LayerNorm bias gets rounding only)."""
    err, scale = float((got - ref).abs().max()), float(ref.abs().max())
    assert err <= 1e-5 * scale + 1e-6, f"{what}: max error {err:.3g} at scale {scale:.3g}"


def global_batch(n: int = 16) -> torch.Tensor:
    return torch.rand(n, 1, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1


def build(run_dir, case: str) -> DIM:
    cfg = tiny("dim_l_digits", run_dir, *TINY, *CASES[case])
    torch.manual_seed(0)
    return DIM(cfg, INFO)


def encoder_step(objective: DIM, x: torch.Tensor) -> dict:
    """One encoder-phase forward and backward: the loss, its terms, the encoder player's
    gradients and batch norm running statistics."""
    out = objective.loss("encoder", Batch(x, torch.zeros(len(x), dtype=torch.long)), len(x))
    player = objective.nets["encoder"]
    player.zero_grad(set_to_none=True)
    out["loss"].backward()
    return {"out": {k: v.detach() for k, v in out.items()},
            "grads": {n: p.grad.clone() for n, p in player.named_parameters() if p.grad is not None},
            "buffers": {n: b.clone() for n, b in player.named_buffers()}}


def test_one_process_gather_is_the_identity_and_sync_bn_is_batch_norm():
    x = torch.randn(6, 3, 4, 4)
    assert gather(x) is x and gather(x, ragged=True) is x
    bn = nn.Sequential(nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3), nn.BatchNorm1d(2, momentum=None))
    with torch.no_grad():
        bn[1].running_mean.fill_(0.3)
    sync = convert_sync_batchnorm(copy.deepcopy(bn))
    assert isinstance(sync[1], SyncBatchNorm) and isinstance(sync[2], SyncBatchNorm)
    assert sync[2].momentum is None and torch.equal(sync[1].running_mean, bn[1].running_mean)
    assert torch.equal(sync[1](sync[0](x)), bn[1](bn[0](x)))
    assert torch.equal(sync[1].running_var, bn[1].running_var)
    sync.eval(), bn.eval()
    assert torch.equal(sync[1](x), bn[1](x))


def test_sync_bn_changes_nothing_in_one_process(tmp_path):
    x = global_batch()
    plain = build(tmp_path, "jsd")
    plain.cfg.model.sync_bn = False
    torch.manual_seed(0)
    plain = DIM(plain.cfg, INFO)
    synced = build(tmp_path, "jsd")
    assert any(isinstance(m, SyncBatchNorm) for m in synced.encoder.modules())
    assert not any(isinstance(m, SyncBatchNorm) for m in synced.nets["encoder"]["local_critic"].modules())
    a, b = encoder_step(plain, x), encoder_step(synced, x)
    for part in ("out", "grads", "buffers"):
        assert a[part].keys() == b[part].keys()
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), (part, k)


def test_two_processes_compute_the_one_process_dim_objective(tmp_path, cpu_only):
    """Each process gets half of a global batch; its MI terms equal the 1-process terms,
    the mean of the two losses is the 1-process loss, and the trainer's averaged gradients
    and the synced running statistics equal the 1-process ones. Then 3 training steps
    leave the same weights as 1 process does."""
    script = tmp_path / "run2.py"
    script.write_text(f"""
import sys, torch
sys.path.insert(0, {str(ROOT)!r})
from accelerate import PartialState
from arena.objective import Batch
from arena.distributed import gather, shutdown
from arena.trainer import train
from arena.updates import average_gradients
from tests.helpers import tiny
from tests.test_distributed import CASES, TRAIN, build, encoder_step, global_batch
state = PartialState(cpu=True)
rank, world = state.process_index, state.num_processes
x = global_batch()
half = len(x) // world
results = {{}}
for case in CASES:
    objective = build({str(tmp_path / 'unused')!r}, case)
    out = objective.loss("encoder", Batch(x[rank * half:(rank + 1) * half], torch.zeros(half, dtype=torch.long)), half)
    player = objective.nets["encoder"]
    player.zero_grad(set_to_none=True)
    out["loss"].backward()
    average_gradients(player)  # what the trainer does with N processes
    loss = out["loss"].detach().clone()
    torch.distributed.all_reduce(loss)
    results[case] = {{"out": {{k: v.detach() for k, v in out.items()}}, "mean_loss": loss / world,
                     "grads": {{n: p.grad.clone() for n, p in player.named_parameters() if p.grad is not None}},
                     "buffers": {{n: b.clone() for n, b in player.named_buffers()}}}}
# ragged: rank r passes r + 1 rows; everyone gets the 3 rows in rank order, and the
# gradient of sum(k * row_k) reaches each process's own rows, summed over the processes
mine = torch.full((rank + 1, 2), float(rank), requires_grad=True)
got = gather(mine, ragged=True)
(got * torch.arange(1.0, 4.0)[:, None]).sum().backward()
results["ragged"] = {{"rows": got.detach(), "grad": mine.grad}}
torch.save(results, {str(tmp_path)!r} + f"/rank{{rank}}.pt")
train(tiny("dim_l_digits", {str(tmp_path / 'two')!r}, *TRAIN))
shutdown()
""")
    launch_two_cpu_processes(script)
    for rank in (0, 1):
        ragged = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)["ragged"]
        assert torch.equal(ragged["rows"], torch.tensor([[0.0, 0.0], [1.0, 1.0], [1.0, 1.0]]))
        rows = [[1.0], [2.0, 3.0]][rank]  # each of the 2 processes' losses weighs row k by k
        assert torch.equal(ragged["grad"], 2 * torch.tensor(rows)[:, None].expand(-1, 2))
    x = global_batch()
    for case in CASES:
        ref = encoder_step(build(tmp_path / "unused", case), x)
        for rank in (0, 1):
            got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)[case]
            assert_close(got["mean_loss"], ref["out"]["loss"], f"{case} loss")
            for term in ("global_mi", "local_mi"):
                if term in ref["out"]:  # computed on the gathered batch: equal on every process
                    assert_close(got["out"][term], ref["out"][term], f"{case} {term}")
            assert got["grads"].keys() == ref["grads"].keys()
            for k in ref["grads"]:
                assert_close(got["grads"][k], ref["grads"][k], f"{case} grad {k}")
            for k in ref["buffers"]:
                assert_close(got["buffers"][k].float(), ref["buffers"][k].float(), f"{case} buffer {k}")

    train(tiny("dim_l_digits", tmp_path / "one", *TRAIN))
    one, _ = ckpt.load(ckpt.resolve_checkpoint(tmp_path / "one", "latest"))
    two, _ = ckpt.load(ckpt.resolve_checkpoint(tmp_path / "two", "latest"))
    assert two["world_size"] == 2
    for k, v in one["nets"]["encoder"].items():
        assert_close(two["nets"]["encoder"][k].float(), v.float(), f"trained {k}")
    torch.manual_seed(0)  # the trainer's initial weights
    first = DIM(tiny("dim_l_digits", tmp_path / "one", *TRAIN), INFO).nets["encoder"].state_dict()
    moved = max(float((one["nets"]["encoder"][k].float() - v.float()).abs().max()) for k, v in first.items())
    assert moved > 1e-3  # the steps changed the weights: the comparison is not vacuous


def test_a_main_process_only_ms_ssim_does_not_wait_for_the_other_processes(tmp_path):
    """The experiment commands measure on the main process (eval.experiment.main_then_all):
    torchmetrics' MS-SSIM must not gather across processes there, or it waits for ever."""
    script = tmp_path / "msssim_on_main.py"
    script.write_text(f"""
import sys; sys.path.insert(0, {str(ROOT)!r})
import json, torch
from pathlib import Path
from arena.distributed import processes
from eval.experiment import main_then_all
from eval.probes import msssim

procs = processes()
x = torch.rand(8, 1, 16, 16) * 2 - 1
value = main_then_all(procs, lambda: msssim(x, x.flip(0)) if procs.main else None, Path({str(tmp_path / 'marker')!r}))
if procs.main:
    Path({str(tmp_path / 'out.json')!r}).write_text(json.dumps(value))
""")
    launch_two_cpu_processes(script)
    value = json.loads((tmp_path / "out.json").read_text())
    assert 0 < value < 1
