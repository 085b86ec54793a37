"""Notebooks as tests: committed notebooks are clean, and each runs headless in smoke mode."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

import kdlab as kd
from kdlab import nbclean

os.environ["KDLAB_PROGRESS"] = "text"  # kernels started by papermill/nbval inherit it
# seconds per cell in smoke mode (the slowest take ~10 s): a cell that never reports back (a kernel
# message lost, a hang) fails the test instead of stalling the whole run
CELL_TIMEOUT = 300

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted(p for p in (ROOT / "notebooks").rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)
TUTORIALS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def test_there_are_notebooks():
    assert [p.name for p in TUTORIALS][:1] == ["01_teacher_pretraining.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_notebook_is_clean(path):
    assert nbclean.problems(path) == [], f"run: python -m kdlab.nbclean {path.relative_to(ROOT)}"


@pytest.mark.parametrize("path", TUTORIALS, ids=lambda p: p.name)
def test_notebook_conventions(path):
    cells = json.loads(path.read_text())["cells"]
    code = [c for c in cells if c["cell_type"] == "code"]
    assert "import kdlab as kd" in "".join(code[0]["source"])
    assert code[1]["metadata"].get("tags") == ["parameters"]
    params = "".join(code[1]["source"])
    for name in ("seed", "device", "out_dir", "smoke"):
        assert f"\n{name} = " in "\n" + params, f"parameters cell lacks {name}"
    assert "kd.smoke_mode(smoke)" in "".join(code[2]["source"])
    assert cells[-1]["cell_type"] == "markdown" and "Summary" in "".join(cells[-1]["source"])


def test_nbclean_strips_outputs_but_keeps_checked_cells():
    nb = {"cells": [
        {"cell_type": "code", "execution_count": 3, "metadata": {"tags": ["x"], "scrolled": True}, "id": "a",
         "source": "print(1)", "outputs": [{"output_type": "stream", "name": "stdout", "text": "1\n"}]},
        {"cell_type": "code", "execution_count": 4, "metadata": {}, "id": "b",
         "source": "# NBVAL_CHECK_OUTPUT\nprint(2)", "outputs": [{"output_type": "stream", "name": "stdout", "text": "2\n"}]},
    ], "metadata": {"kernelspec": {"name": "python3"}, "papermill": {"duration": 1}}, "nbformat": 4, "nbformat_minor": 5}
    out = nbclean.clean(nb)
    assert out["cells"][0]["outputs"] == [] and out["cells"][0]["execution_count"] is None
    assert out["cells"][0]["metadata"] == {"tags": ["x"]}
    assert out["cells"][1]["outputs"][0]["text"] == "2\n"
    assert "papermill" not in out["metadata"]


def _papermill(notebook: Path, out_dir: Path, **params) -> dict:
    import papermill as pm

    pm.execute_notebook(str(notebook), str(out_dir / notebook.name), parameters={"smoke": True, "out_dir": str(out_dir), **params},
                        kernel_name="python3", cwd=str(notebook.parent), progress_bar=False,
                        execution_timeout=CELL_TIMEOUT)
    return json.loads((out_dir / "metrics.json").read_text())


@pytest.mark.notebook
def test_01_teacher_pretraining_smoke(tmp_path):
    m = _papermill(ROOT / "notebooks" / "01_teacher_pretraining.ipynb", tmp_path)
    assert m["smoke"] is True and m["dataset"] == "mnist5k"
    p = m["pixelcnn"]
    assert p["train_bpd_last"] < p["train_bpd_first"] <= 4.2  # learning started from about log2(16) = 4
    assert 0 < p["heldout_bpd"] < 4.0 and 0 < p["shipped_heldout_bpd"] < p["heldout_bpd"]
    g = m["gan"]
    assert g["parameters_g"] == 565_985  # default width 32, z_dim 64
    assert 0 < g["loss_d_last"] < 10 and 0 < g["loss_g_last"] < 10
    for key in ("checkpoint", "discriminator_checkpoint"):
        assert type(kd.checkpoints.load(g[key])).__name__ in ("Generator", "Discriminator")
    loaded = kd.checkpoints.load(p["checkpoint"])
    assert loaded.checkpoint_metadata["steps"] == p["steps"] and loaded.checkpoint_metadata["dataset"] == "mnist5k"
    assert abs(loaded.checkpoint_metadata["metrics"]["test_bits_per_dim"] - p["heldout_bpd"]) < 1e-9
    for png in ("real.png", "gan_losses.png", "gan_samples.png", "pixelcnn_loss.png", "pixelcnn_samples.png"):
        assert (tmp_path / png).stat().st_size > 1000


@pytest.mark.notebook
def test_nbval_checked_outputs(tmp_path):
    """nbval (--nbval-lax) re-executes the tutorials in smoke mode and compares the cells marked
    NBVAL_CHECK_OUTPUT with the outputs committed in the notebook."""
    env = dict(os.environ, KDLAB_SMOKE="1", KDLAB_RUNS=str(tmp_path))
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-lax",
                        f"--nbval-cell-timeout={CELL_TIMEOUT}",
                        "--nbval-sanitize-with", str(ROOT / "tests" / "nbval_sanitize.cfg"), *map(str, TUTORIALS)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]


@pytest.mark.notebook
def test_02_output_distillation_smoke(tmp_path):
    m = _papermill(ROOT / "notebooks" / "02_output_distillation.ipynb", tmp_path)
    assert m["smoke"] is True and m["steps"] == 20
    students = m["students"]
    assert set(students) == {f"w{w}_{k}" for w in (16, 8, 4) for k in ("mse", "l1", "joint", "scratch")}
    assert students["w4_mse"]["compression"] > 10  # the smallest student is over 10x smaller
    params = [students[f"w{w}_mse"]["parameters"] for w in (16, 8, 4)]
    assert params == sorted(params, reverse=True) and m["teacher"]["parameters"] == 565_985
    assert m["teacher"]["fid"] < min(s["fid"] for s in students.values())  # 20 steps cannot reach the teacher
    assert m["fid_floor_heldout"] < m["teacher"]["fid"]
    for s in students.values():
        assert s["fid"] > 0 and s["mse_to_teacher"] > 0 and s["hf_ratio"] > 0 and s["ms_per_image"] > 0
    assert set(m["claims"]) == {"w16_distilled_beats_scratch", "w8_distilled_beats_scratch", "w4_distilled_beats_scratch"}
    for png in ("fid_hf_vs_parameters.png", "samples_smallest.png", "samples_mse.png", "distill_curves.png"):
        assert (tmp_path / png).stat().st_size > 1000


@pytest.mark.notebook
def test_03_kl_derivation_smoke(tmp_path):
    m = _papermill(ROOT / "notebooks" / "03_kl_derivation.ipynb", tmp_path)
    assert m["smoke"] is True and m["steps"] == 10 and m["transfer_images"] == 128
    assert m["teacher"]["parameters"] == 89_040 and m["compression"] >= 4  # the issue asks for >= 4x fewer
    students = m["students"]
    assert set(students) == {"data only", "forward T=1", "forward T=2", "forward T=4", "reverse T=1", "on-policy reverse"}
    assert students["on-policy reverse"]["context"] == "student"
    for s in students.values():
        # 10 steps from a near-uniform start (4 bits/dim) cannot reach the teacher (0.49 on the shipped checkpoint)
        assert m["teacher"]["heldout_bpd"] < 0.6 < s["heldout_bpd"] < 4.5
        assert s["reverse_kl_se"] > 0 and math.isfinite(s["reverse_kl_bits_per_dim"])
    # the teacher's own samples: its reverse-KL estimate against itself is exactly zero
    assert m["teacher"]["reverse_kl_bits_per_dim"] == 0.0
    assert m["claims"]["best_forward"].startswith("forward T=")
    for png in ("forward_vs_reverse.png", "results.png", "training_curves.png", "samples.png", "pixel_temperatures.png"):
        assert (tmp_path / png).stat().st_size > 1000


@pytest.mark.notebook
def test_04_feature_distillation_smoke(tmp_path):
    m = _papermill(ROOT / "notebooks" / "04_feature_distillation.ipynb", tmp_path)
    assert m["smoke"] is True and m["steps"] == 10 and m["fid_samples"] == 100
    students = m["students"]
    assert set(students) == {f"w{w}_{k}" for w in (8, 4) for k in ("output", "hint", "attention", "gram")}
    t = m["teacher"]
    assert t["mse_to_teacher"] == 0 and t["gram_distance"] == 0 and t["class_tv_to_teacher"] == 0
    assert t["band_ratios"] == [1.0, 1.0, 1.0, 1.0] and 0 < t["recall"] <= 1 and 0 < t["precision"] <= 1
    for s in students.values():
        assert s["fid"] > t["fid"] and s["mse_to_teacher"] > 0 and s["gram_distance"] > 0  # 10 steps are far from the teacher
        assert 0 <= s["precision"] <= 1 and 0 <= s["recall"] <= 1 and len(s["band_ratios"]) == 4
    assert students["w4_output"]["parameters"] < students["w8_output"]["parameters"] < t["parameters"]
    assert set(m["claims"]) == {"w8_best_feature_method", "w8_feature_beats_output_only",
                                "w4_best_feature_method", "w4_feature_beats_output_only"}
    for png in ("teacher_features.png", "results.png", "samples_w8.png", "samples_w4.png", "attention_maps.png",
                "output_loss_curves.png"):
        assert (tmp_path / png).stat().st_size > 1000


@pytest.mark.notebook
def test_05_signal_preservation_smoke(tmp_path):
    m = _papermill(ROOT / "notebooks" / "05_signal_preservation.ipynb", tmp_path)
    assert m["smoke"] is True and m["steps"] == 10 and m["fid_samples"] == 100
    t, sweep = m["teacher"], m["sweep"]
    assert t["mse_to_teacher"] == 0 and t["gram_distance"] == 0 and t["band_ratios"] == [1.0] * 4
    assert set(sweep) == {f"{s}_{r}" for s in ("w32", "w1s2") for r in ("mse", "joint")}  # smoke: largest and smallest
    assert sweep["w32_mse"]["parameters"] == t["parameters"] == 565_985
    assert t["parameters"] / sweep["w1s2_mse"]["parameters"] >= 50  # the issue asks for >= 50x fewer
    for s in sweep.values():
        assert s["fid"] > t["fid"] and s["mse_to_teacher"] > 0 and 0 <= s["recall"] <= 1
    assert set(m["collapse"]) == {"mse", "joint"} and m["collapse"]["mse"]["to"] == "w1s2"
    # the shipped texture teacher keeps the data's balance of bands (about a third each)
    assert all(0.2 < s < 0.45 for s in m["texture_teacher_band_shares"])
    assert set(m["textures"]) == {f"w1s2_{r}" for r in ("mse", "l1", "joint", "mse+gram")}
    assert all(set(r["band_ratios"]) == {"low", "mid", "high"} for r in m["textures"].values())
    strategy = m["strategy"]
    assert "none" in strategy and {r["term"] for r in strategy.values()} >= {None, "hint", "attention", "gram"}
    assert strategy["none"]["extra_parameters"] == 0 and strategy["hint@up2x1"]["extra_parameters"] > 0
    assert m["strategy_winner"] in strategy
    for png in ("capacity_sweep.png", "samples_by_size.png", "textures_teacher.png", "texture_spectra.png",
                "texture_samples.png", "explorer_static.png"):
        assert (tmp_path / png).stat().st_size > 1000


@pytest.mark.notebook
def test_06_diffusion_step_distillation_smoke(tmp_path):
    m = _papermill(ROOT / "notebooks" / "06_diffusion_step_distillation.ipynb", tmp_path)
    assert m["smoke"] is True and m["base_steps"] == 8 and m["round_steps"] == 3 and m["fid_samples"] == 100
    assert m["teacher"]["parameters"] == 269_377 and m["teacher"]["steps"] == 8
    assert sorted(map(int, m["ddim"])) == sorted(map(int, m["distilled"])) == [2, 4]  # smoke: 8 -> 4 -> 2
    for table in (m["ddim"], m["distilled"]):
        for n, r in table.items():
            assert r["steps"] == int(n) and r["fid"] > 0 and r["ms_per_image"] > 0
    # fewer DDIM steps from the same noise cost quality: 2 steps are far worse than the teacher's 8
    assert m["ddim"]["2"]["fid"] > m["teacher"]["fid"]
    assert set(m["claims"]) == {"distilled_beats_ddim_at", "fewest_steps_within_25pct_of_teacher"}
    for png in ("fid_vs_steps.png", "samples.png"):
        assert (tmp_path / png).stat().st_size > 1000


@pytest.mark.notebook
def test_07_fused_kernels_smoke(tmp_path):
    m = _papermill(ROOT / "notebooks" / "07_fused_kernels.ipynb", tmp_path)
    assert m["smoke"] is True and m["shape"] == [4, 256, 4, 4]
    saved = m["saved_logit_tensors"]
    assert saved["fused op"] == pytest.approx(1.0)  # the op keeps only its gradient for the backward
    assert saved["eager PyTorch"] >= 2 * saved["fused op"]
    writes = m["written_logit_tensors"]  # the op writes only its gradient; the backward returns it as is
    assert writes["fused op"] == 1 and writes["eager PyTorch"] >= 3
    for direction in ("forward", "reverse"):
        assert m["op_vs_float64"][direction]["loss_rel_error"] < 1e-5
        assert m["op_vs_float64"][direction]["grad_max_error"] < 1e-5
        emulated = m["emulated_kernel_vs_float64"][direction]  # the CUDA source under the CPU emulator
        assert emulated["loss_rel_error"] < 1e-5 and emulated["grad_max_error"] < 1e-5
        assert emulated["identical_under_3_schedules"] is True
    assert m["benchmark"] in ("measured", "not measured")
    assert (tmp_path / "benchmark.png").stat().st_size > 1000
