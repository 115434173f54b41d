"""The baselines' must-show checks on digits, one command that trains what it needs (a
finished run is reused, a stopped one resumed: arena.runs' rule) and prints a table:

    python -m eval.baselines_digits [--runs runs/baselines_digits] [--ndm-steps 1000] [KEY=VALUE ...]

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

The runs are specs on eval.experiment's driver: the checks go to RUNS/checks.json (--out)
and a .md beside it; a rerun measures only runs whose checkpoint or --ndm-steps changed.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from arena.config import load_config
from arena.data import build_dataset, to_float
from arena.distributed import processes
from arena.rundir import read_metrics

from dim.baselines.nat import initial_assignment
from dim.baselines.vae import gaussian_kl

from . import experiment as X
from .cli_args import count_arg
from .probes import msssim, ndm


def images(cfg, objective, split: str) -> torch.Tensor:
    return to_float(build_dataset(cfg.data, split).images).to(objective.device)


def logged(cfg, name: str) -> list[float]:
    """The values of `name` in the run's metrics.jsonl, in order."""
    return [row[name] for row in read_metrics(Path(cfg.run.dir) / "metrics.jsonl") if name in row]


def gaussian_fit_kl(codes: torch.Tensor) -> float:
    """KL(N(m, S) || N(0, I)) for the mean m and covariance S of codes [N, d]."""
    c = codes.double()
    m, s = c.mean(0), torch.cov(c.T)
    return float(0.5 * (s.trace() + m @ m - c.shape[1] - torch.logdet(s)))


def matched_msssim(x_hat: torch.Tensor, x: torch.Tensor) -> dict:
    """MS-SSIM of reconstructions against their own images and against the images shifted by one."""
    return {"msssim_own": msssim(x_hat, x), "msssim_mismatched": msssim(x_hat, x.roll(1, 0))}


# Each check: (cfg, objective, ndm_steps) of a run at its final checkpoint (nets in eval
# mode, cfg.run.dir its directory) -> the values it records.


def check_vae(cfg, objective, ndm_steps: int) -> dict:
    x = images(cfg, objective, "test")
    with torch.no_grad():
        feats = objective.features(x)
        kl_dims = gaussian_kl(*objective.posterior(x)).mean(0)
        out = {**matched_msssim(objective.reconstruct(x), x), "active_dims": int((kl_dims > 0.1).sum())}
        train_feats = objective.features(images(cfg, objective, "train")) if ndm_steps > 0 else None
    if ndm_steps > 0:  # fitted on the training codes, reported on the test codes
        out["ndm_mu"] = ndm(train_feats["y"], feats["y"], steps=ndm_steps)
        out["ndm_sample"] = ndm(train_feats["z"], feats["z"], steps=ndm_steps)
    return out


@torch.no_grad()
def check_aae(cfg, objective, ndm_steps: int) -> dict:
    x = images(cfg, objective, "test")
    y = objective.features(x)["y"]
    return {**matched_msssim(objective.nets["decoder"](y), x), "prior_kl_gaussian_fit": gaussian_fit_kl(y),
            "d_prior_last": logged(cfg, "prior/d_prior")[-1]}


@torch.no_grad()
def check_bigan(cfg, objective, ndm_steps: int) -> dict:
    x = images(cfg, objective, "test")
    x_hat = objective.generate(objective.features(x)["y"], ema=False)
    ratios = logged(cfg, "generator/recon_ratio")
    test_ratio = (x - x_hat).flatten(1).norm(dim=1).mean() / (x.roll(1, 0) - x_hat).flatten(1).norm(dim=1).mean()
    return {**matched_msssim(x_hat, x), "recon_ratio_first_log": ratios[0], "recon_ratio_last_log": ratios[-1],
            "recon_ratio_test": float(test_ratio)}


@torch.no_grad()
def check_nat(cfg, objective, ndm_steps: int) -> dict:
    u = torch.nn.functional.normalize(objective.features(images(cfg, objective, "train"))["y"], dim=1)
    target_of, targets = objective.target_of, objective.targets()
    shuffled = target_of[torch.randperm(len(target_of), generator=torch.Generator().manual_seed(1))]
    start = initial_assignment(len(target_of), cfg.run.seed).to(target_of.device)
    return {"cosine_assigned": float((u * targets[target_of]).sum(1).mean()),
            "cosine_random": float((u * targets[shuffled]).sum(1).mean()),
            "is_permutation": bool(torch.equal(target_of.sort().values, torch.arange(len(target_of)))),
            "changed_since_start": float((target_of != start).float().mean())}


# label -> (config, overrides, check)
RUNS = {
    "vae": ("vae_digits", [], check_vae),
    "aae": ("aae_digits", [], check_aae),
    "aae_no_adversarial": ("aae_digits", ["objective.adversarial=0"], check_aae),
    "bigan": ("bigan_digits", [], check_bigan),
    "nat": ("nat_digits", [], check_nat),
}


def line(record: dict) -> str:
    """A record's checks (or why it has none) as 'name value' pairs, without the driver's fields."""
    return "  ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                     for k, v in record.items() if k not in ("run", *X.RUN_FIELDS))


def markdown(data: dict) -> str:
    return X.markdown_table(["run", "checks"], [[r["run"], line(r)] for r in data["checks"]])


def log(msg: str) -> None:
    print(f"[baselines] {msg}", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", default="runs/baselines_digits", help="folder of the runs (one per model)")
    p.add_argument("--ndm-steps", type=count_arg(0, 10**6), default=1000,
                   help="NDM training steps for the VAE (0: skip)")
    p.add_argument("--out", default="", help="JSON file of the checks (default RUNS/checks.json; .md beside it)")
    p.add_argument("overrides", nargs="*", help="config overrides for every run (KEY=VALUE)")
    args = p.parse_args(argv)
    return X.run_cli("baselines_digits", lambda: check_all(args))


def check_all(args) -> int:
    """Train (or reuse) each run, check it, print one line a run; the checks in --out and beside it."""
    runs = Path(args.runs)
    results = X.Results(X.output_file(args.out or runs / "checks.json", "--out"), {"overrides": args.overrides},
                        field="checks", key="run", render=markdown, say=log, command="eval.baselines_digits")
    specs = [X.Spec(label, load_config(config, [f"run.dir={runs / label}", "train.progress=false", *extra,
                                                *args.overrides]))
             for label, (config, extra, _) in RUNS.items()]

    def measure(spec, state) -> dict:
        cfg, objective, _ = X.load_final(state)
        return RUNS[spec.key][2](cfg, objective, args.ndm_steps)

    failed = X.run_specs(specs, X.on_main(measure), results, measure_key={"ndm_steps": args.ndm_steps}, say=log)
    if processes().main:  # the other processes hold only the records read at the start
        for record in results.data()["checks"]:
            print(f"{record['run']:20s} {line(record)}")
    return 3 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
