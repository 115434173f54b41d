"""Redraw the paper's Figure 14: histograms of the discriminator's unnormalized outputs
on real and generated data when the discriminator is over-trained (50 updates per
generator update), one panel per loss. For the implicit encoder the "discriminator"
is the encoder E, whose outputs should stay two overlapping Gaussians around mu_Q and
mu_P (E, T_P and T_Q play R rounds of their own game per G step: T, E, T, E, ...;
--ie-blocks runs R T steps, then R E steps); for the GANs the real and fake modes drift apart. Beside each histogram (and in
a table on stdout, OUT.md and OUT.json, which also keeps the outputs, so a rerun redraws
without measuring again) the separability of the two: the ROC AUC of the output
as a real/fake score and the overlap of the two histograms.

    python -m eval.figure14 --out docs/img/figure14_digits.png
    python -m eval.figure14 --out fig14.png model.width=16      (overrides for every panel)
    python -m eval.figure14 --base ie_celeba --steps 200 --out fig14.png   (a GPU)

    python -m eval.figure14 --panels ie --ie objective.contractive=0 --out ie_c0.png model.width=16

Each panel trains into RUNS/<objective> through arena.runs.ensure_trained: a panel whose
config has a finished run there is read back instead of trained again, a stopped one
resumes, and a panel whose options changed trains beside the earlier run (kept), in
RUNS/<objective>-<hash of its config>.
`--panels` draws a subset (by objective name) and `--ie` sets options of the IE panel
only. The IE panel also states the separability E would have if its outputs were
exactly its targets, N(mu_P, 1) on real and N(mu_Q, 1) on generated data:
AUC = Phi((mu_P - mu_Q) / sqrt(2)) (0.921 for the default +-1), the line A.7's argument
puts the encoder on.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import textwrap
from pathlib import Path

import torch

from arena.config import config_from_dict, merge, parse_overrides, resolve
from arena.data import build_dataset
from arena.distributed import processes

from . import experiment as X

# panel title -> (objective, overrides, phases at a 50:1 ratio, net whose output is shown).
# A phase [name, "R"] runs R (--ratio) times in a row; ("R", [phases]) repeats the group R
# times. The IE's "discriminator" is E with T_P / T_Q, a game of its own: over-trained, it
# plays that game R rounds (T, E, T, E, ...) per G step. R T-steps then R E-steps
# (--ie-blocks) would let E best-respond R times to a T that no longer moves.
GAN_PHASES = [["critic", "R"], ["generator", 1]]
IE_ROUNDS = [("R", [["discriminators", 1], ["encoder", 1]]), ["generator", 1]]
IE_BLOCKS = [["discriminators", "R"], ["encoder", "R"], ["generator", 1]]
LOSSES = {
    "GAN (log(1 - D))": ("gan", [], GAN_PHASES, "D"),
    "GAN (-log D)": ("nsgan_cp", ["objective.penalty_weight=0.0"], GAN_PHASES, "D"),
    "Least squares GAN": ("lsgan", [], GAN_PHASES, "D"),
    "WGAN-GP": ("wgan_gp", [], GAN_PHASES, "D"),
    "IE (ours)": ("ie", [], IE_ROUNDS, "E"),
}

PANELS = {spec[0]: title for title, spec in LOSSES.items()}  # --panels names: the objectives


def expand(phases: list, ratio: int) -> list[list]:
    """The train.phases of a panel: "R" becomes the ratio, a group repeated R times is written out."""
    out = []
    for entry in phases:
        if entry[0] == "R":
            out += [list(p) for p in entry[1]] * ratio
        else:
            name, n = entry
            out.append([name, ratio if n == "R" else n])
    return out


def panel_config(args, objective: str):
    """One panel's config: the --base's data and nets, this loss's defaults (the IE's with
    --ie), the over-trained schedule; its run goes to RUNS/<objective> (arena.runs.ensure_trained
    puts a panel of changed options beside the earlier run)."""
    _, extra, phases, _ = LOSSES[PANELS[objective]]
    if objective == "ie":
        extra, phases = [*extra, *args.ie], (IE_BLOCKS if args.ie_blocks else phases)
    steps, root = args.steps, Path(args.runs).resolve()  # runs/f14 and ./runs/f14 are one place
    overrides = [*args.overrides, *extra, f"run.dir={root / objective}", f"train.steps={steps}",
                 f"train.phases={json.dumps(expand(phases, args.ratio))}", "train.progress=false",
                 f"train.checkpoint_every={steps}", f"train.sample_every={steps}",
                 f"train.log_every={max(1, steps // 4)}"]
    raw = resolve(args.base).raw  # the base config with its own bases applied
    if raw.get("objective", {}).get("name") != objective:
        raw["objective"] = {"name": objective}  # the base's data, nets and optimizer; this loss's defaults
    return config_from_dict(merge(raw, parse_overrides(overrides)), name=f"figure14-{objective}")


def separability(real: torch.Tensor, fake: torch.Tensor, bins: int = 40) -> dict[str, float]:
    """How well a net's scalar output tells real from generated data.

    auc: ROC AUC of the output as a "real" score, P(s_real > s_fake) + P(tie) / 2 (the
    Mann-Whitney statistic; 0.5 = no better than chance, 1 = every real above every fake,
    0 = the reverse). overlap: sum_i min(p_i, q_i) of the two histograms on `bins` equal
    bins over the joint range (1 = the same histogram, 0 = disjoint)."""
    real, fake = real.double().flatten(), fake.double().flatten()
    if real.numel() == 0 or fake.numel() == 0:
        raise ValueError("separability needs at least one real and one generated output")
    greater = (real[:, None] > fake[None, :]).double().mean()
    ties = (real[:, None] == fake[None, :]).double().mean()
    lo, hi = float(torch.minimum(real.min(), fake.min())), float(torch.maximum(real.max(), fake.max()))
    if hi == lo:
        overlap = 1.0
    else:
        p = torch.histc(real, bins, lo, hi) / real.numel()
        q = torch.histc(fake, bins, lo, hi) / fake.numel()
        overlap = float(torch.minimum(p, q).sum())
    return {"auc": float(greater + 0.5 * ties), "overlap": overlap}


def target_separability(mu_p: float, mu_q: float) -> dict[str, float]:
    """AUC and overlap of N(mu_p, 1) against N(mu_q, 1): an encoder that met its targets.
    AUC = P(X > Y) with X - Y ~ N(mu_p - mu_q, 2); overlap = 2 Phi(-|mu_p - mu_q| / 2)."""
    phi = lambda x: 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))  # noqa: E731 - the normal cdf
    d = mu_p - mu_q
    return {"auc": phi(d / math.sqrt(2.0)), "overlap": 2.0 * phi(-abs(d) / 2.0)}


@torch.no_grad()
def outputs(objective, net: str, cfg, n: int, split: str = "test") -> tuple[torch.Tensor, torch.Tensor]:
    """The net's outputs on n images of `split` and on n samples of the live G (both seeded)."""
    ds = build_dataset(cfg.data, split)
    idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(0))[:n]
    real = torch.stack([ds[int(i)][0] for i in idx]).to(objective.device)
    fake = objective.generate(objective.latent(len(real), torch.Generator().manual_seed(1)), ema=False)
    D = objective.nets[net].eval()
    return D(real).flatten().cpu(), D(fake).flatten().cpu()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m eval.figure14", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="ie_digits", help="config whose data and nets every panel uses")
    parser.add_argument("--ratio", type=int, default=50, help="discriminator updates per generator update")
    parser.add_argument("--steps", type=int, default=20, help="generator updates per loss")
    parser.add_argument("--samples", type=int, default=360, help="real and as many generated images per panel")
    parser.add_argument("--split", default="test", choices=("test", "train"),
                        help="the real images shown: held out (test) or those the nets trained on")
    parser.add_argument("--runs", default="runs/figure14", help="each panel trains into RUNS/<objective>")
    parser.add_argument("--out", default="figure14.png", help="the PNG; the numbers go beside it (.json, .md)")
    parser.add_argument("--panels", default="", help=f"comma-separated subset of {', '.join(PANELS)}")
    parser.add_argument("--ie-blocks", action="store_true",
                        help="IE: R T_P/T_Q steps, then R E steps per G step (default: R rounds of one each)")
    parser.add_argument("--ie", action="append", default=[], metavar="KEY=VALUE",
                        help="an override of the IE panel only (repeat for more)")
    parser.add_argument("overrides", nargs="*", help="overrides for every panel, e.g. model.width=16")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return X.run_cli("figure14", lambda: run(args))


