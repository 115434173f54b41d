"""N processes = 1 process: a 2-process CPU run of a GAN ends with the weights of a
1-process run on the same global batches (gradients averaged, not summed)."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from arena import checkpoint as ckpt
from arena.objective import OBJECTIVES
from arena.trainer import train
from implicit_gen.gans import NSGANCP
from tests.helpers import launch_two_cpu_processes, tiny

ROOT = Path(__file__).resolve().parent.parent
# SGD, not Adam: Adam's update barely changes when every gradient is doubled, so it
# could not tell summed gradients from averaged ones.
GAN = ["data.name=shapes", "data.resolution=8", "data.num_images=64", "model.width=4", "model.z_dim=4",
       "train.batch_size=8", "optim.name=sgd", "optim.lr=0.05", "optim.betas=[0.5, 0.999]",
       "train.log_every=1", "train.sample_every=100", "train.steps=3", "train.checkpoint_every=3"]


class GlobalNoiseGAN(NSGANCP):
    """nsgan_cp whose latents do not depend on the process layout: each phase draws z for
    the global batch from one seeded stream and a process takes its rank's slice (the
    trainer gives each process noise of its own, so z differs between layouts). G's batch
    norm is removed: it normalizes with per-process batch statistics, which differ
    between layouts by design (as with DDP without SyncBatchNorm)."""

    def __init__(self, cfg, info):
        super().__init__(cfg, info)
        for module in list(self.nets["G"].modules()):
            for name, child in module.named_children():
                if isinstance(child, nn.BatchNorm2d):
                    setattr(module, name, nn.Identity())
        self.draws = 0

    def noise(self, n: int) -> torch.Tensor:
        world, rank = (dist.get_world_size(), dist.get_rank()) if dist.is_initialized() else (1, 0)
        g = torch.Generator().manual_seed(1000 + self.draws)
        self.draws += 1
        z = torch.randn(n * world, self.cfg.model.z_dim, generator=g)
        return z[rank * n:(rank + 1) * n].to(self.device)


def nets_of(run_dir) -> dict:
    state, _ = ckpt.load(ckpt.resolve_checkpoint(run_dir, "latest"))
    assert state["step"] == 3
    return state["nets"]


def test_two_process_gan_equals_one_process_on_the_same_global_batch(tmp_path, monkeypatch, cpu_only):
    script = tmp_path / "run2.py"
    script.write_text(f"""
import sys
sys.path.insert(0, {str(ROOT)!r})
from arena.objective import OBJECTIVES
from arena.distributed import shutdown
from arena.trainer import train
from tests.helpers import tiny
from tests.test_processes import GAN, GlobalNoiseGAN
OBJECTIVES.register("test_global_noise_gan")(GlobalNoiseGAN)
train(tiny("nsgan_cp_digits", {str(tmp_path / 'two')!r}, *GAN, "objective.name=test_global_noise_gan"))
shutdown()
""")
    launch_two_cpu_processes(script)
    monkeypatch.setitem(OBJECTIVES._entries, "test_global_noise_gan", GlobalNoiseGAN)
    train(tiny("nsgan_cp_digits", tmp_path / "one", *GAN, "objective.name=test_global_noise_gan"))
    one, two = nets_of(tmp_path / "one"), nets_of(tmp_path / "two")
    start = build_start(tmp_path)
    for net in ("G", "D"):
        for k, v in one[net].items():
            torch.testing.assert_close(two[net][k], v, rtol=1e-5, atol=1e-6, msg=f"{net}.{k}")
        moved = max((one[net][k] - start[net][k]).abs().max().item() for k in one[net])
        assert moved > 1e-3, f"{net} hardly trained; the comparison would be vacuous"


def build_start(tmp_path) -> dict:
    """The step-0 weights (the trainer seeds with run.seed before building the objective)."""
    from arena.data import build_dataset
    from arena.objective import build_objective, data_info

    cfg = tiny("nsgan_cp_digits", tmp_path / "start", *GAN, "objective.name=test_global_noise_gan")
    torch.manual_seed(cfg.run.seed)
    objective = build_objective(cfg, data_info(build_dataset(cfg.data, "train")))
    return {name: net.state_dict() for name, net in objective.nets.items()}

