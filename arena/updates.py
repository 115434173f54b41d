"""A player's update, piece by piece: the optimizer, which weights get gradients, the
mean of the gradients over processes, clipping, the EMA copy, and batch-norm buffers
kept identical on every process.

Gradients are averaged here rather than by DistributedDataParallel because the
penalties take gradients w.r.t. inputs with `create_graph=True`, which DDP's reducer
does not support.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from .config import Config

# optim.name -> (class, the keyword that takes beta1): SGD's momentum is Adam's beta1.
# The config loader has checked the name; this only maps it.
OPTIMIZERS = {
    "adam": (torch.optim.Adam, lambda betas: {"betas": tuple(betas)}),
    "adamw": (torch.optim.AdamW, lambda betas: {"betas": tuple(betas)}),
    "sgd": (torch.optim.SGD, lambda betas: {"momentum": betas[0]}),
}


def use_gpu_paths(setting: str, device: torch.device | str) -> bool:
    """train.gpu_paths: whether the fused optimizers and the channels_last nets and batches
    are used. 'auto': on CUDA only; 'on': on any device (the CPU runs them too, so the
    tests exercise the code a GPU runs); 'off': nowhere."""
    return setting == "on" or (setting == "auto" and torch.device(device).type == "cuda")


def make_optimizer(cfg: Config, player: str, net: nn.Module) -> torch.optim.Optimizer:
    o = cfg.optim
    over = o.players.get(player)
    lr = over.lr if over and over.lr is not None else o.lr
    betas = over.betas if over and over.betas is not None else o.betas
    wd = over.weight_decay if over and over.weight_decay is not None else o.weight_decay
    params = [p for p in net.parameters() if p.requires_grad]
    # The fused update: one kernel for all of a player's parameters instead of a handful
    # per tensor, and a GradScaler steps it without reading found-inf on the host.
    fused = bool(params) and use_gpu_paths(cfg.train.gpu_paths, params[0].device)
    cls, beta1 = OPTIMIZERS[o.name]
    opt = cls(params, lr=lr, weight_decay=wd, **beta1(betas), **({"fused": True} if fused else {}))
    if fused and opt.defaults.get("momentum"):
        # torch's fused SGD allocates its momentum buffers uninitialised on its first step
        # and lets the kernel fill them; a step the GradScaler skips (an fp16 overflow, common
        # in the first steps) leaves them holding garbage that the next step takes for
        # momentum. Zero buffers give the first step buf = momentum * 0 + g = g, the unfused
        # first step's buffer exactly (dampening 0).
        for p in params:
            opt.state[p]["momentum_buffer"] = torch.zeros_like(p)
    for g in opt.param_groups:
        # the schedule's base (torch's name for it): saved with the state, so that a resume
        # compares the config's lr with the saved base, not with the decayed lr of the last step
        g["initial_lr"] = g["lr"]
    return opt


def set_requires_grad(nets: dict[str, nn.Module], players: tuple[str, ...]) -> None:
    # Players that do not step in this phase get no weight gradients (saves the
    # backward through them; penalties still differentiate w.r.t. inputs).
    for name, net in nets.items():
        net.requires_grad_(name in players)


def clip_gradients(objective, player: str, limit: float) -> None:
    """Rescale the gradient of each of the player's clip groups to norm <= limit."""
    for part in objective.clip_groups(player):
        torch.nn.utils.clip_grad_norm_(part.parameters(), limit)


@torch.no_grad()
def ema_update(ema: nn.Module, net: nn.Module, decay: float) -> None:
    # ema <- decay * ema + (1 - decay) * net; buffers (batch-norm statistics) are copied
    for e, p in zip(ema.parameters(), net.parameters()):
        e.lerp_(p, 1.0 - decay)
    for e, b in zip(ema.buffers(), net.buffers()):
        e.copy_(b)


def average_gradients(net: nn.Module) -> None:
    """Every trainable parameter's gradient becomes its mean over the processes (one flat
    all-reduce); a parameter without a gradient counts as zero. The identity in one process."""
    params = [p for p in net.parameters() if p.requires_grad]
    if not params:
        return
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in params])
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    if world > 1:
        dist.all_reduce(flat)  # the sum over processes ...
        flat /= world  # ... over their number
    offset = 0
    for p in params:
        n = p.numel()
        # in p's own layout (channels_last on the GPU path): fused optimizers need grads,
        # moments and parameters alike, and autograd's own grads follow the parameter's strides
        p.grad = torch.empty_like(p).copy_(flat[offset : offset + n].view(p.shape))
        offset += n


def sync_buffers(net: nn.Module) -> None:
    """BatchNorm statistics are per process; keep rank 0's so every copy is identical
    (one flat broadcast; integer counters advance alike on every process)."""
    bufs = [b for b in net.buffers() if b.dtype.is_floating_point]
    if bufs and dist.is_available() and dist.is_initialized():
        flat = torch.cat([b.flatten() for b in bufs])
        dist.broadcast(flat, src=0)
        offset = 0
        for b in bufs:
            b.copy_(flat[offset : offset + b.numel()].view_as(b))
            offset += b.numel()