def check_args(args) -> list[str]:
    """-> the chosen panels; a ConfigError names the first bad flag (before any training)."""
    for flag, value, top in (("--ratio", args.ratio, 10**4), ("--steps", args.steps, 10**9),
                             ("--samples", args.samples, 10**6)):
        X.in_range(flag, value, top)
    chosen = X.choose(args.panels, PANELS, "--panels")
    X.output_file(args.out, "--out")
    return chosen


def measure_panel(args, spec: X.Spec, state) -> dict:
    """The panel's net on --samples real and as many generated images: their outputs (kept,
    so a rerun redraws without measuring), moments and separability."""
    _, _, _, net = LOSSES[spec.record["title"]]
    cfg, objective, _ = X.load_final(state, processes().device)  # the launch's device
    real, fake = outputs(objective, net, cfg, args.samples, args.split)
    rec = {"real_mean": real.mean().item(), "real_std": real.std().item(), "fake_mean": fake.mean().item(),
           "fake_std": fake.std().item(), **separability(real, fake), "split": args.split}
    if spec.key == "ie":
        target = target_separability(cfg.objective.mu_p, cfg.objective.mu_q)
        rec.update(target_auc=target["auc"], target_overlap=target["overlap"], options=list(args.ie),
                   schedule="blocks" if args.ie_blocks else "rounds")
    print(spec.record["title"], json.dumps(rec))
    return {**rec, "real": [round(v, 5) for v in real.tolist()], "fake": [round(v, 5) for v in fake.tolist()]}


