"""The headline comparisons of notebooks 02-06 and 08 over training seeds, as markdown tables for
``docs/results.md``.

Usage (from the repository root)::

    python tools/seed_intervals.py RUN [RUN ...] > /tmp/seeds.md

Each ``RUN`` is a folder holding the five notebooks' output folders (``make tutorial``'s
``runs/<id>/``) or a ``kdlab sweep`` folder of one notebook (``<dir>/seed=1/`` ...); every
``metrics.json`` found below them is read, grouped by notebook and seed. For every comparison the
per-seed difference (paired: both arms of a seed share noise, data order and initial weights) is
summarised as the mean with its t interval over the seeds (:func:`kdlab.evaluation.intervals.seed_interval`),
and the verdict follows that interval: a claim only when it excludes 0.
"""
from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

from kdlab.evaluation import intervals

NOTEBOOKS = ("02_output_distillation", "03_kl_derivation", "04_feature_distillation", "05_signal_preservation",
             "06_diffusion_step_distillation", "08_one_step_distillation")


def collect(roots: list[Path]) -> dict[str, dict[int, dict]]:
    """notebook -> seed -> metrics, from every ``metrics.json`` below ``roots`` (smoke runs skipped)."""
    runs: dict[str, dict[int, dict]] = defaultdict(dict)
    for root in roots:
        for path in sorted(root.rglob("metrics.json")):
            m = json.loads(path.read_text())
            name = next((n for n in NOTEBOOKS if n in str(path)), None)  # tutorial and sweep folders both name it
            if name is None or m.get("smoke"):
                continue
            if m["seed"] in runs[name]:
                raise SystemExit(f"two runs of {name} with seed {m['seed']} ({path}); pass each seed once")
            runs[name][m["seed"]] = m
    return runs


def row(label: str, values: list[float], lower_is_better: bool, a: str, b: str, fmt: str = ".1f") -> str:
    """One table row: per-seed differences a - b, their mean and t interval, and what it allows."""
    ci = intervals.seed_interval(values)
    if ci.hi < 0:
        says = f"{a if lower_is_better else b} better"
    elif ci.lo > 0:
        says = f"{b if lower_is_better else a} better"
    else:
        says = "cannot tell"
    seeds = ", ".join(format(v, fmt) for v in values)
    return f"| {label} | {seeds} | {ci:{fmt}} | {says} |"


def header(title: str, what: str) -> list[str]:
    return [f"**{title}**: {what}", "", "| comparison | per seed | mean [95% t interval] | verdict |", "|---|---|---|---|"]


def tables(runs: dict[str, dict[int, dict]]) -> list[str]:
    out = []
    if len(m02 := runs.get("02_output_distillation", {})) >= 2:
        seeds = sorted(m02)
        out += header(f"02, seeds {seeds}", "FID of the best distilled student (loss chosen on validation noise) minus "
                                           "FID of the student trained from scratch")
        for w in (16, 8, 4):
            vals = [m02[s]["fid_gap_distilled_minus_scratch"][f"w{w}"][0] for s in seeds]
            out.append(row(f"w{w}: distilled - scratch", vals, True, "distilled", "scratch"))
        out.append("")
    if len(m03 := runs.get("03_kl_derivation", {})) >= 2:
        seeds = sorted(m03)
        out += header(f"03, seeds {seeds}", "held-out bits/dim, forward KL student minus the student trained on the data "
                                           "(all 4,500 digits), and the transfer-set gaps")
        forward = {r["temperature"] for s in seeds for r in m03[s]["students"].values() if r.get("direction") == "forward"}
        for t in sorted(forward):
            vals = [m03[s]["students"][f"forward T={t:g}"]["heldout_bpd"] - m03[s]["students"]["data only"]["heldout_bpd"]
                    for s in seeds]
            out.append(row(f"forward T={t:g} - data only", vals, True, "forward KL", "data only", ".4f"))
        for n in m03[seeds[0]]["transfer"]["sizes"]:  # every run's subsets (their seeds differ between runs)
            vals = [r["data only"] - r["soft targets"] for s in seeds for k, r in m03[s]["transfer"]["runs"].items()
                    if k.startswith(f"{n}_")]
            out.append(row(f"{n} images: data only - soft targets ({len(vals)} subsets)", vals, True, "data only",
                           "soft targets", ".4f"))
        out.append("")
    if len(m04 := runs.get("04_feature_distillation", {})) >= 2:
        seeds = sorted(m04)
        out += header(f"04, seeds {seeds}", "FID with each feature term minus FID of output-only distillation")
        for w in (8, 4):
            for term in ("hint", "attention", "gram"):
                vals = [m04[s]["students"][f"w{w}_{term}"]["fid"] - m04[s]["students"][f"w{w}_output"]["fid"] for s in seeds]
                out.append(row(f"w{w}: {term} - output only", vals, True, term, "output only"))
        out.append("")
    if len(m05 := runs.get("05_signal_preservation", {})) >= 2:
        seeds = sorted(m05)
        out += header(f"05, seeds {seeds}", "FID of each student size minus the next larger one (the collapse point), "
                                           "and the strategy winner minus the base recipe")
        for recipe in ("mse", "joint"):
            for step in m05[seeds[0]]["collapse"][recipe]["steps"]:
                vals = [next(j for j in m05[s]["collapse"][recipe]["steps"] if j["to"] == step["to"])["fid_to"]
                        - next(j for j in m05[s]["collapse"][recipe]["steps"] if j["to"] == step["to"])["fid_from"]
                        for s in seeds]
                out.append(row(f"{recipe}: {step['to']} - {step['from']}", vals, True, step["to"], step["from"]))
        vals = [m05[s]["strategy_gain"][0] for s in seeds]
        winners = ", ".join(m05[s]["strategy_winner"] for s in seeds)
        out.append(row(f"strategy: lowest-validation candidate - none (winners: {winners})", vals, True, "feature term",
                       "none"))
        out.append("")
    if len(m06 := runs.get("06_diffusion_step_distillation", {})) >= 2:
        seeds = sorted(m06)
        out += header(f"06, seeds {seeds}", "FID of the progressively distilled sampler minus plain DDIM from the same "
                                           "noise, per step count")
        for n in sorted(map(int, m06[seeds[0]]["distilled"]), reverse=True):
            vals = [m06[s]["fid_gap_distilled_minus_ddim"][str(n)][0] for s in seeds]
            out.append(row(f"{n} steps: distilled - DDIM", vals, True, "distilled", "DDIM"))
        out.append("")
    if len(m08 := runs.get("08_one_step_distillation", {})) >= 2:
        seeds = sorted(m08)
        out += header(f"08, seeds {seeds}", "FID of the consistency and DMD students minus notebook 06's shipped "
                                           "progressive student (trained once, seed 0) at the same step count, "
                                           "from the same noise")
        for key in m08[seeds[0]]["fid_gap_to_progressive"]:
            name, n = key.rsplit("_", 1)
            vals = [m08[s]["fid_gap_to_progressive"][key][0] for s in seeds]
            out.append(row(f"{n} step{'s' if n != '1' else ''}: {name} - progressive", vals, True, name, "progressive"))
        out.append("")
    return out


def main() -> None:
    roots = [Path(a) for a in sys.argv[1:]]
    if not roots:
        raise SystemExit(__doc__)
    for r in roots:
        if not r.is_dir():
            raise SystemExit(f"{r} is not a folder")
    print("\n".join(tables(collect(roots))))


if __name__ == "__main__":
    main()
