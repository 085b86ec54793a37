"""The package, the tools, the data scripts, the tests and the notebooks pass ruff (its settings are
in pyproject.toml; ruff reads the code cells of .ipynb files)."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ruff_finds_nothing():
    r = subprocess.run([sys.executable, "-m", "ruff", "check", "--output-format", "concise", "kdlab", "tools", "data",
                        "tests", "notebooks"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
