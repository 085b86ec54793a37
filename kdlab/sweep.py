"""Parameter sweeps over notebooks with papermill: one folder per run, collected results.

``kdlab sweep NOTEBOOK -p name v1,v2 -p other a,b --jobs 2 --out DIR`` runs the grid (here 4 runs).
Each run gets ``DIR/<name=v1__other=a>/`` holding the executed notebook, its ``metrics.json`` and
plots (the run folder is passed as the notebook's ``out_dir`` parameter), ``log.txt`` (papermill's
output) and ``run.json`` (parameters, status, seconds, error). Runs that finished before are
skipped, failed ones are reported (cell and error) while the others go on, and the end writes
``DIR/results.csv`` (every scalar of every ``metrics.json``), ``DIR/results.md`` (chosen columns)
and optionally a plot.

Parallel runs share the CPU, so each run's PyTorch gets ``cores // jobs`` threads
(``OMP_NUM_THREADS``): oversubscribed OpenMP threads can slow every run many times over.
"""
from __future__ import annotations

import ast
import csv
import hashlib
import itertools
import json
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from .utils import atomic_write_bytes, launched, progress_bar, to_json


def parse_values(text: str) -> list[Any]:
    """``"1,2.5,mse,[8,4]"`` -> ``[1, 2.5, "mse", [8, 4]]``: split at top-level commas (not inside
    brackets or quotes); each piece is a Python literal if it parses as one, else a string."""
    pieces, depth, quote, start = [], 0, None, 0
    for i, ch in enumerate(text):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            pieces.append(text[start:i])
            start = i + 1
    pieces.append(text[start:])
    values = []
    for piece in (p.strip() for p in pieces):
        if not piece:
            raise ValueError(f"empty value in {text!r}; separate values with single commas")
        try:
            values.append(ast.literal_eval(piece))
        except (ValueError, SyntaxError):
            values.append(piece)
    return values


def grid(params: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination of the parameter values, the last parameter varying fastest."""
    names = list(params)
    return [dict(zip(names, combo)) for combo in itertools.product(*(params[n] for n in names))]


def run_name(params: dict[str, Any]) -> str:
    """A folder name for one run: ``name=value__name=value`` with unsafe characters replaced
    (a hash keeps long or colliding names unique)."""
    if not params:
        return "run"
    raw = "__".join(f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in params.items())
    safe = re.sub(r"[^A-Za-z0-9._=+-]", "_", raw)
    if len(safe) > 100 or safe != raw:
        safe = f"{safe[:80]}-{hashlib.sha1(raw.encode()).hexdigest()[:8]}"
    return safe


def _first_error(executed: Path) -> str:
    """``cell K (first line): Error: message`` for the first failing cell of an executed notebook."""
    try:
        cells = json.loads(executed.read_text())["cells"]
    except (OSError, ValueError, KeyError):
        return "the notebook did not start (see log.txt)"
    code = [c for c in cells if c["cell_type"] == "code" and "injected-parameters" not in c["metadata"].get("tags", [])]
    for k, cell in enumerate(code, start=1):
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                first = "".join(cell["source"]).strip().splitlines()[0][:60] if cell["source"] else ""
                return f"cell {k} ({first}): {out['ename']}: {out['evalue']}"
    return "no cell error recorded (see log.txt)"


# What torchrun (or a cluster's launcher) sets for the processes of one job (torch/distributed/elastic's local
# agent sets these and the TORCHELASTIC_* ones for each worker). OMP_NUM_THREADS, CUDA_VISIBLE_DEVICES and
# TORCH_NCCL_* are kept: they may be the user's own, and a plain process is not in a group.
LAUNCHER_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE",
                      "ROLE_RANK", "ROLE_NAME", "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def child_env(threads: int | None = None) -> dict[str, str]:
    """The environment of one run's papermill process: this one's, with text progress, no widgets unless asked
    for, ``threads`` OpenMP/MKL threads when given, and none of a launcher's variables (``RANK``,
    ``WORLD_SIZE``, ``MASTER_PORT``, ``TORCHELASTIC_*``, ...): every run is a process of its own, and with a
    container's ``WORLD_SIZE`` > 1 each run's training would wait to join a process group that never forms."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARIABLES and not k.startswith("TORCHELASTIC_")}
    env["KDLAB_PROGRESS"] = "text"
    env.setdefault("KDLAB_WIDGETS", "0")  # headless: no interactive widgets (they can stall nbclient)
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return env


def refuse_torchrun() -> None:
    """``ValueError`` when torchrun started this process (:func:`kdlab.utils.launched`): its processes would each
    run the same notebooks into the same folders."""
    if launched():
        raise ValueError("this process was started by torchrun (WORLD_SIZE and TORCHELASTIC_RUN_ID are set), and "
                         "notebooks run as processes of their own, not in torchrun's group: start it from a plain "
                         "shell (torchrun is for kdlab fit)")


