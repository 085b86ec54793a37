"""tools/nbclean.py strips what a run adds to a notebook and keeps the checked outputs."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
import nbclean  # noqa: E402


def _notebook():
    return {"cells": [
        {"cell_type": "code", "execution_count": 3, "metadata": {"tags": ["x"], "scrolled": True}, "id": "random-1",
         "source": "print(1)", "outputs": [{"output_type": "stream", "name": "stdout", "text": "1\n"}]},
        {"cell_type": "code", "execution_count": 4, "metadata": {}, "id": "random-2",
         "source": "# NBVAL_CHECK_OUTPUT\nprint(2)", "outputs": [{"output_type": "stream", "name": "stdout", "text": "2\n"}]},
        {"cell_type": "markdown", "metadata": {"collapsed": False}, "id": "random-3", "source": "text"},
    ], "metadata": {"kernelspec": {"name": "python3"}, "papermill": {"duration": 1}}, "nbformat": 4, "nbformat_minor": 5}


def test_clean_strips_outputs_but_keeps_checked_cells():
    out = nbclean.clean(_notebook())
    assert out["cells"][0]["outputs"] == [] and out["cells"][0]["execution_count"] is None
    assert out["cells"][0]["metadata"] == {"tags": ["x"]} and out["cells"][2]["metadata"] == {}
    assert out["cells"][1]["outputs"][0]["text"] == "2\n" and out["cells"][1]["execution_count"] == 2
    assert [c["id"] for c in out["cells"]] == ["c00", "c01", "c02"]  # stable ids: position in the notebook
    assert "papermill" not in out["metadata"] and out["metadata"]["kernelspec"]["name"] == "python3"


def test_problems_names_what_is_not_clean(tmp_path):
    path = tmp_path / "nb.ipynb"
    path.write_text(nbclean.dumps(_notebook()))
    found = nbclean.problems(path)
    assert "cell 0 has outputs but is not marked NBVAL_CHECK_OUTPUT" in found and "cell 0 has an execution count" in found
    path.write_text(nbclean.dumps(nbclean.clean(_notebook())))
    assert nbclean.problems(path) == []
    assert nbclean.main(["--check", str(path)]) == 0
