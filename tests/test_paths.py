"""Where kdlab finds its data and writes its runs (kdlab.paths): the environment variables, the
repository the package was imported from, a repository found from the current folder upwards,
and the error / fallback when there is none."""
import os
from pathlib import Path

import pytest

import kdlab as kd
from kdlab import paths

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def no_env(monkeypatch):
    monkeypatch.delenv("KDLAB_DATA", raising=False)
    monkeypatch.delenv("KDLAB_RUNS", raising=False)
    monkeypatch.delenv("KDLAB_RUN_NAME", raising=False)


def _fake_repository(folder: Path) -> Path:
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "mnist5k.npz").write_bytes(b"")
    (folder / "kdlab").mkdir()
    return folder


def test_the_checkout_in_use_is_the_repository(no_env):
    assert paths.repository_root() == ROOT  # the tests import kdlab from this checkout
    assert paths.data_root() == ROOT / "data" and paths.runs_root() == ROOT / "runs"
    assert (paths.data_root() / "mnist5k.npz").is_file()


def test_environment_variables_override(monkeypatch, tmp_path):
    monkeypatch.setenv("KDLAB_DATA", str(tmp_path / "d"))
    monkeypatch.setenv("KDLAB_RUNS", str(tmp_path / "r"))
    assert paths.data_root() == tmp_path / "d" and paths.runs_root() == tmp_path / "r"
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("KDLAB_DATA", "~/data")
    assert paths.data_root() == tmp_path / "data"  # ~ is expanded
    run = kd.utils.run_dir("nb", "")  # run folders follow runs_root
    assert run.is_dir() and run.parent.parent == tmp_path / "r" and run.name == "nb"
    monkeypatch.setenv("KDLAB_RUNS", "")  # empty counts as unset
    assert paths.runs_root() == ROOT / "runs"


def test_run_folders_are_new_per_run_unless_kdlab_run_name_names_one(monkeypatch, tmp_path, no_env):
    monkeypatch.setenv("KDLAB_RUNS", str(tmp_path))
    first = kd.utils.run_dir("05_x")
    assert first.parent.name.endswith(f"-{os.getpid()}") and first.name == "05_x"  # <timestamp>-<host>-<pid>
    monkeypatch.setenv("KDLAB_RUN_NAME", "mine")
    mine = kd.utils.run_dir("05_x")
    (mine / "state.safetensors").write_bytes(b"kept")
    assert mine == tmp_path / "mine" / "05_x" and kd.utils.run_dir("05_x") == mine  # a rerun: the same folder
    assert (mine / "state.safetensors").read_bytes() == b"kept"
    assert kd.utils.run_dir("05_x", tmp_path / "explicit") == tmp_path / "explicit"  # out_dir still wins
    for bad in ("a/b", "..", "."):
        monkeypatch.setenv("KDLAB_RUN_NAME", bad)
        with pytest.raises(ValueError, match=r"KDLAB_RUN_NAME=.* is not valid; expected one folder name"):
            kd.utils.run_dir("05_x")


def test_a_repository_is_found_from_the_current_folder_upwards(monkeypatch, tmp_path, no_env):
    site = tmp_path / "site-packages"  # kdlab installed outside any repository
    (site / "kdlab").mkdir(parents=True)
    monkeypatch.setattr(paths, "PACKAGE_PARENT", site)
    clone = _fake_repository(tmp_path / "clone")
    (clone / "notebooks" / "exercises").mkdir(parents=True)
    monkeypatch.chdir(clone / "notebooks" / "exercises")
    assert paths.repository_root() == clone
    assert paths.data_root() == clone / "data" and paths.runs_root() == clone / "runs"
    monkeypatch.setenv("KDLAB_DATA", str(tmp_path / "elsewhere"))  # the variable still wins
    assert paths.data_root() == tmp_path / "elsewhere"


def test_a_folder_needs_the_data_and_the_package_to_count(monkeypatch, tmp_path, no_env):
    monkeypatch.setattr(paths, "PACKAGE_PARENT", tmp_path / "site-packages")
    half = tmp_path / "half"
    (half / "data").mkdir(parents=True)
    (half / "data" / "mnist5k.npz").write_bytes(b"")  # data but no kdlab/ folder
    monkeypatch.chdir(half)
    assert paths.repository_root() is None


def test_without_a_repository_data_raises_and_runs_fall_back_to_the_current_folder(monkeypatch, tmp_path, no_env):
    monkeypatch.setattr(paths, "PACKAGE_PARENT", tmp_path / "site-packages")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert paths.repository_root() is None
    with pytest.raises(FileNotFoundError, match="KDLAB_DATA") as e:
        paths.data_root()
    assert str(work) in str(e.value)  # names the folder it searched from
    assert paths.runs_root() == work / "runs"
    with pytest.raises(FileNotFoundError, match="KDLAB_DATA"):
        kd.data.load("mnist5k")  # the data loader reaches the same error
