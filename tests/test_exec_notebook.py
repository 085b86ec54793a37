"""The dependency-free notebook runner of the GPU timing machine (tools/exec_notebook.py), run the
way that machine runs it: IPython and ipywidgets hidden."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUNNER = ROOT / "tools" / "exec_notebook.py"
# a magic, parameters, kdlab and a figure (the tutorials themselves run once, in test_notebooks.py)
NOTEBOOK = ROOT / "tests" / "fixtures" / "runner_probe.ipynb"
# hide the Jupyter stack as on the GPU machine, then run the script as __main__
BLOCKED = ("import runpy, sys; sys.modules['IPython'] = sys.modules['ipywidgets'] = None; "
           "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')")


def _run(tmp_path, *args):
    env = dict(os.environ, KDLAB_SMOKE="1", KDLAB_PROGRESS="text", KDLAB_RUNS=str(tmp_path / "runs"), MPLBACKEND="Agg")
    return subprocess.run([sys.executable, "-c", BLOCKED, str(RUNNER), str(NOTEBOOK), *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.notebook
def test_runner_times_every_code_cell(tmp_path):
    out = tmp_path / "times.json"
    r = _run(tmp_path, "-p", "seed", "1", "--json", str(out))
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    report = json.loads(out.read_text())
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    code = [i for i, c in enumerate(cells) if c["cell_type"] == "code"]
    assert [c["index"] for c in report["cells"]] == code
    assert all(c["seconds"] >= 0 and isinstance(c["first_line"], str) for c in report["cells"])
    assert report["total_s"] == pytest.approx(sum(c["seconds"] for c in report["cells"]), abs=0.01)
    assert report["parameters"] == {"seed": 1} and report["notebook"].endswith(NOTEBOOK.name)
    assert report["python"] and report["torch"] and report["device"]
    assert "failed_cell" not in report and "total" in r.stdout
    assert list((tmp_path / "runs").rglob("metrics.json"))  # the notebook itself ran to its end


@pytest.mark.notebook
def test_runner_rejects_an_unknown_parameter(tmp_path):
    r = _run(tmp_path, "-p", "no_such_parameter", "3")
    assert r.returncode == 1
    assert "no_such_parameter" in r.stderr and "temperature" in r.stderr  # names it and the allowed ones
    assert not (tmp_path / "runs").exists()  # nothing ran


def test_runner_is_where_the_gpu_check_calls_it():
    assert RUNNER.is_file()
    assert "tools/exec_notebook.py" in (ROOT / "tools" / "gpu-check").read_text()
