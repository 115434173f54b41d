"""A table the CPU can reproduce in a few minutes: the digits configs at short budgets.

The paper has no digits table, so there is no paper column: it exercises the whole
path of `eval.reproduce` (train, skip, resume, probe, FID/IS, write, print) on the
bundled scikit-learn digits. The steps are cut from the configs' own (1000 / 1500 /
600) so the table runs in minutes; measured values are therefore below those of
docs/dim.md and docs/generators.md. Representation: the paper's Table 1 probes (MLP
on conv / fc / Y) plus Table 3's SVM on Y and NDM; generation: Table 10's IS / FID in
the shipped digits classifier's features (not Inception).
"""
from __future__ import annotations

from . import Column, Group, Row, RunSpec, Table, register

REP, GEN = "digits: representation", "digits: generation"

DIGITS = register(Table(
    name="digits",
    title="Digits (16 px, CPU): DIM(L), DIM(G), supervised, random encoder; IE, NS-GAN-CP, WGAN-GP",
    source="no paper numbers (the paper has no digits table); measured values only",
    groups=(
        Group(REP, (Column("conv", "mlp/conv"), Column("fc", "mlp/fc"), Column("Y", "mlp/y"),
                    Column("SVM (Y)", "svm/y"), Column("NDM", "ndm/sigmoid(y)"))),
        Group(GEN, (Column("IS", "isc"), Column("FID", "fid"))),
    ),
    rows=(
        Row("dim_l", "DIM(L) (JSD)", {REP: RunSpec("dim_l_digits", ("train.steps=500",))}),
        Row("dim_g", "DIM(G)", {REP: RunSpec("dim_g_digits", ("train.steps=500",))}),
        Row("supervised", "Fully supervised", {REP: RunSpec("supervised_digits", ("train.steps=500",))},
            measures={"conv": "classifier", "fc": "", "Y": "", "SVM (Y)": "", "NDM": ""},
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