def markdown(data: dict) -> str:
    rows = []
    for v in data["panels"]:
        if "skipped" in v:
            rows.append([v["title"], v["skipped"]])
            continue
        rows.append([v["title"], f"{v['real_mean']:.2f} +- {v['real_std']:.2f}",
                     f"{v['fake_mean']:.2f} +- {v['fake_std']:.2f}", f"{v['auc']:.3f}", f"{v['overlap']:.2f}"])
        if "target_auc" in v:
            rows.append(["(E on its targets N(mu_P, 1) / N(mu_Q, 1))", "", "", f"{v['target_auc']:.3f}",
                         f"{v['target_overlap']:.2f}"])
    return X.markdown_table(["loss", "real: mean +- std", "fake: mean +- std", "AUC", "overlap"], rows)


def draw(panels: list[dict], args, chosen: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 2.8), squeeze=False)
    for ax, p in zip(axes[0], panels):
        ax.set_title(p["title"], fontsize=9)
        ax.set_yticks([])
        if "skipped" in p:
            ax.text(0.5, 0.5, p["skipped"], transform=ax.transAxes, ha="center", fontsize=7, wrap=True)
            continue
        both = p["real"] + p["fake"]
        bins = torch.linspace(min(both), max(both) + 1e-6, 41).numpy()
        for name, color in (("real", "tab:blue"), ("fake", "tab:orange")):
            ax.hist(p[name], bins=bins, alpha=0.6, label=name, color=color)
        text = f"AUC {p['auc']:.3f}\noverlap {p['overlap']:.2f}"
        if "target_auc" in p:
            text += f"\ntargets: {p['target_auc']:.3f} / {p['target_overlap']:.2f}"
        ax.text(0.02, 0.97, text, transform=ax.transAxes, va="top", fontsize=8)
    axes[0][0].legend(fontsize=8, loc="upper right")
    ie_options = args.ie if "ie" in chosen else []
    title = (f"{args.base} {' '.join([*args.overrides, *ie_options])}: outputs on real ({args.split} split) and "
             f"generated data after {args.steps} generator steps at {args.ratio}:1 (AUC: the output as a "
             f"real/fake score)")
    fig.suptitle(textwrap.fill(title, 45 * len(panels)), fontsize=9)  # wrapped to the panels' width
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    plt.close(fig)


def run(args) -> int:
    """The panels as specs on eval.experiment's driver, then the figure from their records."""
    chosen = check_args(args)
    specs = [X.Spec(name, panel_config(args, name), {"title": PANELS[name]}) for name in chosen]
    head = {k: getattr(args, k) for k in ("base", "ratio", "steps", "samples", "split", "overrides", "ie", "ie_blocks")}
    results = X.Results(Path(args.out).with_suffix(".json"), head, field="panels", key="panel", render=markdown,
                        command="eval.figure14")
    X.run_specs(specs, X.on_main(lambda spec, state: measure_panel(args, spec, state)), results,
                measure_key={"samples": args.samples}, say=print)
    if processes().main:  # the records are measured and written there
        panels = [results.records[n] for n in chosen if n in results.records]
        draw(panels, args, chosen)
        print(f"wrote {args.out}, {results.path} and {results.md}\n")
        print(markdown({"panels": panels}), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
