"""`import kdlab` stays quick: the heavy libraries that only some functions need are imported by those
functions. Every process that imports kdlab pays for it: each notebook kernel (nbgrader's autograde
runs one per submission) and each torchrun rank of `kdlab fit`. docs/results.md ("Runtimes") has
the measured difference."""
import json
import subprocess
import sys

LAZY = ("torchvision", "scipy", "torch._dynamo")  # torchvision's import pulls in torch._dynamo (about 1 s)


def _loaded_by(imports: str) -> set[str]:
    code = f"import json, sys; {imports}; print(json.dumps([m for m in {LAZY!r} if m in sys.modules]))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return set(json.loads(proc.stdout))


def test_importing_kdlab_leaves_torchvision_and_scipy_until_a_function_needs_them():
    # what torch itself loads (a PyTorch release might import torch._dynamo) is not kdlab's doing
    assert _loaded_by("import kdlab, kdlab.fit, kdlab.cli") - _loaded_by("import torch, torch.distributed.run") == set()
