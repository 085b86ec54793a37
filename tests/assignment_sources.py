"""Read the assignments' sources and the tutorials' written-out steps (shared by the exercise and
assignment tests): the model solutions live in the tutorials only."""
from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SOURCE = REPO / "notebooks" / "course" / "source"
sys.path.insert(0, str(REPO / "tools"))
from assignments import strip_markers  # noqa: E402

ASSIGNMENTS = sorted(p.name for p in SOURCE.iterdir() if p.is_dir())


def cells(path: Path) -> list[dict]:
    nb = json.loads(path.read_text())
    return [dict(c, source="".join(c["source"])) for c in nb["cells"]]


def source_notebook(assignment: str) -> Path:
    (path,) = (SOURCE / assignment).glob("*.ipynb")
    return path


def tutorial(assignment: str) -> Path:
    """Each assignment folder is named for its tutorial."""
    return REPO / "notebooks" / f"{assignment}.ipynb"


def solutions(assignment: str) -> dict[str, str]:
    """``{grade_id: the solution cell's code without nbgrader's markers}`` of an assignment's source."""
    return {c["metadata"]["nbgrader"]["grade_id"]: strip_markers(c["source"]) for c in cells(source_notebook(assignment))
            if c["cell_type"] == "code" and c["metadata"].get("nbgrader", {}).get("solution")}


def functions(src: str) -> dict[str, ast.FunctionDef]:
    return {n.name: n for n in ast.parse(src).body if isinstance(n, ast.FunctionDef)}


def tutorial_functions(assignment: str) -> dict[str, str]:
    """``{name: source}`` of every top-level function the tutorial defines in its code cells."""
    out = {}
    for c in cells(tutorial(assignment)):
        if c["cell_type"] != "code":
            continue
        src = "\n".join(line for line in c["source"].splitlines() if not line.startswith(("%", "!")))
        for name, node in functions(src).items():
            out[name] = ast.get_source_segment(src, node)
    return out
