"""A table's results as records and Markdown: measured, paper, measured - paper.

No code here touches a model: `eval.reproduce` measures, this module shapes what it
measured (and the paper's numbers) into the JSON records and the Markdown table.
"""
from __future__ import annotations

from . import Row, Table, parse_number


def fmt_scale(s: float) -> str:
    return f"{s:g}"


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


def markdown(table: Table, data: dict) -> str:
    paper = table.has_paper
    lines = [f"# {table.title}", "",
             f"Paper: {table.source}.",
             f"Measured: `{data['command']}` (scale {fmt_scale(data['scale'])}, measure scale "
             f"{fmt_scale(data['measure_scale'])}), {data['updated']}."]
    if paper:
        legend = ("'paper' columns hold the paper's printed numbers; Δ = measured − paper. 'not run': no "
                  "measurement yet")
        if not all(r.implemented for r in table.rows):
            legend += "; 'not implemented': no such model in this toolkit (the paper's numbers kept)"
        lines.append(legend + ".")
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
    groups: dict[tuple, list] = {}  # a row's note once, with every group it applies to
    for r in data["rows"]:
        if r.get("note"):
            groups.setdefault((r["label"], r["note"]), []).append(r["group"])
    notes = [f"- {label} ({', '.join(gs)}): {note}" for (label, note), gs in groups.items()]
    if notes:
        lines += ["", *notes]
    return "\n".join(lines) + "\n"


def complete_rows(table: Table, records: dict[str, dict]) -> list[dict]:
    """Every row of the table in its order: the record where there is one (a record that
    was skipped, e.g. a diverged run, shows why), else 'not run' / 'not implemented'."""
    rows = []
    for row in table.rows:
        for g in table.groups:
            if g.name not in row.runs and g.name not in row.paper:
                continue
            rec = records.get(f"{row.name}/{g.name}")
            if rec is not None and "skipped" in rec:
                rec = {**empty_record(table, row, g.name, rec["skipped"]), "key": rec["key"],
                       "run_dir": rec.get("run_dir"), "skipped": rec["skipped"]}
            if rec is not None:  # label and note are the table's text, not part of the measurement
                rec = {**rec, "label": row.label, "note": row.note}
            status = "not run" if g.name in row.runs else "not implemented"
            rows.append(rec or empty_record(table, row, g.name, status))
    return rows
