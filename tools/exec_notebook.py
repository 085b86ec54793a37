"""Run a notebook's code cells in plain Python and time each cell.

Why this exists: users and CI run the tutorials with papermill (``make tutorial``, the notebook
tests), but the GPU machine we time them on has PyTorch and kdlab's runtime dependencies and no
Jupyter stack (papermill, nbformat, nbclient, IPython, ipykernel, ipywidgets). This stands in for
``papermill NB OUT --cwd DIR -p NAME VALUE``: code cells run in order in one namespace, in the
notebook's folder, with the parameters injected after the cell tagged ``parameters``. ``%``/``!``
lines are skipped; matplotlib uses Agg and figures are closed by ``plt.show()`` and after each cell
(as the inline backend does); a cell's last expression goes to ``display``, a stub when IPython is
missing. Prints each cell's wall time (CUDA synchronised) and the total; ``--json`` writes them
("index": position in the notebook's cells). A failing cell: traceback, JSON so far, exit 1.

    python tools/exec_notebook.py notebooks/07_fused_kernels.ipynb -p seed 1 --json times.json
"""
import argparse
import ast
import json
import linecache
import os
import sys
import time
import traceback
import types
from pathlib import Path


def install_ipython_stub():
    """A minimal ``IPython`` / ``IPython.display`` in sys.modules when the real one cannot be imported."""
    try:
        import IPython.display  # noqa: F401
        return
    except ImportError:
        pass

    def display(*objs, **kwargs):
        for obj in objs:
            if not type(obj).__module__.startswith("matplotlib"):  # figures: the notebooks save them
                print(obj if isinstance(obj, str) else repr(obj))

    class _Shown:
        def __init__(self, data=None, *args, **kwargs):
            self.data = data if data is not None else kwargs.get("filename") or kwargs.get("url")

        def __repr__(self):
            return f"<{type(self).__name__}: {str(self.data)[:200]}>"

    ipython, ipd = types.ModuleType("IPython"), types.ModuleType("IPython.display")
    ipd.display, ipd.clear_output = display, lambda *a, **k: None
    ipd.Markdown, ipd.HTML, ipd.Image = (type(n, (_Shown,), {}) for n in ("Markdown", "HTML", "Image"))
    ipython.display, ipython.get_ipython = ipd, lambda: None  # no shell: matplotlib and tqdm stay plain
    ipython.version_info, ipython.__version__ = (9, 0, 0, "stub"), "9.0.0+stub"  # matplotlib reads it
    sys.modules["IPython"], sys.modules["IPython.display"] = ipython, ipd


def assigned_names(source):
    targets = [t for node in ast.parse(source).body if isinstance(node, (ast.Assign, ast.AnnAssign))
               for t in getattr(node, "targets", [getattr(node, "target", None)])]
    return {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}


def compile_cell(source, label):
    """(code, code of the last expression or None); magic and shell lines are dropped if they break parsing."""
    linecache.cache[label] = (len(source), None, source.splitlines(True), label)  # tracebacks show the cell
    try:
        tree = ast.parse(source)
    except SyntaxError:
        lines = source.splitlines()
        for i, line in enumerate(lines):
            if line.lstrip().startswith(("%", "!")):
                print(f"   note: {label}: skipped {line.strip()!r}", flush=True)
                lines[i] = ""
        tree = ast.parse("\n".join(lines))
    last = None
    if tree.body and isinstance(tree.body[-1], ast.Expr) and not source.rstrip().endswith(";"):
        last = compile(ast.Expression(tree.body.pop().value), label, "eval")
    return compile(tree, label, "exec"), last


def environment():
    info = {"python": sys.version.split()[0], "torch": None, "device": "cpu"}
    try:
        import torch
        info["torch"] = torch.__version__
        info["device"] = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    except ImportError:
        pass
    return info


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("notebook", type=Path)
    ap.add_argument("-p", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"))
    ap.add_argument("--json", type=Path, help="write the timings here")
    ap.add_argument("--cwd", type=Path, help="working directory (default: the notebook's folder)")
    args = ap.parse_args(argv)
    nb_path, json_path = args.notebook.resolve(), args.json and args.json.resolve()
    params = {}
    for name, raw in args.p:
        try:
            params[name] = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            params[name] = raw
    cells = json.loads(nb_path.read_text(encoding="utf-8"))["cells"]
    src = lambda c: "".join(c["source"]) if isinstance(c["source"], list) else c["source"]  # noqa: E731
    tagged = [i for i, c in enumerate(cells) if c["cell_type"] == "code" and "parameters" in c["metadata"].get("tags", [])]
    allowed = assigned_names(src(cells[tagged[0]])) if tagged else set()
    if set(params) - allowed:
        print(f"error: {nb_path.name} has no parameter {', '.join(sorted(set(params) - allowed))}; allowed: "
              f"{', '.join(sorted(allowed)) or '(no cell is tagged parameters)'}", file=sys.stderr)
        return 1

    os.environ["MPLBACKEND"] = "Agg"
    install_ipython_stub()
    from IPython.display import display
    try:
        import matplotlib.pyplot as plt
        plt.show = lambda *a, **k: plt.close("all")
    except ImportError:
        plt = None
    cwd = (args.cwd or nb_path.parent).resolve()
    os.chdir(cwd)
    sys.path.insert(0, str(cwd))  # a kernel started in cwd imports modules from there
    ns = {"__name__": "__main__", "display": display}
    report = {"notebook": str(nb_path), "parameters": params, "total_s": 0.0, "cells": []}

    def finish(code):
        report["total_s"] = round(sum(c["seconds"] for c in report["cells"]), 3)
        report.update(environment())  # torch imported only now: its import time stays in the cells
        print(f"total {report['total_s']:.2f} s for {len(report['cells'])} cells of {nb_path.name}", flush=True)
        if json_path:
            json_path.write_text(json.dumps(report, indent=2) + "\n")
        return code

    for index, cell in enumerate(cells):
        if cell["cell_type"] != "code":
            continue
        source = src(cell)
        lines = [line.strip() for line in source.splitlines() if line.strip()] or [""]
        first = next((x for x in lines if not x.startswith(("#", "%", "!"))), lines[0])[:80]  # not tags, magics
        start, failed = time.perf_counter(), False
        try:
            body, last = compile_cell(source, f"<cell {index}>")
            exec(body, ns)
            value = eval(last, ns) if last else None
            if value is not None and not type(value).__module__.startswith("matplotlib"):
                display(value)
            if index in tagged[:1]:
                ns.update(params)  # papermill's injected-parameters cell
            if plt is not None:
                plt.close("all")
            torch = sys.modules.get("torch")
            if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
                torch.cuda.synchronize()
        except (Exception, SystemExit):
            failed = True
            print(f"\nFAILED: cell {index} ({first!r}):", file=sys.stderr)
            traceback.print_exc()
        seconds = time.perf_counter() - start
        report["cells"].append({"index": index, "first_line": first, "seconds": round(seconds, 3)})
        if failed:
            report["failed_cell"] = index
            return finish(1)
        print(f"[cell {index:3d}] {seconds:8.2f} s  {first}", flush=True)
    return finish(0)


if __name__ == "__main__":
    sys.exit(main())
