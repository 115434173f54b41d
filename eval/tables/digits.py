"""A table the CPU can reproduce in a few minutes: the digits configs at short budgets.

The paper has no digits table, so there is no paper column: it exercises the whole
path of `eval.reproduce` (train, skip, resume, probe, FID/IS, write, print) on the
bundled scikit-learn digits and sets DIM beside the paper's comparison models (VAE,
AAE, BiGAN, NAT), a supervised classifier and a random encoder on the same probes.
Every trained encoder runs half its config's own steps (DIM, VAE, AAE, NAT 1000 -> 500;
BiGAN 3000 -> 1500, the length its digits config needs to pair x with E(x)), so the
table runs in minutes; measured values are therefore below those of docs/dim.md and
docs/baselines.md. Representation: the paper's Table 1 probes (MLP on conv / fc / Y)
plus Table 3's SVM on Y and NDM with and without the sigmoid (the VAE's NDM on z, its
posterior sample: objective.ndm_layer); generation: Table 10's IS / FID in the shipped
digits classifier's features (not Inception), the generators and the three baselines
with a decoder (VAE and AAE decode prior codes, BiGAN's generator), from the same runs.
"""
from __future__ import annotations

from . import Column, Group, Row, RunSpec, Table, register

REP, GEN = "digits: representation", "digits: generation"


def _both(config: str, steps: int) -> dict[str, RunSpec]:
    """One run of a baseline with a decoder, probed in the representation group and
    sampled in the generation group."""
    spec = RunSpec(config, (f"train.steps={steps}",))
    return {REP: spec, GEN: spec}

DIGITS = register(Table(
    name="digits",
    title="Digits (16 px, CPU): DIM(L), DIM(G), VAE, AAE, BiGAN, NAT, supervised, random encoder; "
          "IE, NS-GAN-CP, WGAN-GP, VAE, AAE, BiGAN",
    source="no paper numbers (the paper has no digits table); measured values only",
    groups=(
        Group(REP, (Column("conv", "mlp/conv"), Column("fc", "mlp/fc"), Column("Y", "mlp/y"),
                    Column("SVM (Y)", "svm/y"), Column("NDM", "ndm/sigmoid(y)"),
                    Column("NDM (no sigmoid)", "ndm/y"))),
        Group(GEN, (Column("IS", "isc"), Column("FID", "fid"))),
    ),
    rows=(
        Row("dim_l", "DIM(L) (JSD)", {REP: RunSpec("dim_l_digits", ("train.steps=500",))}),
        Row("dim_g", "DIM(G)", {REP: RunSpec("dim_g_digits", ("train.steps=500",))}),
        Row("vae", "VAE", _both("vae_digits", 500), measures={"NDM": "ndm/sigmoid(z)", "NDM (no sigmoid)": "ndm/z"},
            note="NDM on z, a posterior sample (objective.ndm_layer); samples: the decoder on z ~ N(0, I)"),
        Row("aae", "AAE", _both("aae_digits", 500), note="samples: the decoder on codes drawn from the prior"),
        Row("bigan", "BiGAN", _both("bigan_digits", 1500),
            note="1500 steps: half its config's 3000 (as every encoder row here)"),
        Row("nat", "NAT", {REP: RunSpec("nat_digits", ("train.steps=500",))}),
        Row("supervised", "Fully supervised", {REP: RunSpec("supervised_digits", ("train.steps=500",))},
            measures={"conv": "classifier", "fc": "", "Y": "", "SVM (Y)": "", "NDM": "", "NDM (no sigmoid)": ""},
            note="the classifier's own test accuracy"),
        Row("random", "Random encoder", {REP: RunSpec("dim_l_digits", name="dim_l_digits-random", mode="random")},
            note="dim_l_digits' encoder at step 0 (the trainer's seed, no training)"),
        Row("real", "Real data", {GEN: RunSpec("ie_digits", name="digits-real", mode="real")},
            note="the 360 test images against the 1437 training images"),
        Row("ie", "IE (ours)", {GEN: RunSpec("ie_digits", ("train.steps=250",))}),
        Row("nsgan_cp", "NS-GAN-CP", {GEN: RunSpec("nsgan_cp_digits", ("train.steps=250",))}),
        Row("wgan_gp", "WGAN-GP", {GEN: RunSpec("wgan_gp_digits", ("train.steps=100",))},
            note="5 critic steps per generator step"),
    ),
    probe={"mlp_epochs": 50, "runs": 3, "ndm_steps": 1000},
    num_samples=2000,
    notes=("IS / FID in the shipped digits classifier's features (eval/weights/digits-32.pt), not Inception: "
           "compare rows with each other, not with the paper's Table 10.",),
))
