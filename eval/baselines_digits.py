"""The baselines' must-show checks on digits, one command that trains what it needs (a
finished run is reused, a stopped one resumed: arena.runs' rule) and prints a table:

    python -m eval.baselines_digits [--runs runs/baselines_digits] [--ndm-steps 1000]

- VAE: its decoder's reconstructions of the TEST images, Dec(mu), against those images
  (own) and against the test images shifted by one (mismatched pairs), by MS-SSIM; active
  latent dimensions (test-mean KL > 0.1 nat); NDM on mu and on a posterior sample z.
- AAE, with and without the adversarial term (objective.adversarial=0): how far the test
  codes are from the prior N(0, I), as the KL of a Gaussian fitted to them,
  KL(N(m, S) || N(0, I)) = 1/2 (tr S + m'm - d - log det S), and prior_D's JSD bound over
  the last logged steps; own / mismatched MS-SSIM.
- NAT: the mean cosine of the TRAINING images' outputs to their assigned targets (test
  images have none) and to a random permutation of them; whether the assignment is a
  permutation, and the fraction of images whose target changed since the start.
- BiGAN: the logged ||x - G(E(x))|| / ||x' - G(E(x))|| at the first and last log, and on
  the test set; own / mismatched MS-SSIM of G(E(x)).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from arena.config import load_config
from arena.data import build_dataset, to_float
from arena.runs import ensure_trained, load_run

from dim.baselines.nat import initial_assignment
from dim.baselines.vae import gaussian_kl

from . import experiment as X
from .cli_args import count_arg
from .probes import msssim, ndm

# label -> (config, overrides)
RUNS = {
    "vae": ("vae_digits", []),
    "aae": ("aae_digits", []),
    "aae_no_adversarial": ("aae_digits", ["objective.adversarial=0"]),
    "bigan": ("bigan_digits", []),
    "nat": ("nat_digits", []),
}


def trained(label: str, runs: Path):
    """The run `label` at its full length, as the core's run rule decides (arena.runs:
    reused when finished, resumed when stopped, beside a run dir of another config)."""
    name, overrides = RUNS[label]
    cfg = load_config(name, [f"run.dir={runs / label}", "train.progress=false", *overrides])
    state = ensure_trained(cfg, say=lambda msg: print(f"[baselines] {label}: {msg}", flush=True))
    return (*load_run(state.run_dir), Path(state.run_dir))


def metric_rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def gaussian_fit_kl(codes: torch.Tensor) -> float:
    """KL(N(m, S) || N(0, I)) for the mean m and covariance S of codes [N, d]."""
    c = codes.double()
    m, s = c.mean(0), torch.cov(c.T)
    return float(0.5 * (s.trace() + m @ m - c.shape[1] - torch.logdet(s)))


def matched_msssim(x_hat: torch.Tensor, x: torch.Tensor) -> tuple[float, float]:
    """MS-SSIM of reconstructions against their own images and against the images shifted by one."""
    return msssim(x_hat, x), msssim(x_hat, x.roll(1, 0))


def check_vae(objective, x: torch.Tensor, x_train: torch.Tensor, ndm_steps: int) -> dict:
    objective.nets.eval()
    with torch.no_grad():
        feats = objective.features(x)
        mu, log_sigma = objective.posterior(x)
        kl_dims = gaussian_kl(mu, log_sigma).mean(0)
        own, other = matched_msssim(objective.reconstruct(x), x)
    out = {"msssim_own": own, "msssim_mismatched": other, "active_dims": int((kl_dims > 0.1).sum())}
    if ndm_steps > 0:  # fitted on the training codes, reported on the test codes
        train_feats = objective.features(x_train)
        out["ndm_mu"] = ndm(train_feats["y"], feats["y"], steps=ndm_steps)
        out["ndm_sample"] = ndm(train_feats["z"], feats["z"], steps=ndm_steps)
    return out


@torch.no_grad()
def check_aae(objective, x: torch.Tensor, run_dir: Path) -> dict:
    objective.nets.eval()
    y = objective.features(x)["y"]
    own, other = matched_msssim(objective.nets["decoder"](y), x)
    bounds = [r["prior/d_prior"] for r in metric_rows(run_dir) if "prior/d_prior" in r]
    return {"msssim_own": own, "msssim_mismatched": other, "prior_kl_gaussian_fit": gaussian_fit_kl(y),
            "d_prior_last": bounds[-1]}


@torch.no_grad()
def check_bigan(objective, x: torch.Tensor, run_dir: Path) -> dict:
    objective.nets.eval()
    x_hat = objective.generate(objective.features(x)["y"], ema=False)
    own, other = matched_msssim(x_hat, x)
    ratios = [r["generator/recon_ratio"] for r in metric_rows(run_dir) if "generator/recon_ratio" in r]
    test_ratio = (x - x_hat).flatten(1).norm(dim=1).mean() / (x.roll(1, 0) - x_hat).flatten(1).norm(dim=1).mean()
    return {"msssim_own": own, "msssim_mismatched": other, "recon_ratio_first_log": ratios[0],
            "recon_ratio_last_log": ratios[-1], "recon_ratio_test": float(test_ratio)}


@torch.no_grad()
def check_nat(objective, x_train: torch.Tensor, seed: int) -> dict:
    objective.nets.eval()
    u = torch.nn.functional.normalize(objective.features(x_train)["y"], dim=1)
    target_of, targets = objective.target_of, objective.targets()
    shuffled = target_of[torch.randperm(len(target_of), generator=torch.Generator().manual_seed(1))]
    start = initial_assignment(len(target_of), seed).to(target_of.device)
    return {"cosine_assigned": float((u * targets[target_of]).sum(1).mean()),
            "cosine_random": float((u * targets[shuffled]).sum(1).mean()),
            "is_permutation": bool(torch.equal(target_of.sort().values, torch.arange(len(target_of)))),
            "changed_since_start": float((target_of != start).float().mean())}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", default="runs/baselines_digits", help="folder of the runs (one per model)")
    p.add_argument("--ndm-steps", type=count_arg(0, 10**6), default=1000, help="NDM training steps for the VAE (0: skip)")
    args = p.parse_args(argv)
    return X.run_cli("baselines_digits", lambda: check_all(Path(args.runs), args.ndm_steps))


def check_all(runs: Path, ndm_steps: int) -> int:
    """Train (or reuse) each run, check it, print one line a run and write checks.json."""
    results = {}
    for label in RUNS:
        cfg, objective, _, run_dir = trained(label, runs)
        x = to_float(build_dataset(cfg.data, "test").images).to(objective.device)
        x_train = to_float(build_dataset(cfg.data, "train").images).to(objective.device)
        if label == "vae":
            results[label] = check_vae(objective, x, x_train, ndm_steps)
        elif label == "nat":
            results[label] = check_nat(objective, x_train, cfg.run.seed)
        elif label.startswith("aae"):
            results[label] = check_aae(objective, x, run_dir)
        else:
            results[label] = check_bigan(objective, x, run_dir)
    for label, values in results.items():
        print(f"{label:20s} " + "  ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                                          for k, v in values.items()))
    (runs / "checks.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
