"""kdlab.evaluation.verdicts calls a difference only beyond the stated run-to-run spread."""
import pytest

from kdlab.evaluation import verdicts


def test_fid_margin_is_the_larger_of_the_absolute_and_the_relative_spread():
    assert verdicts.fid_margin(100.0, 120.0) == 30.0  # 20% of 100 is 20 < 30
    assert verdicts.fid_margin(1500.0, 1400.0) == pytest.approx(280.0)  # 20% of the lower FID


@pytest.mark.parametrize("a, b, expected", [
    (100.0, 131.0, "lower"), (131.0, 100.0, "higher"), (100.0, 130.0, "within"), (100.0, 70.0, "within"),
])
def test_compare_at_the_edges_of_the_margin(a, b, expected):
    assert verdicts.compare(a, b, 30.0) == expected


def test_verdict_sentences():
    assert verdicts.fid_verdict(102.6, 883.6, "distilled", "scratch") == "distilled better"
    assert verdicts.fid_verdict(883.6, 102.6, "distilled", "scratch") == "scratch better"
    # notebook 04's width-4 students, 2026-11-30: attention 1376.1 against output only 1502.4
    assert "cannot tell" in verdicts.fid_verdict(1376.1, 1502.4, "attention", "output only")
    # notebook 03: the best forward student against the data-only one, 0.5419 vs 0.5424 bits/dim
    assert "cannot tell" in verdicts.lower_wins(0.5419, 0.5424, verdicts.BPD_SPREAD, "distillation", "data only")
    assert verdicts.lower_wins(0.50, 0.52, verdicts.BPD_SPREAD, "distillation", "data only") == "distillation better"
