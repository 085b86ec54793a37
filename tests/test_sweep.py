"""kdlab run / kdlab sweep (kdlab.cli, kdlab.sweep) on a tiny fixture notebook."""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kdlab import sweep as sw

PROBE = Path(__file__).parent / "fixtures" / "sweep_probe.ipynb"


def test_parse_values_splits_top_level_commas_only():
    assert sw.parse_values("1,2.5,mse,True") == [1, 2.5, "mse", True]
    assert sw.parse_values("[8,4],[16]") == [[8, 4], [16]]
    assert sw.parse_values("'a,b',c") == ["a,b", "c"]
    assert sw.parse_values('{"hint": 1.0, "gram": 10}') == [{"hint": 1.0, "gram": 10}]
    with pytest.raises(ValueError, match="empty value"):
        sw.parse_values("1,,2")


def test_grid_and_run_names_are_unique_and_safe():
    g = sw.grid({"a": [1, 2], "b": ["x", "y/z"]})
    assert g == [{"a": 1, "b": "x"}, {"a": 1, "b": "y/z"}, {"a": 2, "b": "x"}, {"a": 2, "b": "y/z"}]
    names = [sw.run_name(p) for p in g]
    assert len(set(names)) == 4 and all("/" not in n for n in names)
    assert sw.run_name({"a": 1, "b": "x"}) == "a=1__b=x"
    assert sw.flatten({"x": 1, "y": {"z": 2.0, "w": [1]}, "s": "t"}) == {"x": 1, "y.z": 2.0, "s": "t"}


@pytest.mark.notebook
def test_sweep_runs_grid_in_parallel_skips_finished_and_reports_failures(tmp_path):
    out = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "kdlab.cli", "sweep", str(PROBE), "-p", "a", "1,2", "-p", "b", "10,20",
           "-p", "fail_on", "2", "--jobs", "2", "--out", str(out), "--plot", "sum"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 1, r.stdout + r.stderr  # two runs fail on purpose
    assert r.stderr.count("FAILED") == 2 and "ValueError: a=2 is the failing value" in r.stderr
    assert "cell 3 (if a == fail_on:)" in r.stderr  # the failing cell, counted among the notebook's code cells
    folders = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert folders == ["a=1__b=10__fail_on=2", "a=1__b=20__fail_on=2", "a=2__b=10__fail_on=2", "a=2__b=20__fail_on=2"]
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert len(rows) == 4 and [r["status"] for r in rows] == ["ok", "ok", "failed", "failed"]
    assert [r["sum"] for r in rows[:2]] == ["11", "21"] and rows[0]["nested.diff"] == "-9"
    assert int(rows[0]["threads"]) == max(1, os.cpu_count() // 2)  # the cores are shared by the 2 jobs
    assert (out / "results.png").stat().st_size > 1000 and "| a | b | fail_on |" in (out / "results.md").read_text()
    for f in folders[:2]:
        assert (out / f / "sweep_probe.ipynb").exists() and json.loads((out / f / "run.json").read_text())["status"] == "ok"
    # a rerun executes only what did not finish
    r2 = subprocess.run(cmd, capture_output=True, text=True)
    assert "4 runs: 2 already finished, 0 succeeded, 2 failed" in r2.stdout  # failed runs are retried
    cmd3 = [sys.executable, "-m", "kdlab.cli", "sweep", str(PROBE), "-p", "a", "1,2", "-p", "b", "10,20",
            "--jobs", "2", "--out", str(out)]  # without fail_on: a new grid, new folders
    r3 = subprocess.run(cmd3, capture_output=True, text=True)
    assert r3.returncode == 0 and "4 runs: 0 already finished, 4 succeeded, 0 failed" in r3.stdout


def test_run_single_notebook_and_bad_arguments(tmp_path, monkeypatch):
    from kdlab import cli
    with pytest.raises(SystemExit, match="several values"):
        cli.main(["run", str(PROBE), "-p", "a", "1,2"])
    with pytest.raises(SystemExit, match="does not exist"):
        cli.main(["run", str(tmp_path / "missing.ipynb")])
    with pytest.raises(SystemExit, match="given twice"):
        cli.main(["sweep", str(PROBE), "-p", "a", "1", "-p", "a", "2"])
    for k, v in {"WORLD_SIZE": "2", "RANK": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}.items():
        monkeypatch.setenv(k, v)  # a cluster container's own variables (not torchrun's): the run is still plain
    assert cli.main(["run", str(PROBE), "-p", "a", "3", "--out", str(tmp_path / "one")]) == 0
    metrics = json.loads((tmp_path / "one" / "metrics.json").read_text())
    assert metrics["product"] == 6 and metrics["world"] is None


def test_runs_do_not_inherit_a_launchers_variables(monkeypatch):
    # the variables torchrun's agent gives each worker, and a cluster container's own WORLD_SIZE / MASTER_PORT
    launcher = {"RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "GROUP_RANK": "0",
                "GROUP_WORLD_SIZE": "1", "ROLE_RANK": "1", "ROLE_NAME": "default", "ROLE_WORLD_SIZE": "2",
                "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500", "TORCHELASTIC_RUN_ID": "none",
                "TORCHELASTIC_RESTART_COUNT": "0", "TORCHELASTIC_MAX_RESTARTS": "0"}
    for k, v in {**launcher, "KDLAB_DATA": "/data/here", "OMP_NUM_THREADS": "8"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("KDLAB_WIDGETS", raising=False)
    env = sw.child_env(threads=3)
    assert not set(launcher) & set(env)
    assert env["KDLAB_DATA"] == "/data/here" and env["PATH"] == os.environ["PATH"]  # the rest is passed on
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "3" and env["KDLAB_PROGRESS"] == "text"
    assert env["KDLAB_WIDGETS"] == "0"
    monkeypatch.setenv("KDLAB_WIDGETS", "1")
    assert sw.child_env()["KDLAB_WIDGETS"] == "1" and sw.child_env()["OMP_NUM_THREADS"] == "8"


@pytest.mark.parametrize("command", ["run", "sweep"])
def test_run_and_sweep_refuse_torchrun(command, tmp_path, monkeypatch):
    from kdlab import cli

    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "none")
    refusal = f"kdlab {command}: this process was started by torchrun \\(WORLD_SIZE and TORCHELASTIC_RUN_ID.*kdlab fit"
    with pytest.raises(SystemExit, match=refusal):
        cli.main([command, str(PROBE), "-p", "a", "1", "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()
