"""Where kdlab finds its bundled data and writes its runs.

Both resolve the same way, first match wins:

1. the environment variable (``KDLAB_DATA`` for data, ``KDLAB_RUNS`` for runs);
2. the kdlab repository this package was imported from (an editable install or a checkout on
   ``sys.path``): ``<repo>/data`` and ``<repo>/runs``;
3. a kdlab repository found from the current folder upwards (a notebook started inside a clone
   while kdlab itself was installed non-editable into site-packages);
4. for runs only: ``./runs`` in the current folder. Data has no such default: without a
   repository :func:`data_root` raises an error that says how to point kdlab at one.

A folder counts as a kdlab repository when it holds ``data/mnist5k.npz`` and ``kdlab/``.
"""
from __future__ import annotations

import os
from pathlib import Path

PACKAGE_PARENT = Path(__file__).resolve().parent.parent


def _is_repository(folder: Path) -> bool:
    return (folder / "data" / "mnist5k.npz").is_file() and (folder / "kdlab").is_dir()


def repository_root() -> Path | None:
    """The kdlab repository in use (step 2 or 3 above), or ``None`` when there is none."""
    if _is_repository(PACKAGE_PARENT):
        return PACKAGE_PARENT
    here = Path.cwd().resolve()
    return next((folder for folder in (here, *here.parents) if _is_repository(folder)), None)


def data_root() -> Path:
    """Folder with the bundled data and shipped checkpoints (``mnist5k.npz``, ``checkpoints/``)."""
    if os.environ.get("KDLAB_DATA"):
        return Path(os.environ["KDLAB_DATA"]).expanduser()
    repo = repository_root()
    if repo is None:
        raise FileNotFoundError(
            "kdlab cannot find its bundled data: kdlab is installed outside its repository and no kdlab "
            f"repository contains the current folder ({Path.cwd()}). Set KDLAB_DATA to the data/ folder of a "
            "kdlab clone (export KDLAB_DATA=/path/to/kdlab/data), or run from inside the clone.")
    return repo / "data"


def runs_root() -> Path:
    """Folder under which notebook runs get their output folders."""
    if os.environ.get("KDLAB_RUNS"):
        return Path(os.environ["KDLAB_RUNS"]).expanduser()
    repo = repository_root()
    return (repo if repo is not None else Path.cwd()) / "runs"
