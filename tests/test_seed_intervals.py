"""tools/seed_intervals.py: per-seed differences, their t interval and the verdict they allow."""
import json
import sys
from pathlib import Path

import pytest
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
import seed_intervals  # noqa: E402


def test_row_verdict_follows_the_t_interval_and_the_direction():
    # differences a - b of a lower-is-better score: all positive means b is better
    assert seed_intervals.row("x", [0.05, 0.06, 0.055], True, "data only", "soft targets", ".3f").endswith(
        "| soft targets better |")
    assert seed_intervals.row("x", [-5.0, -6.0, -5.5], True, "distilled", "scratch").endswith("| distilled better |")
    assert seed_intervals.row("x", [-5.0, 6.0, 0.5], True, "a", "b").endswith("| cannot tell |")
    # higher is better: positive differences favour a
    assert seed_intervals.row("x", [1.0, 1.2, 1.1], False, "a", "b").endswith("| a better |")
    half = stats.t.ppf(0.975, 2) * 0.1 / 3 ** 0.5  # s = 0.1 for [1.0, 1.2, 1.1]
    assert f"1.1 [{1.1 - half:.1f}, {1.1 + half:.1f}]" in seed_intervals.row("x", [1.0, 1.2, 1.1], False, "a", "b")


def test_tables_read_per_seed_metrics_of_notebook_02(tmp_path):
    for seed, gaps in ((0, (-10.0, -20.0, -30.0)), (1, (-12.0, -18.0, -33.0)), (2, (-11.0, -25.0, -28.0))):
        folder = tmp_path / f"seed={seed}" / "02_output_distillation"
        folder.mkdir(parents=True)
        m = {"seed": seed, "smoke": False,
             "fid_gap_distilled_minus_scratch": {f"w{w}": [g, g - 1, g + 1] for w, g in zip((16, 8, 4), gaps)}}
        (folder / "metrics.json").write_text(json.dumps(m))
    runs = seed_intervals.collect([tmp_path])
    assert sorted(runs["02_output_distillation"]) == [0, 1, 2]
    lines = seed_intervals.tables(runs)
    assert any(line.startswith("| w16: distilled - scratch | -10.0, -12.0, -11.0 |") and "distilled better" in line
               for line in lines)
    with pytest.raises(SystemExit, match="two runs"):
        seed_intervals.collect([tmp_path, tmp_path])


def test_tables_read_per_seed_metrics_of_notebook_08(tmp_path):
    gaps = {0: {"consistency_1": -5.0, "DMD_1": -30.0, "DMD multi-step_2": 20.0},
            1: {"consistency_1": 4.0, "DMD_1": -25.0, "DMD multi-step_2": 22.0},
            2: {"consistency_1": 2.0, "DMD_1": -35.0, "DMD multi-step_2": 24.0}}
    for seed, g in gaps.items():
        folder = tmp_path / f"seed={seed}" / "08_one_step_distillation"
        folder.mkdir(parents=True)
        m = {"seed": seed, "smoke": False, "fid_gap_to_progressive": {k: [v, v - 5, v + 5] for k, v in g.items()}}
        (folder / "metrics.json").write_text(json.dumps(m))
    lines = seed_intervals.tables(seed_intervals.collect([tmp_path]))
    assert any(line.startswith("| 1 step: DMD - progressive | -30.0, -25.0, -35.0 |") and "DMD better" in line
               for line in lines)
    assert any(line.startswith("| 1 step: consistency - progressive | -5.0, 4.0, 2.0 |") and "cannot tell" in line
               for line in lines)
    assert any(line.startswith("| 2 steps: DMD multi-step - progressive | 20.0, 22.0, 24.0 |") and "progressive better" in line
               for line in lines)
