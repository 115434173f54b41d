"""Export a trained model as files that `torch` alone loads and runs, with a JSON card.

    python -m eval.export --run runs/dim_l_digits --out exported/dim_l_digits
    python -m eval.export --run runs/ie_digits --out exported/ie_digits

Writes into --out (torch.export programs, loaded with torch.export.load(path).module()):

  encoders (dim, supervised, nat: objectives with features() that do not generate):
    model.pt2        images float [B, C, H, W] in [0, 1]   -> {"conv": [B, Dc], "fc": [B, Df], "y": [B, Dy]}
    model_uint8.pt2  images uint8 [B, C, H, W] in [0, 255] -> the same
  generators (ie, nsgan_cp, wgan_gp, ...; vae, aae, bigan: their decoder / generator):
    model.pt2        latents z float [B, z_dim] ~ N(0, I)  -> images float [B, C, H, W] in [0, 1]
  card.json          what goes in and out, resolution, channels, layers, the step, the
                     training config, and the run's latest probe / FID figures from metrics.jsonl

The toolkit's [-1, 1] pixel convention lives inside the programs (x / 127.5 - 1 for uint8,
2x - 1 for [0, 1]; (G(z) + 1) / 2 out), as does the batch norm in eval mode; the batch size
is free; a program runs on the device it was exported on (--device, default cpu).
torch.export, not TorchScript: torch.jit warns that it is deprecated (torch 2.14 here),
while torch.export (non-strict, batch dimension declared dynamic, save/load) is in every
torch this project supports (>= 2.4); a program holds the graph and the weights, no Python
source. One program per input dtype because torch.export fixes dtypes.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch
from torch import nn

from arena.images import atomic_file
from arena.registry import ConfigError, cli_error
from arena.runs import load_run

from .cli_args import device_arg
from .plot_run import NOT_VALUES, flatten, read_metrics


def to_model_range(x: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> x / 127.5 - 1; float [0, 1] -> 2x - 1: the toolkit's [-1, 1] images.
    Type promotion makes the float32: no explicit conversion, whose device a program records."""
    return x / 127.5 - 1 if x.dtype == torch.uint8 else x * 2 - 1


class EncoderProgram(nn.Module):
    """images -> {layer: features}: the objective's own features() after the pixel conversion.
    The modules features() runs are registered here, so their weights (and only theirs, not
    the critics') become the program's."""

    def __init__(self, objective, ema: bool, example: torch.Tensor):
        super().__init__()
        self.objective, self.ema = objective, ema
        self.used = nn.ModuleList(modules_called(lambda: self.forward(example)))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.objective.features(to_model_range(x), ema=self.ema)


def modules_called(fn) -> list[nn.Module]:
    """Every module whose forward runs during fn() (shared parameters count once when registered)."""
    seen: dict[int, nn.Module] = {}

    def record(module, args) -> None:  # a pre-hook that returns None leaves the inputs alone
        seen.setdefault(id(module), module)

    hook = nn.modules.module.register_module_forward_pre_hook(record)
    try:
        with torch.no_grad():
            fn()
    finally:
        hook.remove()
    return list(seen.values())


class GeneratorProgram(nn.Module):
    """z -> images in [0, 1]: (G(z) + 1) / 2, G in eval mode (its batch norm's running statistics)."""

    def __init__(self, G: nn.Module):
        super().__init__()
        self.G = G

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return ((self.G(z) + 1) / 2).clamp(0, 1)


def export_program(module: nn.Module, example: torch.Tensor, path: Path) -> None:
    """torch.export with a dynamic batch dimension, saved atomically to `path`."""
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    program = torch.export.export(module, (example,), dynamic_shapes=({0: batch},), strict=False)
    with atomic_file(path) as tmp:
        torch.export.save(program, tmp)


def run_figures(run_dir: Path) -> dict:
    """The latest value (and its step) of each probe result and generator metric the run logged."""
    from .dim_probes import PROBES
    from .fidelity import METRICS

    figures: dict[str, dict] = {}
    try:
        rows = read_metrics(run_dir)
    except ConfigError:  # no metrics file: no figures
        return figures
    for row in rows:
        settings = row.get("settings")
        if isinstance(settings, dict) and settings.get("random_init"):  # dim_probes --random-init: other weights
            continue
        for name, value in flatten({k: v for k, v in row.items() if k not in NOT_VALUES}).items():
            head = name.split("/")[0]
            if head in PROBES.names() or head.split("_")[0] in METRICS + ("precision", "recall"):
                figures[name] = {"value": value, "step": row.get("step")}
    return figures


