"""What fills a row of a paper table: the probes, the supervised classifier's accuracy and
IS / FID / KID, at the table's settings times --measure-scale (eval.reproduce's measures).
"""
from __future__ import annotations

import dataclasses
import json
import statistics
from pathlib import Path

import torch

from arena.rundir import read_metrics

from .dim_probes import COUNTS, LAYERS, ProbeSettings
from .tables import GENERATOR_MEASURES, PROBE_MEASURES, Table
from .tables.report import cell, empty_record


def scaled(value: int, factor: float, least: int = 1) -> int:
    return max(least, int(round(value * factor)))


@dataclasses.dataclass
class Measuring:
    """What fills a row's cells, at the table's settings times --measure-scale. Its methods
    take an eval.reproduce.Entry (the row, its measures, its resolved config)."""

    table: Table
    scale: float  # --measure-scale
    device: str

    @property
    def num_samples(self) -> int:
        return scaled(self.table.num_samples, self.scale, least=20)

    def probe_settings(self, measures: dict[str, str]) -> list[ProbeSettings]:
        """One ProbeSettings per set of svm / mlp layers (run_probes reads both at the same
        layers; SVM on conv when only the MLP needs conv would be wasted), the other probes
        with the first. [] if the row has no probe measure."""
        wanted = [m.split("/") for m in dict.fromkeys(measures.values()) if m in PROBE_MEASURES]
        by_layers: dict[tuple, list[str]] = {}
        for probe in dict.fromkeys(p for p, _ in wanted):
            layers = tuple(sorted({k for p, k in wanted if p == probe}, key=LAYERS.index)) \
                if probe in ("mlp", "svm") else ()
            by_layers.setdefault(layers, []).append(probe)
        if () in by_layers and len(by_layers) > 1:  # msssim / mine / ndm / semi join the first call
            others = by_layers.pop(())
            by_layers[next(iter(by_layers))] += others
        # the code NDM reads, from its measure: ndm/sigmoid(z) -> z
        ndm_code = next((k.removeprefix("sigmoid(").removesuffix(")") for p, k in wanted if p == "ndm"), "")
        out = []
        for layers, probes in by_layers.items():
            # only code probes (msssim / mine / ndm / semi): the layers are just where features are read
            s = ProbeSettings(**{**self.table.probe, "probes": tuple(probes), "layers": layers or ("y",),
                                 "ndm_layer": ndm_code if "ndm" in probes else "", "device": self.device})
            for name in COUNTS:
                setattr(s, name, scaled(getattr(s, name), self.scale))
            out.append(s)
        return out

    def key(self, e, run_dir: Path) -> dict:
        """What a measurement depends on: a stored one with the same key is reused."""
        probes = [settings_dict(s) for s in self.probe_settings(e.measures)] or None
        gen = self.num_samples if set(e.measures.values()) & set(GENERATOR_MEASURES) else None
        return {"run_dir": str(run_dir), "step": e.cfg.train.steps if e.trains else 0, "mode": e.spec.mode,
                "measures": e.measures, "probes": probes, "num_samples": gen}

    def generator(self, e, run_dir: Path, procs) -> tuple[dict, dict, int]:
        """IS / FID / KID of a run's generator (every process draws samples), or of the real data."""
        from arena.runs import load_run

        from .fidelity import evaluate_generator, evaluate_real

        gen = [m for m in dict.fromkeys(e.measures.values()) if m in GENERATOR_MEASURES]
        settings = {"num_samples": self.num_samples, "features": e.cfg.eval.features, "seed": 0, "ema": True}
        step = 0
        if e.spec.mode == "real":
            out = evaluate_real(e.cfg, metrics=gen, device=self.device) if procs.main else None
        else:
            cfg, objective, step = load_run(run_dir, "latest", procs.device)
            out = evaluate_generator(objective, cfg, num_samples=self.num_samples, metrics=gen, seed=0,
                                     procs=procs)
        values = {} if out is None else {
            m: {"mean": out[f"{m}_mean"], "std": out[f"{m}_std"]} if f"{m}_mean" in out else out[m] for m in gen}
        return values, settings, step

    def encoder(self, e, run_dir: Path) -> tuple[dict, list, int]:
        """The probes and the supervised classifier's accuracy (the main process)."""
        from .dim_probes import load_encoder_run, run_probes, untrained_objective

        if e.spec.mode == "random":
            run_dir.mkdir(parents=True, exist_ok=True)  # so `eval.dim_probes --random-init` works on it too
            (run_dir / "config.yaml").write_text(e.cfg.to_yaml())
            cfg, objective, step = e.cfg, untrained_objective(e.cfg, self.device), 0
        else:
            cfg, objective, step = load_encoder_run(run_dir, device=self.device)
        results: dict = {}
        settings_list = self.probe_settings(e.measures)
        for s in settings_list:
            for probe, by_layer in run_probes(cfg, objective, s)[0].items():
                results.setdefault(probe, {}).update(by_layer)
        values = {m: results[m.split("/")[0]][m.split("/")[1]] for m in e.measures.values() if m in PROBE_MEASURES}
        if "classifier" in e.measures.values():
            values["classifier"] = classifier_accuracy(cfg, objective)
        return values, [settings_dict(s) for s in settings_list], step

    def record(self, e, run_dir: Path, procs) -> dict | None:
        """The row's record: every measure of its cells (None on the other processes)."""
        wanted = set(e.measures.values())
        values, settings, step = {}, {}, 0
        if wanted & set(GENERATOR_MEASURES):
            values, settings["generator"], step = self.generator(e, run_dir, procs)
        if not procs.main:
            return None
        if wanted & (set(PROBE_MEASURES) | {"classifier"}):
            more, probes, step = self.encoder(e, run_dir)
            values.update(more)
            settings["probes"] = probes or None
        rec = empty_record(self.table, e.row, e.group, "measured")
        for label, m in e.measures.items():
            rec["cells"][label] = cell(m, rec["cells"][label]["paper"], _value(values[m]))
        rec.update(step=step, steps=e.cfg.train.steps if e.trains else 0, settings=json.loads(json.dumps(settings)),
                   steps_per_s=steps_per_s(run_dir) if e.trains else None)
        return rec


