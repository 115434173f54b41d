"""Reproduce a paper table with one command: train every row, measure it, print it beside the paper.

    python -m eval.reproduce table1 --data-root /data [--scale 0.01] [--rows dim_l_nce,dim_g] [--dry-run]
    accelerate launch -m eval.reproduce table10 --data-root /data --inception-weights ~/weights-inception.pth
    python -m eval.reproduce digits            # the CPU table: a few minutes, no data to fetch

Tables (eval.tables): table1, table2, table3, table4, table10 (the paper's numbers) and
digits. For each selected row the runner

1. trains the row's config (configs/NAME.yaml plus the row's overrides) into
   RUNS/NAME: a run whose last checkpoint is at the target step is skipped, a run
   that stopped earlier is resumed (run.resume=latest), so the command can be
   killed and restarted; a run dir written by a different config is an error;
2. measures it with the column's measure (eval.dim_probes.run_probes for the probes,
   eval.fidelity for IS / FID), reusing a measurement of the same step and settings
   already in the results file;
3. writes OUT/TABLE.json and OUT/TABLE.md (measured, paper, measured - paper) after
   every row, and prints the Markdown at the end.

--scale S multiplies every row's training steps (runs go to RUNS/scale-S/, results
to TABLE-xS); --measure-scale M the probes' epochs / steps and the number of
generated samples. --dry-run prints the equivalent commands and the training budget
(steps x the steps/s measured in docs/throughput.json, "unknown" where there is no
figure) and trains nothing. Datasets, Inception weights, row and table names are all
checked before any training. Under `accelerate launch`, every training uses all the
processes; the probes run on the main process and the generator's samples are drawn
by all of them.

Paper numbers appear only in the "paper" columns; a cell without a measurement says
"not run", a model this toolkit does not implement "not implemented".
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import yaml

from arena import checkpoint as ckpt
from arena.config import Config, load_config
from arena.data import build_dataset, dataset_signature
from arena.objective import OBJECTIVES
from arena.registry import ConfigError, cli_error
from arena.rundir import read_metrics
from arena.distributed import processes, shutdown
from arena.trainer import Stopped

from .dim_probes import LAYERS
from .tables import GENERATOR_MEASURES, PROBE_MEASURES, Row, RunSpec, Table, get_table, parse_number, select_rows

ROOT = Path(__file__).resolve().parent.parent
THROUGHPUT = ROOT / "docs" / "throughput.json"
# Keys a restart may change without making a finished run a different run.
VOLATILE_KEYS = ("run.resume", "train.progress", "data.root", "eval.inception_weights")


def say(msg: str) -> None:
    print(f"[reproduce] {msg}", flush=True)


# ---------------------------------------------------------------------------- the plan


@dataclasses.dataclass
class Entry:
    """One cell group to fill: a row in one column group, with its resolved run."""

    row: Row
    group: str
    spec: RunSpec | None  # None: not implemented
    cfg: Config | None = None
    base_steps: int = 0  # the config's steps before --scale
    done: int = 0  # steps in the run dir's latest checkpoint
    measures: dict[str, str] = dataclasses.field(default_factory=dict)  # column label -> measure

    @property
    def key(self) -> str:
        return f"{self.row.name}/{self.group}"

    @property
    def trains(self) -> bool:
        return self.spec is not None and self.spec.mode == "train"

    @property
    def state(self) -> str:
        if self.spec is None:
            return "not implemented"
        if not self.trains:
            return "no training"
        if self.done >= self.cfg.train.steps:
            return "finished"
        return "resume" if self.done > 0 else "fresh"


def scaled(value: int, factor: float, least: int = 1) -> int:
    return max(least, int(round(value * factor)))


def fmt_scale(s: float) -> str:
    return f"{s:g}"


def runs_root(args) -> Path:
    root = Path(args.runs)
    return root if args.scale == 1 else root / f"scale-{fmt_scale(args.scale)}"


def results_stem(table: Table, args) -> str:
    stem = table.name
    if args.scale != 1:
        stem += f"-x{fmt_scale(args.scale)}"
    if args.measure_scale != 1:
        stem += f"-m{fmt_scale(args.measure_scale)}"
    return stem


def row_context(e: Entry) -> str:
    cfg = f", config {e.spec.config}" if e.spec else ""
    return f"row '{e.row.name}' ({e.group}{cfg})"


def plan(table: Table, pairs, args) -> list[Entry]:
    entries = []
    for row, group in pairs:
        spec = row.runs.get(group)
        e = Entry(row, group, spec)
        columns = table.group(group).columns
        e.measures = {c.label: m for c in columns if (m := row.measure(c))}
        if spec is not None:
            overrides = [*spec.overrides, f"run.dir={runs_root(args) / spec.run_name}",
                         f"train.progress={'false' if args.no_progress else 'true'}"]
            if args.data_root:
                overrides.append(f"data.root={args.data_root}")
            if args.inception_weights:
                overrides.append(f"eval.inception_weights={args.inception_weights}")
            try:
                e.cfg = load_config(spec.config, overrides)
            except ConfigError as err:
                raise ConfigError(f"{row_context(e)}: {err}") from None
            e.base_steps = e.cfg.train.steps
            e.cfg.train.steps = scaled(e.base_steps, args.scale)
            if e.trains:
                found = ckpt.checkpoint_dirs(e.cfg.run.dir)
                e.done = ckpt.step_of(found[-1]) if found else 0
                check_same_run(e)
                if e.state == "resume":
                    e.cfg.run.resume = "latest"
        entries.append(e)
    return entries


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def check_same_run(e: Entry) -> None:
    """A run dir is reused only by the config that wrote it (a changed config, or the
    same dir at another step count, would silently mix two experiments)."""
    path = Path(e.cfg.run.dir) / "config.yaml"
    if not path.is_file() or e.done == 0:
        return
    saved = _flatten(yaml.safe_load(path.read_text()) or {})
    wanted = _flatten(e.cfg.to_dict())
    for key in sorted(set(saved) | set(wanted)):
        if key in VOLATILE_KEYS:
            continue
        if saved.get(key, "<missing>") != wanted.get(key, "<missing>"):
            raise ConfigError(
                f"{row_context(e)}: {path} was written by a different config ({key}: "
                f"{saved.get(key, '<missing>')!r} there, {wanted.get(key, '<missing>')!r} now); "
                f"remove {e.cfg.run.dir} or pass another --runs")


def preflight(entries: list[Entry]) -> dict[str, str]:
    """Every error a run could hit before its first step, for all rows, before any training:
    the datasets (both splits), the feature extractor of IS / FID, measures the objective
    cannot give. -> {entry key: problem} (empty when all is well)."""
    problems, datasets = {}, {}
    for e in entries:
        try:
            _preflight_one(e, datasets)
        except ConfigError as err:
            problems[e.key] = f"{row_context(e)}: {err}"
    return problems


def _preflight_one(e: Entry, checked: dict) -> None:
    from .fidelity import resolve_features

    if e.cfg is not None:
        wanted = set(e.measures.values())
        generates = OBJECTIVES.get(e.cfg.objective.name, key="objective.name").generates
        if e.spec.mode == "train" and wanted & set(GENERATOR_MEASURES) and not generates:
            raise ConfigError(f"IS / FID need a generator; objective '{e.cfg.objective.name}' has none")
        if wanted & set(PROBE_MEASURES) and e.cfg.objective.name not in ("dim", "supervised"):
            raise ConfigError(f"the probes need a DIM-style encoder (dim, supervised), not '{e.cfg.objective.name}'")
        data = dataclasses.replace(e.cfg.data, augment=False)
        sig = json.dumps(dataset_signature(data, "train"), sort_keys=True)
        if sig in checked:  # the same dataset failed (or passed) for an earlier row
            if checked[sig]:
                raise ConfigError(checked[sig])
        else:
            try:
                for split in ("train", "test"):
                    build_dataset(data, split)
                checked[sig] = ""
            except ConfigError as err:
                checked[sig] = str(err)
                raise
        if wanted & set(GENERATOR_MEASURES) or e.cfg.eval.every > 0:
            resolve_features(e.cfg.eval.features, e.cfg.data, e.cfg.eval.inception_weights)


# ---------------------------------------------------------------------------- dry run


def load_throughput() -> dict:
    return json.loads(THROUGHPUT.read_text()).get("configs", {}) if THROUGHPUT.is_file() else {}


def fmt_seconds(s: float) -> str:
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


def train_command(e: Entry, world: int) -> str:
    launcher = "accelerate launch train.py" if world > 1 else "python train.py"
    mine = [o for o in e.spec.overrides if not o.startswith("train.steps=")]  # the scaled steps follow
    parts = [launcher, "--config", e.spec.config, *mine, f"run.dir={e.cfg.run.dir}", f"train.steps={e.cfg.train.steps}"]
    if e.cfg.data.name not in ("digits", "shapes"):
        parts.append(f"data.root={e.cfg.data.root}")
    if e.cfg.eval.inception_weights:
        parts.append(f"eval.inception_weights={e.cfg.eval.inception_weights}")
    if e.state == "resume":
        parts.append("run.resume=latest")
    return " ".join(parts)


def measure_command(e: Entry, table: Table, args) -> str:
    wanted = list(dict.fromkeys(e.measures.values()))
    run = e.cfg.run.dir
    parts = []
    if e.spec.mode == "real":
        parts.append(f"in-process: eval.fidelity.evaluate_real ({', '.join(wanted)} of the test split against "
                     f"the train split, features {e.cfg.eval.features})")
    elif set(wanted) & set(GENERATOR_MEASURES):
        metrics = ",".join(m for m in wanted if m in GENERATOR_MEASURES)
        weights = f" --inception-weights {e.cfg.eval.inception_weights}" if e.cfg.eval.inception_weights else ""
        parts.append(f"python -m eval.fid_is --run {run} --num-samples {num_samples(table, args)} "
                     f"--metrics {metrics}{weights}")
    from .dim_probes import ProbeSettings

    d = ProbeSettings()
    for s in probe_settings(table, e.measures, args):
        cmd = [f"python -m eval.dim_probes --run {run}", "--random-init" if e.spec.mode == "random" else "",
               f"--probes {','.join(s.probes)}", f"--layers {','.join(s.layers)}" if s.layers else ""]
        for f, flag in (("runs", "--runs"), ("mlp_epochs", "--mlp-epochs"), ("semi_epochs", "--semi-epochs"),
                        ("msssim_epochs", "--msssim-epochs"), ("mine_steps", "--mine-steps"),
                        ("ndm_steps", "--ndm-steps")):
            if getattr(s, f) != getattr(d, f):
                cmd.append(f"{flag} {getattr(s, f)}")
        parts.append(" ".join(c for c in cmd if c))
    if "classifier" in wanted:
        parts.append("in-process: the supervised classifier's test accuracy")
    return "; ".join(parts)


def dry_run(table: Table, entries: list[Entry], args, world: int, problems: dict[str, str]) -> None:
    speeds = load_throughput()
    say(f"{table.name}: {table.title}")
    say(f"dry run (scale {fmt_scale(args.scale)}, measure scale {fmt_scale(args.measure_scale)}); "
        f"nothing is trained. Runs under {runs_root(args)}, results to "
        f"{Path(args.out) / results_stem(table, args)}.md/.json")
    known, unknown = 0.0, []
    for e in entries:
        print()
        print(f"{e.row.label} [{e.key}]: {e.state}")
        if e.spec is None:
            print("  the paper's numbers only (no such model in this toolkit)")
            continue
        if e.key in problems:
            print(f"  PROBLEM (a real run would stop here before training): {problems[e.key]}")
        if e.trains:
            left = max(0, e.cfg.train.steps - e.done)
            if e.state != "finished":
                print(f"  train: {train_command(e, world)}")
            speed = speeds.get(e.spec.run_name) or speeds.get(e.spec.config)
            if left == 0:
                print(f"  budget: done ({e.done} of {e.cfg.train.steps} steps)")
            elif speed:
                secs = left / speed["steps_per_s"]
                known += secs
                print(f"  budget: {left} steps / {speed['steps_per_s']:g} steps/s = {fmt_seconds(secs)} "
                      f"(measured on {speed['device']}, {speed['source']})")
            else:
                unknown.append(e.spec.config)
                print(f"  budget: {left} steps x unknown steps/s (no figure for {e.spec.config} in "
                      f"{THROUGHPUT.relative_to(ROOT)}) = unknown")
        elif e.spec.mode == "random":
            print(f"  no training: {e.spec.config}'s encoder at step 0")
        print(f"  measure: {measure_command(e, table, args)}")
    print()
    line = f"training budget: {fmt_seconds(known)} for the rows with a measured speed"
    if unknown:
        line += f"; unknown for {len(unknown)} run(s) with no measured steps/s ({', '.join(sorted(set(unknown)))})"
    say(line + "; measuring (probes, IS / FID) not included")
    if world > 1:
        say(f"{world} processes: the figures are single-process speeds")


# ---------------------------------------------------------------------------- measures


def num_samples(table: Table, args) -> int:
    return scaled(table.num_samples, args.measure_scale, least=20)


def probe_settings(table: Table, measures: dict[str, str], args) -> list:
    """eval.dim_probes.ProbeSettings for the probe measures of one row: one per set of
    svm / mlp layers (run_probes reads both at the same layers; SVM on conv when only
    the MLP needs conv would be wasted), the other probes with the first. [] if none."""
    from .dim_probes import ProbeSettings

    wanted = [m.split("/") for m in dict.fromkeys(measures.values()) if m in PROBE_MEASURES]
    by_layers: dict[tuple, list[str]] = {}
    for probe in dict.fromkeys(p for p, _ in wanted):
        layers = tuple(sorted({k for p, k in wanted if p == probe}, key=LAYERS.index)) \
            if probe in ("mlp", "svm") else ()
        by_layers.setdefault(layers, []).append(probe)
    if () in by_layers and len(by_layers) > 1:  # msssim / mine / ndm / semi join the first call
        others = by_layers.pop(())
        by_layers[next(iter(by_layers))] += others
    out = []
    for layers, probes in by_layers.items():
        # only code probes (msssim / mine / ndm / semi): the layers are just where features are read
        s = ProbeSettings(**{**table.probe, "probes": tuple(probes), "layers": layers or ("y",),
                             "device": args.device})
        for f in ("runs", "mlp_epochs", "semi_epochs", "msssim_epochs", "mine_steps", "ndm_steps"):
            setattr(s, f, scaled(getattr(s, f), args.measure_scale))
        out.append(s)
    return out


def settings_dict(settings: list) -> list[dict]:
    return [{f.name: getattr(s, f.name) for f in dataclasses.fields(s) if f.name != "device"} for s in settings]


def measure_key(e: Entry, table: Table, args) -> dict:
    """What a measurement depends on: a stored one with the same key is reused."""
    probes = settings_dict(probe_settings(table, e.measures, args)) or None
    gen = num_samples(table, args) if set(e.measures.values()) & set(GENERATOR_MEASURES) else None
    key = {"run_dir": e.cfg.run.dir, "step": e.done if e.trains else 0, "mode": e.spec.mode,
           "measures": e.measures, "probes": probes, "num_samples": gen}
    return json.loads(json.dumps(key))  # tuples -> lists, as read back from the results file


def _value(v):
    """A probe / metric result -> a float, or {'mean', 'std'} for results over several runs."""
    if isinstance(v, dict):
        return {"mean": float(v["mean"]), "std": float(v["std"]) if v.get("std") is not None else None}
    return float(v)


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


def measure(e: Entry, table: Table, args, dist) -> tuple[dict, int, dict] | None:
    """-> ({column label: value}, measured step, settings) on the main process (None elsewhere)."""
    from .dim_probes import load_encoder_run, run_probes, untrained_objective
    from .fidelity import evaluate_generator, evaluate_real

    wanted = list(dict.fromkeys(e.measures.values()))
    values: dict[str, object] = {}
    settings: dict = {}
    step = 0
    run_dir = Path(e.cfg.run.dir)
    gen = [m for m in wanted if m in GENERATOR_MEASURES]
    if gen:
        n = num_samples(table, args)
        settings["generator"] = {"num_samples": n, "features": e.cfg.eval.features, "seed": 0, "ema": True}
        if e.spec.mode == "real":
            out = evaluate_real(e.cfg, metrics=gen, device=args.device) if dist.main else None
        else:
            from arena.runs import load_run

            cfg, objective, step = load_run(run_dir, "latest", dist.device)
            out = evaluate_generator(objective, cfg, num_samples=n, metrics=gen, seed=0, rank=dist.rank,
                                     world_size=dist.world, gather=dist.gather)
        if out is not None:
            for m in gen:
                values[m] = ({"mean": out[f"{m}_mean"], "std": out[f"{m}_std"]} if f"{m}_mean" in out
                             else out[m])
    if not dist.main:
        return None
    settings_list = probe_settings(table, e.measures, args)
    if settings_list or "classifier" in wanted:
        if e.spec.mode == "random":
            run_dir.mkdir(parents=True, exist_ok=True)  # so `eval.dim_probes --random-init` works on it too
            (run_dir / "config.yaml").write_text(e.cfg.to_yaml())
            cfg, objective = e.cfg, untrained_objective(e.cfg, args.device)
        else:
            cfg, objective, step = load_encoder_run(run_dir, device=args.device)
        results: dict = {}
        for s in settings_list:
            for probe, by_layer in run_probes(cfg, objective, s)[0].items():
                results.setdefault(probe, {}).update(by_layer)
        if settings_list:
            settings["probes"] = settings_dict(settings_list)
        for m in e.measures.values():
            if m in PROBE_MEASURES:
                probe, layer = m.split("/")
                values[m] = results[probe][layer]
        if "classifier" in wanted:
            values["classifier"] = classifier_accuracy(cfg, objective)
    by_column = {label: _value(values[m]) for label, m in e.measures.items()}
    return by_column, step, json.loads(json.dumps(settings))


# ---------------------------------------------------------------------------- processes


def main_then_all(dist, fn, marker: Path):
    """Run fn on every process (it may use collectives), then let the other processes
    wait for the main one by polling a file rather than in a collective: the main
    process's part (probes, torch-fidelity) may outlast a collective's timeout.

    Whatever fn raises on any process (a Ctrl-C included) is caught until every process
    has passed the closing barrier, so none is left waiting for a marker or a barrier
    that never comes; a process killed outright ends the whole job (accelerate launch
    stops the others), so the poll needs no deadline."""
    if dist.world == 1:
        return fn()
    if dist.main:
        marker.unlink(missing_ok=True)
    dist.barrier()
    error, out, raised = None, None, None
    try:
        out = fn()
    except BaseException as err:  # noqa: BLE001 - re-raised below, after the barrier
        error, raised = f"{type(err).__name__}: {err}", err
    if dist.main:
        marker.parent.mkdir(parents=True, exist_ok=True)
        # Written whole, then renamed: a waiting process never reads a half-written file.
        tmp = marker.with_name(marker.name + ".tmp")
        tmp.write_text(json.dumps({"error": error}))
        os.replace(tmp, marker)
    else:
        while not marker.is_file():
            time.sleep(2.0)
        error = error or json.loads(marker.read_text())["error"]
    dist.barrier()
    if isinstance(raised, (KeyboardInterrupt, SystemExit)):
        raise raised
    if error:
        raise RuntimeError(error)
    return out


# ---------------------------------------------------------------------------- results


def fmt_value(v) -> str:
    """2 decimals (3 below 1, e.g. MS-SSIM); a std with the precision of its mean."""
    if v is None:
        return ""
    mean = v["mean"] if isinstance(v, dict) else v
    spec = ".2f" if abs(mean) >= 1 or mean == 0 else ".3f"
    text = format(mean, spec)
    if isinstance(v, dict) and v.get("std") is not None:
        text += f" ± {format(v['std'], spec)}"
    return text


def _mean(v):
    return v["mean"] if isinstance(v, dict) else v


def cell(measure: str | None, paper: str | None, measured) -> dict:
    diff = None
    if paper is not None and measured is not None:
        diff = _mean(measured) - parse_number(paper)["mean"]
    return {"measure": measure, "paper": paper, "measured": measured, "difference": diff}


def empty_record(table: Table, row: Row, group: str, status: str) -> dict:
    cols = table.group(group).columns
    paper = row.paper.get(group, (None,) * len(cols))
    spec = row.runs.get(group)
    return {"row": row.name, "label": row.label, "group": group, "status": status, "note": row.note,
            "run": spec.run_name if spec else "-",
            "cells": {c.label: cell(row.measure(c), p, None) for c, p in zip(cols, paper)}}


def load_results(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
        return {f"{r['row']}/{r['group']}": r for r in data.get("rows", [])}
    except (json.JSONDecodeError, KeyError, TypeError):
        return {}  # unreadable: measured again


def steps_per_s(run_dir: Path) -> float | None:
    vals = [rec["steps_per_s"] for rec in read_metrics(run_dir / "metrics.jsonl")
            if isinstance(rec.get("steps_per_s"), (int, float))]  # objects only: other lines are skipped
    return round(statistics.median(vals), 3) if vals else None


def assemble(table: Table, records: dict, args, command: str) -> dict:
    rows = []
    for row in table.rows:
        for g in table.groups:
            if g.name not in row.runs and g.name not in row.paper:
                continue
            key = f"{row.name}/{g.name}"
            status = "not run" if g.name in row.runs else "not implemented"
            rows.append(records.get(key) or empty_record(table, row, g.name, status))
    return {"table": table.name, "title": table.title, "source": table.source, "scale": args.scale,
            "measure_scale": args.measure_scale, "command": command,
            "updated": time.strftime("%Y-%m-%d %H:%M:%S"),
            "groups": [{"name": g.name, "columns": [{"label": c.label, "measure": c.measure} for c in g.columns]}
                       for g in table.groups],
            "notes": list(table.notes), "rows": rows}


def markdown(table: Table, data: dict) -> str:
    paper = table.has_paper
    lines = [f"# {table.title}", "",
             f"Paper: {table.source}.",
             f"Measured: `{data['command']}` (scale {fmt_scale(data['scale'])}, measure scale "
             f"{fmt_scale(data['measure_scale'])}), {data['updated']}."]
    if paper:
        lines.append("'paper' columns hold the paper's printed numbers; Δ = measured − paper. 'not run': no "
                     "measurement yet; 'not implemented': no such model in this toolkit (the paper's numbers kept).")
    lines += [f"{n}" for n in data["notes"]]
    for g in table.groups:
        recs = [r for r in data["rows"] if r["group"] == g.name]
        head = ["model", "run", "step"]
        for c in g.columns:
            head += [c.label, "paper", "Δ"] if paper else [c.label]
        lines += ["", f"## {g.name}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in recs:
            status = r["status"]
            if status == "measured":
                step = "0 (random init)" if r.get("mode") == "random" else ("-" if r.get("mode") == "real"
                                                                             else str(r.get("step", "")))
                run = r.get("run", "")
            else:
                step, run = "-", r.get("run", "-")
            out = [r["label"], run, step]
            for c in g.columns:
                x = r["cells"][c.label]
                if status == "measured":
                    m = fmt_value(x["measured"])
                else:
                    m = status if x["measure"] or x["paper"] else ""
                if paper:
                    d = x["difference"]
                    out += [m, x["paper"] or "", f"{d:+.2f}" if d is not None else ""]
                else:
                    out.append(m)
            lines.append("| " + " | ".join(out) + " |")
    notes = [f"- {r['label']} ({r['group']}): {r['note']}" for r in data["rows"] if r.get("note")]
    if notes:
        lines += ["", *notes]
    return "\n".join(lines) + "\n"


def write_results(table: Table, records: dict, args, command: str) -> tuple[Path, str]:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = assemble(table, records, args, command)
    stem = results_stem(table, args)
    text = markdown(table, data)
    for path, body in ((out / f"{stem}.json", json.dumps(data, indent=1) + "\n"), (out / f"{stem}.md", text)):
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(body)
        tmp.replace(path)  # a killed run leaves the previous file whole
    return out / f"{stem}.md", text


# ---------------------------------------------------------------------------- the run


def run_entry(e: Entry, table: Table, args, dist, records: dict) -> str:
    """Train (or skip / resume) and measure one entry; returns its status."""
    from arena.trainer import NonFiniteLoss, train

    t0 = time.perf_counter()
    if e.trains:
        if e.state == "finished":
            if dist.main:
                say(f"{e.key}: {e.spec.run_name} finished ({e.done} steps); not retrained")
        else:
            if dist.main:
                how = f"resuming at step {e.done}" if e.state == "resume" else "from scratch"
                say(f"{e.key}: training {e.spec.run_name}, {e.cfg.train.steps} steps, {how}")
            hooks = []
            if e.cfg.eval.every > 0:
                from .hooks import training_hooks

                hooks = training_hooks(e.cfg)
            try:
                train(e.cfg, hooks)
            except NonFiniteLoss as err:
                if dist.main:
                    say(f"{e.key}: {err}")
                return f"failed: {err}"
            e.done = e.cfg.train.steps
    train_s = time.perf_counter() - t0
    old = records.get(e.key)
    key = measure_key(e, table, args)
    if old and old.get("status") == "measured" and old.get("measure_key") == key:
        if dist.main:
            say(f"{e.key}: measured before at step {key['step']}; kept")
        return "measured"
    if dist.main:
        say(f"{e.key}: measuring {', '.join(dict.fromkeys(e.measures.values()))}")
    t1 = time.perf_counter()
    out = main_then_all(dist, lambda: measure(e, table, args, dist),
                             Path(args.runs) / ".reproduce" / f"{e.spec.run_name}.done")
    if dist.main:
        values, step, settings = out
        rec = empty_record(table, e.row, e.group, "measured")
        for label, v in values.items():
            rec["cells"][label] = cell(e.measures[label], rec["cells"][label]["paper"], v)
        rec.update(run=e.spec.run_name, config=e.spec.config, overrides=list(e.spec.overrides), mode=e.spec.mode,
                   run_dir=e.cfg.run.dir, step=step, steps=e.cfg.train.steps if e.trains else 0,
                   settings=settings, measure_key=key, train_seconds=round(train_s, 1),
                   measure_seconds=round(time.perf_counter() - t1, 1),
                   steps_per_s=steps_per_s(Path(e.cfg.run.dir)) if e.trains else None)
        records[e.key] = rec
    return "measured"


def build_parser() -> argparse.ArgumentParser:
    from .tables import table_names

    p = argparse.ArgumentParser(prog="python -m eval.reproduce", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("table", help=f"one of {', '.join(table_names())}")
    p.add_argument("--data-root", default="", help="dataset folder for every row (default: each config's data.root)")
    p.add_argument("--scale", type=float, default=1.0, help="multiplies every row's training steps")
    p.add_argument("--measure-scale", type=float, default=1.0,
                   help="multiplies the probes' epochs / steps and the number of generated samples")
    p.add_argument("--rows", default="", help="comma list of row names (or run names); default: all")
    p.add_argument("--dry-run", action="store_true", help="print the commands and the budget; train nothing")
    p.add_argument("--runs", default="runs/reproduce", help="where the runs go (default runs/reproduce)")
    p.add_argument("--out", default="results", help="where TABLE.md / TABLE.json go (default results)")
    p.add_argument("--inception-weights", default="", help="local copy of torch-fidelity's Inception weights")
    p.add_argument("--device", default="", help="for the probes (default: the main process's device)")
    p.add_argument("--no-progress", action="store_true", help="no training progress bars")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    dist = None
    try:
        if not args.scale > 0 or not args.measure_scale > 0:
            raise ConfigError(f"--scale and --measure-scale must be > 0, got {args.scale} and {args.measure_scale}")
        table = get_table(args.table)
        entries = plan(table, select_rows(table, args.rows), args)
        problems = preflight(entries)
        dist = processes()
        args.device = args.device or str(dist.device)
        if args.dry_run:
            if dist.main:
                dry_run(table, entries, args, dist.world, problems)
            return 2 if problems else 0
        if problems:
            first, *rest = problems.values()
            more = f" (and {len(rest)} more row(s): {', '.join(k for k in list(problems)[1:])})" if rest else ""
            raise ConfigError(f"{first}{more}; nothing was trained")
        command = "python -m eval.reproduce " + " ".join(argv if argv is not None else sys.argv[1:])
        records = load_results(Path(args.out) / f"{results_stem(table, args)}.json")
        failed = []
        for e in entries:
            if e.spec is None:
                continue
            status = run_entry(e, table, args, dist, records)
            if status != "measured":
                failed.append(e.key)
                if dist.main:
                    rec = empty_record(table, e.row, e.group, status)
                    rec.update(run=e.spec.run_name, run_dir=e.cfg.run.dir)
                    records[e.key] = rec
            if dist.main:
                write_results(table, records, args, command)
        if dist.main:
            path, text = write_results(table, records, args, command)
            print()
            print(text, end="")
            say(f"wrote {path} and {path.parent / (path.name[:-3] + '.json')}")
        shutdown()
        return 3 if failed else 0
    except ConfigError as err:
        return cli_error(err) if dist is None or dist.main else 2
    except Stopped as err:  # SIGTERM / Ctrl-C in a training: its step was saved; rerun to resume
        shutdown()
        if dist is None or dist.main:
            print(f"[reproduce] {err}; run the same command again to resume", file=sys.stderr)
        return 128 + err.signum
    except KeyboardInterrupt:  # Ctrl-C outside a training step (probes, metrics, or a second one)
        print("[reproduce] interrupted; finished rows are in the results file, rerun to continue", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
