"""Words for a comparison that one run can support, and no more.

Until the notebooks' comparisons carry intervals (bootstrap over samples, several training
seeds), a difference is called only when it exceeds the spread measured between runs that differ
in nothing that matters:

- FID at 500 samples: about 10 between noise sets for the same generator, and about 30 between
  training seeds of the same small student (notebook 05's width-4 students, 2026-11-29); at large
  FIDs seeds move it in proportion, so the margin is the larger of 30 and 20% of the lower FID;
- held-out bits/dim of notebook 03's students: 0.005 between reruns of the same defaults
  (2026-11-28 and 2026-11-29).
"""
from __future__ import annotations

FID_SPREAD = 30.0
FID_RELATIVE_SPREAD = 0.2
BPD_SPREAD = 0.005


def fid_margin(a: float, b: float) -> float:
    """The smallest FID difference between ``a`` and ``b`` that one run may call."""
    return max(FID_SPREAD, FID_RELATIVE_SPREAD * min(a, b))


def compare(a: float, b: float, margin: float) -> str:
    """``"lower"`` if ``a < b - margin``, ``"higher"`` if ``a > b + margin``, else ``"within"``."""
    if a < b - margin:
        return "lower"
    return "higher" if a > b + margin else "within"


def lower_wins(a: float, b: float, margin: float, name_a: str, name_b: str) -> str:
    """For a lower-is-better score: ``"<name_a> better"``, ``"<name_b> better"``, or a sentence saying
    the gap is within the run-to-run spread."""
    verdict = compare(a, b, margin)
    if verdict == "within":
        return f"within the run-to-run spread (±{margin:.3g}): one run cannot tell"
    return f"{name_a if verdict == 'lower' else name_b} better"


def fid_verdict(a: float, b: float, name_a: str, name_b: str) -> str:
    """:func:`lower_wins` for two 500-sample FIDs, with :func:`fid_margin`."""
    return lower_wins(a, b, fid_margin(a, b), name_a, name_b)
