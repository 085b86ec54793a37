"""`import kdlab` stays quick: the heavy libraries that only some functions need are imported by those
functions. Every process pays the import: each notebook kernel, each nbgrader autograde, each
torchrun rank of `kdlab fit`. (2026-12-01, this machine: 3.1 s with torchvision and SciPy imported
eagerly, 1.7 s without; torch itself takes 1.2 s.)"""
import json
import subprocess
import sys

LAZY = ("torchvision", "scipy", "torch._dynamo")  # torchvision's import pulls in torch._dynamo (about 1 s)


def test_importing_kdlab_leaves_torchvision_and_scipy_until_a_function_needs_them():
    code = ("import json, sys, kdlab; import kdlab.fit, kdlab.cli\n"
            f"print(json.dumps([m for m in {LAZY!r} if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == []

