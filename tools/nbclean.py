"""Keep committed notebooks clean: no outputs, execution counts or volatile metadata, except the
outputs of cells marked ``# NBVAL_CHECK_OUTPUT`` (the references the tests compare a smoke run
against). Kernel name ``python3``; cell ids are the cell's position (``c00``, ``c01``...), so an
edit does not renumber the whole notebook in a diff.

    python tools/nbclean.py notebooks/*.ipynb          # clean in place
    python tools/nbclean.py --check notebooks/*.ipynb  # exit 1 and list what is not clean
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

MARKER = "NBVAL_CHECK_OUTPUT"
KERNELSPEC = {"display_name": "Python 3", "language": "python", "name": "python3"}
KEEP_CELL_METADATA = ("tags", "nbgrader")  # nbgrader: the assignments' cell roles, points and checksums


def _source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def clean(nb: dict) -> dict:
    """Return a cleaned copy of notebook JSON ``nb``."""
    nb = json.loads(json.dumps(nb))
    n_code = 0
    for index, cell in enumerate(nb.get("cells", [])):
        cell["id"] = f"c{index:02d}"
        cell["metadata"] = {k: v for k, v in cell.get("metadata", {}).items() if k in KEEP_CELL_METADATA and v}
        if cell.get("cell_type") != "code":
            cell.pop("outputs", None)
            cell.pop("execution_count", None)
            continue
        n_code += 1
        cell["execution_count"] = None
        if MARKER in _source(cell):
            # checked cells keep a fixed execution count (their position among the code cells), so
            # that nbval, too, can compare them
            cell["execution_count"] = n_code if cell.get("outputs") else None
            for out in cell.get("outputs", []):
                out.pop("metadata", None) if out.get("output_type") == "stream" else None
                if "execution_count" in out:
                    out["execution_count"] = n_code
        else:
            cell["outputs"] = []
    lang = nb.get("metadata", {}).get("language_info", {})
    nb["metadata"] = {"kernelspec": dict(KERNELSPEC), "language_info": {"name": lang.get("name", "python")}}
    return nb


def dumps(nb: dict) -> str:
    return json.dumps(nb, indent=1, ensure_ascii=False) + "\n"


def problems(path: Path) -> list[str]:
    """What keeps ``path`` from being clean (empty when it is clean)."""
    text = path.read_text()
    try:
        nb = json.loads(text)
    except json.JSONDecodeError as e:
        return [f"not valid JSON: {e}"]
    out = []
    for i, cell in enumerate(nb.get("cells", [])):
        if cell.get("cell_type") == "code" and cell.get("outputs") and MARKER not in _source(cell):
            out.append(f"cell {i} has outputs but is not marked {MARKER}")
        if cell.get("execution_count") is not None and MARKER not in _source(cell):
            out.append(f"cell {i} has an execution count")
    if nb.get("metadata", {}).get("kernelspec", {}).get("name") != "python3":
        out.append("kernelspec name is not 'python3'")
    if not out and dumps(clean(nb)) != text:
        out.append("volatile metadata or formatting differs from the cleaned form")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("notebooks", nargs="+", type=Path)
    ap.add_argument("--check", action="store_true", help="only report; exit 1 if any notebook is not clean")
    args = ap.parse_args(argv)
    bad = 0
    for path in args.notebooks:
        if args.check:
            for p in problems(path):
                print(f"{path}: {p}")
                bad = 1
        else:
            path.write_text(dumps(clean(json.loads(path.read_text()))))
    if bad:
        print("clean with: python tools/nbclean.py notebooks/*.ipynb notebooks/**/*.ipynb")
    return bad


if __name__ == "__main__":
    sys.exit(main())
