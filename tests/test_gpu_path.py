"""The GPU fast path, checked where it can be on the CPU: penalties under bf16 autocast
against fp32, nets in channels_last, the optimizer's implementation across a resume."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from arena import losses as L
from arena.checkpoint import load_optimizer
from arena.objective import Batch, DataInfo
from arena.trainer import build_objective, make_optimizer
from tests.helpers import tiny

GAN = ["data.name=shapes", "data.resolution=16", "model.width=16", "model.z_dim=8", "train.batch_size=8"]
DIM = ["data.name=shapes", "data.resolution=16", "model.width=0.125", "model.mi_units=64", "model.global_units=32",
       "model.coord_hidden=32", "objective.prior.hidden=[16]", "objective.alpha=0.5", "objective.coord=both",
       "objective.occlude=true", "objective.occlusion_block=4", "train.batch_size=8"]


def build(tmp_path, config: str, overrides: list[str]):
    cfg = tiny(config, tmp_path, *overrides)
    torch.manual_seed(0)
    return build_objective(cfg, DataInfo(3, cfg.data.resolution))


def images(n: int, res: int, seed: int) -> torch.Tensor:
    return torch.rand(n, 3, res, res, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# Measured on these nets (CPU bf16 autocast): the penalty within 0.7% of fp32, the weight
# gradient within 2% (relative norm of the difference; cosine > 0.9998). The bounds:
VALUE_RTOL, GRAD_RTOL = 2e-2, 5e-2


@pytest.mark.parametrize("config,net", [("nsgan_cp_digits", "D"), ("ie_digits", "E")])
@pytest.mark.parametrize("kind", ["contractive", "gradient"])
def test_bf16_penalties_stay_within_the_stated_tolerance_of_fp32(tmp_path, config, net, kind):
    D = build(tmp_path, config, GAN).nets[net]
    x, y = images(16, 16, 1), images(16, 16, 2)

    def penalty(bf16: bool):
        D.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            if kind == "contractive":
                value, _ = L.contractive_penalty(D, x)
            else:
                value = L.gradient_penalty(D, x, y, generator=torch.Generator().manual_seed(3))
        value.backward()
        return value.detach(), torch.cat([p.grad.flatten() for p in D.parameters() if p.grad is not None])

    ref, ref_grad = penalty(False)
    value, grad = penalty(True)
    assert value.dtype == torch.float32 and grad.dtype == torch.float32  # reduced in fp32
    assert not torch.equal(value, ref)  # it did run in bf16
    assert abs(float(value - ref)) <= VALUE_RTOL * abs(float(ref))
    assert float((grad - ref_grad).norm()) <= GRAD_RTOL * float(ref_grad.norm())


def phase_losses(objective, x: torch.Tensor) -> dict:
    out = {}
    for phase in objective.schedule():
        torch.manual_seed(5)  # the same noise in both layouts
        batch = None if phase.data == "none" else Batch(x, torch.zeros(len(x), dtype=torch.long))
        out[phase.name] = objective.loss(phase.name, batch, len(x))["loss"].detach()
    return out


@pytest.mark.parametrize("config,overrides", [("ie_digits", GAN), ("wgan_gp_digits", GAN), ("dim_l_digits", DIM)])
def test_nets_in_channels_last_compute_the_same_losses(tmp_path, config, overrides):
    """What the trainer's GPU path does (nets and batches in channels_last) runs every phase
    of the objective and changes no value beyond float rounding."""
    x = images(8, 16, 4)
    ref = phase_losses(build(tmp_path, config, overrides), x)
    objective = build(tmp_path, config, overrides)
    objective.nets.to(memory_format=torch.channels_last)
    assert any(p.dim() == 4 and p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
               for p in objective.nets.parameters())
    got = phase_losses(objective, x.contiguous(memory_format=torch.channels_last))
    assert got.keys() == ref.keys()
    for phase in ref:
        torch.testing.assert_close(got[phase], ref[phase], rtol=1e-4, atol=1e-5, msg=phase)


def test_cpu_optimizers_stay_torchs_default(tmp_path):
    objective = build(tmp_path, "nsgan_cp_digits", GAN)
    opt = make_optimizer(objective.cfg, "D", objective.nets["D"])
    assert not opt.param_groups[0]["fused"] and opt.param_groups[0]["foreach"] is None


@pytest.mark.parametrize("saved_fused", [True, False])
def test_resume_keeps_this_machines_optimizer_implementation(saved_fused):
    """A checkpoint from a GPU run (fused Adam) resumes with the CPU's update and the
    reverse; the moments carry over and the next step matches continuing as saved."""
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.randn(3))]

    def step(opt):
        opt.zero_grad()
        sum((p ** 2).sum() for p in params).backward()
        opt.step()

    first = torch.optim.Adam(params, lr=0.1, fused=saved_fused)
    step(first)
    saved = copy.deepcopy({"optimizers": {"D": first.state_dict()}, "optimizer_types": {"D": "Adam"}})  # as on disk
    mine = torch.optim.Adam([torch.nn.Parameter(p.detach().clone()) for p in params], lr=0.1,
                            fused=not saved_fused)
    assert load_optimizer(mine, saved, "D", Path("checkpoint-1")) == []  # not a setting that changed
    assert bool(mine.param_groups[0]["fused"]) is (not saved_fused)
    step(first)  # continue the saved run ...
    mine_params = mine.param_groups[0]["params"]
    mine.zero_grad()
    sum((p ** 2).sum() for p in mine_params).backward()
    mine.step()  # ... and the resumed one, with the other implementation
    for a, b in zip(params, mine_params):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7)


def test_resumed_moments_take_the_layout_of_channels_last_parameters():
    """A CPU run's Adam moments (NCHW) restored into channels_last nets (the CUDA layout):
    fused updates need parameters, grads and moments in one layout, so the moments are
    converted on load, with their values."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 4, 3)
    saved_opt = torch.optim.Adam(conv.parameters(), lr=0.1)
    conv(torch.randn(2, 3, 5, 5)).square().sum().backward()
    saved_opt.step()
    saved = copy.deepcopy({"optimizers": {"D": saved_opt.state_dict()}, "optimizer_types": {"D": "Adam"}})
    mine = copy.deepcopy(conv).to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(mine.parameters(), lr=0.1, fused=True)
    load_optimizer(opt, saved, "D", Path("checkpoint-1"))
    weight = mine.weight
    assert weight.is_contiguous(memory_format=torch.channels_last)
    for k in ("exp_avg", "exp_avg_sq"):
        moment = opt.state[weight][k]
        assert moment.stride() == weight.stride(), k
        assert torch.equal(moment, saved_opt.state[conv.weight][k]), k
    mine(torch.randn(2, 3, 5, 5)).square().sum().backward()
    opt.step()  # runs (CPU fused Adam accepts either layout: the strides above are the check)


def test_averaged_gradients_keep_the_parameters_layout(cpu_only):
    from arena.updates import average_gradients

    net = torch.nn.Conv2d(3, 4, 3).to(memory_format=torch.channels_last)
    net(torch.randn(2, 3, 5, 5)).square().sum().backward()
    before = net.weight.grad.clone()
    average_gradients(net)  # one process: the mean is the gradient itself
    assert net.weight.grad.stride() == net.weight.stride()
    assert torch.equal(net.weight.grad, before)