def export(run: str | Path, out: str | Path, checkpoint: str = "latest", ema: bool = True,
           device: str = "cpu") -> dict:
    """Write the program(s) and card.json of `run` into the folder `out`; -> the card. A program
    runs on the device it was exported on (torch.export records it)."""
    cfg, objective, step = load_run(run, checkpoint, device)
    if not (objective.generates or callable(getattr(objective, "features", None))):
        raise ConfigError(f"--run: objective '{cfg.objective.name}' neither generates images nor has an "
                          f"encoder with features(); export covers encoders (dim, supervised) and generators")
    info, out = objective.info, Path(out)
    exported = getattr(objective, "decoder_player", "G") if objective.generates else "encoder"
    card = {"run": str(run), "objective": cfg.objective.name, "step": step, "ema": ema and exported in objective.ema,
            "resolution": info.resolution, "channels": info.channels, "device": str(device),
            "torch": torch.__version__, "load": "torch.export.load(path).module()"}
    out.mkdir(parents=True, exist_ok=True)
    if objective.generates:
        z = objective.latent(2, torch.Generator().manual_seed(0)).to(device)
        objective.generate(z, ema=ema)  # settles the EMA generator's batch norm statistics first
        G = objective.net(exported, ema)  # VAE, AAE: their decoder
        program = GeneratorProgram(G).eval()
        export_program(program, z, out / "model.pt2")
        card |= {"kind": "generator", "files": {"model.pt2": "latents"}, "z_dim": z.shape[1],
                 "input": f"z float32 [B, {z.shape[1]}], {getattr(objective, 'latent_law', lambda: 'N(0, I)')()}",
                 "output": f"images float32 [B, {info.channels}, {info.resolution}, {info.resolution}] in [0, 1]"}
    else:
        x = torch.rand(2, info.channels, info.resolution, info.resolution,
                       generator=torch.Generator().manual_seed(0)).to(device)
        program = EncoderProgram(objective, ema, x).eval()
        layers = {k: list(v.shape[1:]) for k, v in program(x).items()}
        export_program(program, x, out / "model.pt2")
        export_program(program, (x * 255).round().to(torch.uint8), out / "model_uint8.pt2")
        shape = f"[B, {info.channels}, {info.resolution}, {info.resolution}]"
        card |= {"kind": "encoder", "files": {"model.pt2": "float images", "model_uint8.pt2": "uint8 images"},
                 "layers": layers, "input": f"images float32 {shape} in [0, 1] (model.pt2), "
                                            f"uint8 {shape} in [0, 255] (model_uint8.pt2)",
                 "output": {k: f"float32 [B, {', '.join(map(str, d))}]" for k, d in layers.items()}}
    card |= {"figures": run_figures(Path(run)), "config": dataclasses.asdict(cfg)}
    with atomic_file(out / "card.json") as tmp:
        Path(tmp).write_text(json.dumps(card, indent=1, default=str) + "\n")
    return card


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m eval.export", description=__doc__.split("\n")[0])
    p.add_argument("--run", required=True, help="run directory")
    p.add_argument("--checkpoint", default="latest", help="'latest' or a checkpoint directory")
    p.add_argument("--ema", action=argparse.BooleanOptionalAction, default=True,
                   help="the EMA weights where the run keeps them (generators: G's EMA)")
    p.add_argument("--device", type=device_arg, default="cpu", help="where the programs will run (cpu, cuda, cuda:1, ...)")
    p.add_argument("--out", required=True, help="folder to write model.pt2 (model_uint8.pt2) and card.json into")
    args = p.parse_args(argv)
    try:
        if Path(args.out).is_file():
            raise ConfigError(f"--out: {args.out} is a file; give the folder to write the model files into")
        try:
            card = export(args.run, args.out, args.checkpoint, args.ema, args.device)
        except OSError as e:
            raise ConfigError(f"--out: cannot write into {args.out}: {e.strerror or e}") from None
    except ConfigError as e:
        return cli_error(e)
    print(f"wrote {args.out}: {card['kind']} of {card['objective']} (step {card['step']}): "
          f"{', '.join(card['files'])}, card.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