def settings_dict(s: ProbeSettings) -> dict:
    return {f.name: getattr(s, f.name) for f in dataclasses.fields(s) if f.name != "device"}


def _value(v):
    """A probe / metric result -> a float, or {'mean', 'std'} for results over several runs."""
    if isinstance(v, dict):
        return {"mean": float(v["mean"]), "std": float(v["std"]) if v.get("std") is not None else None}
    return float(v)


def steps_per_s(run_dir: Path) -> float | None:
    vals = [r["steps_per_s"] for r in read_metrics(Path(run_dir) / "metrics.jsonl")
            if isinstance(r.get("steps_per_s"), (int, float))]  # objects only: other lines are skipped
    return round(statistics.median(vals), 3) if vals else None


@torch.no_grad()
def classifier_accuracy(cfg, objective, batch_size: int = 256) -> float:
    """Test accuracy (%) of a supervised run's own head (mean over attributes for multi-label data)."""
    from .dim_probes import image_batches, labeled_indices, probe_datasets

    _, test = probe_datasets(cfg)
    correct, n = 0.0, 0
    for x, y in image_batches(test, labeled_indices(test), batch_size, data_cfg=cfg.data):
        logits = objective.logits(x.to(objective.device)).float().cpu()
        hit = (logits > 0).long() == y if test.multilabel else logits.argmax(1) == y
        correct += float(hit.float().sum()) / (y.shape[1] if test.multilabel else 1)
        n += len(y)
    return 100.0 * correct / max(n, 1)
