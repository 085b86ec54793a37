"""Time ``kdlab fit diffusion`` and measure the FID its model reaches (docs/scaling.md's single-GPU run).

    python tools/fit_benchmark.py --out runs/fitbench --steps 3000 --precision fp32 bf16 --json runs/fitbench/fit.json

For each precision: a fresh ``kdlab fit diffusion`` run (``--batch-size``, default 64) timed as a whole
(``seconds``: the training call, start-up and the data included; ``steps_per_second`` from it), then 500
samples of its EMA model with 64 DDIM steps from noise seed 10,000 and the notebooks' FID protocol
(kdlab's MNIST classifier, mnist5k statistics; the shipped teacher's images for the same noise give
``mse_to_teacher``). The shipped teacher's own FID on that noise is in the output for scale.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import kdlab as kd  # noqa: E402
from kdlab import fit  # noqa: E402
from kdlab.methods import diffusion as dm  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--precision", nargs="+", default=["fp32", "bf16"])
    p.add_argument("--samples", type=int, default=500)
    p.add_argument("--device", default="auto")
    p.add_argument("--json", type=Path)
    a = p.parse_args()
    device = kd.get_device(a.device)
    noise = torch.randn(a.samples, 1, 28, 28, generator=torch.Generator().manual_seed(10_000)).to(device)
    teacher = kd.checkpoints.load(kd.checkpoints.shipped("diffusion_teacher"), device=device).eval()
    evaluate = kd.evaluation.Evaluator(dm.sample(teacher, noise, 64))
    result = {"date": time.strftime("%Y-%m-%d"), "device": torch.cuda.get_device_name() if device.type == "cuda" else str(device),
              "torch": torch.__version__, "steps": a.steps, "batch_size": a.batch_size,
              "shipped_teacher_fid": evaluate(evaluate.teacher_images)["fid"], "runs": {}}
    parser = argparse.ArgumentParser()
    fit.add_arguments(parser)
    for precision in a.precision:
        out = a.out / precision
        shutil.rmtree(out, ignore_errors=True)  # a fresh run, not a resumed one
        args = parser.parse_args(["diffusion", "--out", str(out), "--steps", str(a.steps), "--batch-size", str(a.batch_size),
                                  "--precision", precision, "--device", str(device), "--quiet"])
        start = time.perf_counter()
        fit.fit(args)
        seconds = time.perf_counter() - start
        model = kd.checkpoints.load(out / "checkpoint.safetensors", device=device).eval()
        m = evaluate(dm.sample(model, noise, 64))
        result["runs"][precision] = {"seconds": seconds, "steps_per_second": a.steps / seconds, "fid": m["fid"],
                                     "fid_ci": m["fid_ci"], "precision": m["precision"], "recall": m["recall"],
                                     "mse_to_teacher": m["mse_to_teacher"]}
        print(precision, json.dumps(result["runs"][precision]), flush=True)
        if a.json:  # after each precision, so a run stopped by a time limit keeps what it measured
            a.json.parent.mkdir(parents=True, exist_ok=True)
            a.json.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
