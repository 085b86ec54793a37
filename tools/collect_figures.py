"""Copy the default run's figures into ``notebooks/figures/`` and record where they came from.

    python tools/collect_figures.py runs/latest          # after `make tutorial`

Each tutorial embeds its default run's figures as ``![caption](figures/NN_name.png)``. This script
finds, for every such reference, the figure the run wrote (``<run>/<notebook>/name.png`` or
``NN_name.png``), copies it, and writes ``notebooks/figures/figures.json``: for each figure the
notebook, the date of the run, the parameters papermill passed and the command. The notebooks'
captions name that date; a test checks that they agree and that no figure is missing or stale.
"""
from __future__ import annotations

import argparse
import datetime
import json
import re
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIGURES = ROOT / "notebooks" / "figures"
REFERENCE = re.compile(r"\]\(figures/([\w.-]+\.png)\)")


def references(notebook: Path) -> list[str]:
    """Figure file names that ``notebook``'s markdown cells embed."""
    cells = json.loads(notebook.read_text())["cells"]
    return [name for c in cells if c["cell_type"] == "markdown" for name in REFERENCE.findall("".join(c["source"]))]


def collect(run: Path, command: str) -> dict:
    record = json.loads((FIGURES / "figures.json").read_text()) if (FIGURES / "figures.json").exists() else {}
    for notebook in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        folder = run / notebook.stem
        executed = run / notebook.name
        if not folder.is_dir() or not executed.exists():
            print(f"{notebook.name}: not in {run}, figures kept as they are")
            continue
        metrics = folder / "metrics.json"
        if not metrics.exists():
            raise SystemExit(f"{folder} has no metrics.json: the run of {notebook.name} did not finish")
        params = json.loads(executed.read_text())["metadata"].get("papermill", {}).get("parameters", {})
        date = datetime.date.fromtimestamp(metrics.stat().st_mtime).isoformat()
        for name in references(notebook):
            source = next((p for p in (folder / name, folder / name[3:]) if p.exists()), None)
            if source is None:
                raise SystemExit(f"{notebook.name} embeds figures/{name}, but {folder} has neither {name} nor {name[3:]}")
            shutil.copyfile(source, FIGURES / name)
            record[name] = {"notebook": notebook.name, "date": date, "command": command,
                            "parameters": {k: v for k, v in params.items() if k != "out_dir"}}
            print(f"{name} <- {source.relative_to(run)} ({date})")
    (FIGURES / "figures.json").write_text(json.dumps(dict(sorted(record.items())), indent=1) + "\n")
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a folder written by `make tutorial` (runs/<stamp> or runs/latest)")
    parser.add_argument("--command", default="make tutorial", help="the command that made the run")
    args = parser.parse_args(argv)
    if not args.run.is_dir():
        raise SystemExit(f"{args.run} is not a folder; run `make tutorial` first")
    collect(args.run.resolve(), args.command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
