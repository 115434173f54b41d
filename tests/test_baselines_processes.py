"""N processes = 1 process for the baselines: 2 CPU processes train the same VAE, AAE,
BiGAN and NAT weights (and NAT's assignment) as 1 process on the same global batches
(gradients averaged, batch norm over the global batch with model.sync_bn, training noise
drawn for the global batch, NAT re-assigning on the gathered batch)."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist

from arena import checkpoint as ckpt
from arena.objective import OBJECTIVES
from arena.trainer import train
from dim.baselines import AAE, NAT, VAE, BiGAN
from tests.helpers import launch_two_cpu_processes, tiny
from tests.test_baselines import TINY, TINY_D

ROOT = Path(__file__).resolve().parent.parent
# SGD: Adam's update hardly changes when every gradient doubles, so it could not tell
# summed gradients from averaged ones.
COMMON = [*TINY, "model.sync_bn=true", "optim.name=sgd", "optim.lr=0.05", "train.log_every=1",
          "train.sample_every=100", "train.steps=3", "train.checkpoint_every=3"]


class GlobalNoise:
    """Training noise independent of the process layout: each draw is made for the global
    batch from one seeded stream and a process takes its rank's rows (the trainer gives
    every process noise of its own, so the noise would differ between layouts)."""

    draws = 0

    def noise(self, n: int, dim: int) -> torch.Tensor:
        world, rank = (dist.get_world_size(), dist.get_rank()) if dist.is_initialized() else (1, 0)
        g = torch.Generator().manual_seed(1000 + self.draws)
        self.draws += 1
        z = torch.randn(n * world, dim, generator=g)
        return z[rank * n:(rank + 1) * n].to(self.device)

    def prior_samples(self, n: int, dim: int) -> torch.Tensor:
        return self.noise(n, dim)  # the AAE's prior is N(0, I)


CLASSES = {"vae": VAE, "aae": AAE, "bigan": BiGAN, "nat": NAT}
GLOBAL = {name: type(f"Global{cls.__name__}", (GlobalNoise, cls), {}) for name, cls in CLASSES.items()}


def register() -> None:
    for name, cls in GLOBAL.items():
        if f"test_global_{name}" not in OBJECTIVES._entries:
            OBJECTIVES.register(f"test_global_{name}")(cls)


def run(name: str, run_dir) -> None:
    train(tiny(f"{name}_digits", run_dir, *COMMON, *TINY_D[name], f"objective.name=test_global_{name}"))


def nets_of(run_dir) -> dict:
    state, _ = ckpt.load(ckpt.resolve_checkpoint(run_dir, "latest"))
    assert state["step"] == 3
    return state["nets"]


def test_two_processes_train_the_one_process_weights(tmp_path, cpu_only):
    script = tmp_path / "run2.py"
    script.write_text(f"""
import sys
sys.path.insert(0, {str(ROOT)!r})
from arena.distributed import shutdown
from tests.test_baselines_processes import register, run
register()
for name in ("vae", "aae", "bigan", "nat"):
    run(name, {str(tmp_path)!r} + "/two_" + name)
shutdown()
""")
    launch_two_cpu_processes(script)
    register()
    for name in CLASSES:
        run(name, tmp_path / f"one_{name}")
        one, two = nets_of(tmp_path / f"one_{name}"), nets_of(tmp_path / f"two_{name}")
        for net in one:
            for k, v in one[net].items():
                torch.testing.assert_close(two[net][k], v, rtol=1e-4, atol=1e-5, msg=f"{name} {net}.{k}")
        if name == "nat":  # re-assigned in every epoch: the assignment moved, identically
            assignment = one["encoder"]["assignment.target_of"]
            assert torch.equal(assignment.sort().values, torch.arange(len(assignment)))
            assert not torch.equal(assignment, start_weights(name, tmp_path)["encoder"]["assignment.target_of"])
        moved = max((one["encoder"][k].float() - v.float()).abs().max().item()
                    for k, v in start_weights(name, tmp_path)["encoder"].items())
        assert moved > 1e-3, f"{name}: the encoder hardly trained; the comparison would be vacuous"


def start_weights(name: str, tmp_path) -> dict:
    """The step-0 weights (the trainer seeds with run.seed before building the objective)."""
    from arena.data import build_dataset
    from arena.objective import build_objective, data_info

    cfg = tiny(f"{name}_digits", tmp_path / f"start_{name}", *COMMON, *TINY_D[name],
               f"objective.name=test_global_{name}")
    torch.manual_seed(cfg.run.seed)
    objective = build_objective(cfg, data_info(build_dataset(cfg.data, "train")))
    return {n: net.state_dict() for n, net in objective.nets.items()}
