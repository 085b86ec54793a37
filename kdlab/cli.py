"""The kdlab command: run a notebook, or sweep a grid of its parameters.

    kdlab run notebooks/03_kl_derivation.ipynb -p steps 500 -p smoke True --out runs/mine
    kdlab sweep notebooks/04_feature_distillation.ipynb -p steps 200,400 -p widths "[8],[4]" \\
        --jobs 2 --out runs/sweep04 --plot students.w8_output.fid
    kdlab fit distill-gan --out runs/s --steps 400          (several processes: torchrun ... -m kdlab fit ...)

``-p NAME VALUES``: comma-separated values (Python literals where they parse, strings otherwise;
commas inside brackets or quotes do not split). ``run`` takes one value per parameter.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from . import fit as fit_command
from . import sweep as sw


def _params(pairs: list[list[str]] | None) -> dict[str, list]:
    params: dict[str, list] = {}
    for name, values in pairs or []:
        if name in params:
            raise SystemExit(f"kdlab: parameter {name!r} given twice")
        try:
            params[name] = sw.parse_values(values)
        except ValueError as e:
            raise SystemExit(f"kdlab: -p {name}: {e}")
    return params


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kdlab", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, helptext in (("run", "execute a notebook once"), ("sweep", "execute a notebook over a parameter grid")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("notebook", type=Path)
        p.add_argument("-p", "--parameter", nargs=2, action="append", metavar=("NAME", "VALUES"),
                       help="a notebook parameter and its value(s), comma-separated for a sweep")
        p.add_argument("--out", type=Path, help="output folder (default runs/<notebook>-<timestamp>)")
        p.add_argument("--timeout", type=float, help="seconds before a run is stopped and reported as failed")
        if name == "sweep":
            p.add_argument("--jobs", type=int, default=1, help="runs in parallel (CPU threads are shared out)")
            p.add_argument("--columns", help="comma-separated metric keys for results.md (default: top-level numbers)")
            p.add_argument("--plot", metavar="METRIC", help="plot this metric key against the first parameter")
    fit_parser = sub.add_parser("fit", help="train one method (the notebooks' code), in one process or under torchrun",
                                description=fit_command.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    fit_command.add_arguments(fit_parser)
    args = parser.parse_args(argv)
    if args.command == "fit":
        return fit_command.main(args)
    params = _params(args.parameter)
    out = args.out or Path("runs") / f"{args.notebook.stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    if args.command == "run":
        multi = [n for n, v in params.items() if len(v) != 1]
        if multi:
            raise SystemExit(f"kdlab run: {', '.join(multi)} got several values; use kdlab sweep for a grid")
        if not args.notebook.is_file():
            raise SystemExit(f"kdlab: notebook {args.notebook} does not exist")
        try:
            record = sw.run_one(args.notebook.resolve(), {n: v[0] for n, v in params.items()}, out.resolve(),
                                timeout=args.timeout)
        except ValueError as e:
            raise SystemExit(f"kdlab run: {e}")
        print(f"{record['status']} in {record['seconds']} s -> {out.resolve()}" +
              (f"\n{record['error']}" if record["error"] else ""))
        return 0 if record["status"] == "ok" else 1
    try:
        rows = sw.sweep(args.notebook, params, out, jobs=args.jobs,
                        columns=args.columns.split(",") if args.columns else None, plot=args.plot,
                        timeout=args.timeout)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"kdlab sweep: {e}")
    print(f"results: {out / 'results.md'}, {out / 'results.csv'}")
    return 0 if all(r["status"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