def run_one(notebook: Path, params: dict[str, Any], folder: Path, threads: int | None = None,
            timeout: float | None = None) -> dict[str, Any]:
    """Execute ``notebook`` with ``params`` (plus ``out_dir=folder``) in a fresh papermill process.
    Returns and writes ``folder/run.json``: ``{"parameters", "status": "ok" | "failed", "seconds",
    "error"}``. ``ValueError`` under torchrun."""
    refuse_torchrun()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "parameters.json").write_text(json.dumps({**params, "out_dir": str(folder)}))
    env = child_env(threads)
    executed = folder / notebook.name
    cmd = [sys.executable, "-m", "papermill", str(notebook), str(executed), "-f", str(folder / "parameters.json"),
           "-k", "python3", "--cwd", str(notebook.parent), "--no-progress-bar"]
    t0 = time.perf_counter()
    with open(folder / "log.txt", "w") as log:
        try:
            rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    ok = rc == 0 and (folder / "metrics.json").exists()
    error = None
    if not ok:
        error = f"timed out after {timeout} s" if rc == "timeout" else _first_error(executed)
    record = {"parameters": params, "status": "ok" if ok else "failed", "seconds": round(time.perf_counter() - t0, 1),
              "error": error}
    atomic_write_bytes(folder / "run.json", to_json(record).encode())
    return record


def finished(folder: Path) -> bool:
    """Whether ``folder`` holds a run that completed (``run.json`` says ok and ``metrics.json`` exists)."""
    try:
        return json.loads((folder / "run.json").read_text())["status"] == "ok" and (folder / "metrics.json").exists()
    except (OSError, ValueError, KeyError):
        return False


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Scalar leaves of nested dicts as ``{"a.b.c": value}`` (lists and None are skipped)."""
    out: dict[str, Any] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}{k}."))
    elif isinstance(obj, (int, float, str, bool)):
        out[prefix[:-1]] = obj
    return out


def sweep(notebook, params: dict[str, list[Any]], out, jobs: int = 1, columns: list[str] | None = None,
          plot: str | None = None, timeout: float | None = None, progress: bool = True) -> list[dict[str, Any]]:
    """Run the grid of ``params`` over ``notebook`` into ``out``; return one row per run (parameters,
    status, seconds, error and the flattened metrics) in grid order, and write ``results.csv``,
    ``results.md`` (parameters, status and ``columns``, by default the top-level numeric metrics)
    and, with ``plot`` set to a metric key, ``results.png``."""
    refuse_torchrun()
    notebook, out = Path(notebook).resolve(), Path(out).resolve()
    if not notebook.is_file():
        raise FileNotFoundError(f"notebook {notebook} does not exist")
    if jobs < 1:
        raise ValueError(f"jobs={jobs!r} is not valid; expected an integer >= 1")
    runs = [(p, out / run_name(p)) for p in grid(params)]
    todo = [(p, f) for p, f in runs if not finished(f)]
    threads = max(1, (os.cpu_count() or 1) // jobs)
    failures = []
    if todo:
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            futures = [pool.submit(run_one, notebook, p, f, threads, timeout) for p, f in todo]
            for fut in progress_bar(as_completed(futures), total=len(futures), desc=f"sweep {notebook.stem}",
                                    disable=not progress):
                record = fut.result()
                if record["status"] != "ok":
                    failures.append(record)
    for record in failures:  # after the progress bar, so the lines stay readable
        print(f"FAILED {run_name(record['parameters'])}: {record['error']}", file=sys.stderr)
    print(f"{len(runs)} runs: {len(runs) - len(todo)} already finished, {len(todo) - len(failures)} succeeded, "
          f"{len(failures)} failed -> {out}")
    rows = []
    for p, folder in runs:
        record = json.loads((folder / "run.json").read_text())
        metrics = json.loads((folder / "metrics.json").read_text()) if record["status"] == "ok" else {}
        rows.append({**{f"param.{k}": v for k, v in p.items()}, "status": record["status"],
                     "seconds": record["seconds"], "error": record["error"] or "", **flatten(metrics)})
    _write_tables(rows, out, list(params), columns)
    if plot:
        _plot(rows, out, list(params), plot)
    return rows


def _write_tables(rows: list[dict], out: Path, names: list[str], columns: list[str] | None) -> None:
    keys = list(dict.fromkeys(k for row in rows for k in row))
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    if columns is None:  # top-level numeric metrics
        columns = [k for k in keys if "." not in k and k not in ("status", "seconds", "error", "seed", "smoke")
                   and any(isinstance(r.get(k), (int, float)) and not isinstance(r.get(k), bool) for r in rows)]
    header = [f"param.{n}" for n in names] + ["status", "seconds"] + columns

    def cell(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v if v is not None else "")
    titles = [h.removeprefix("param.") if h.startswith("param.") else (f"metrics.{h}" if h in names else h) for h in header]
    lines = ["| " + " | ".join(titles) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(r.get(h)) for h in header) + " |" for r in rows]
    (out / "results.md").write_text("\n".join(lines) + "\n")


def _plot(rows: list[dict], out: Path, names: list[str], metric: str) -> None:
    if not any(metric in r for r in rows):
        raise ValueError(f"metric {metric!r} is in no metrics.json; see the columns of {out / 'results.csv'}")
    varied = [n for n in names if len({json.dumps(r[f"param.{n}"]) for r in rows}) > 1] or names[:1]
    x_name, others = varied[0], varied[1:]  # x: the first parameter that takes several values
    fig = Figure(figsize=(6, 3.6))  # no pyplot: works with any matplotlib backend, leaves no open figure
    ax = fig.subplots()
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(json.dumps([r[f"param.{o}"] for o in others]), []).append(r)
    for key, members in groups.items():
        pts = [(str(m[f"param.{x_name}"]), m[metric]) for m in members if metric in m]
        label = ", ".join(f"{o}={v}" for o, v in zip(others, json.loads(key))) or metric
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
    ax.set_xlabel(x_name); ax.set_ylabel(metric); ax.grid(alpha=0.3); ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "results.png", dpi=100)
