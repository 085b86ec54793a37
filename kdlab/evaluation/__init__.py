"""Evaluation: how good a generator is and what it costs. Never imports training code.

- :mod:`.metrics`: spectra and frequency bands, Gram distance, Fréchet distance, MACs, timing;
- :mod:`.diversity`: improved precision and recall, class histograms, mode coverage;
- :mod:`.fid`: :class:`FID` in the feature space of kdlab's digit classifier;
- :mod:`.evaluator`: :class:`Evaluator`, the one protocol that every digit notebook reports;
- :mod:`.intervals`: bootstrap intervals over samples, t intervals over seeds, and the verdicts they allow.
"""
from . import diversity, fid, intervals, metrics
from .evaluator import Evaluator
from .fid import FID

__all__ = ["Evaluator", "FID", "diversity", "fid", "intervals", "metrics"]
