"""Fidelity and diversity, reported separately (notebooks 04 and 05).

- :func:`precision_recall`: improved precision and recall (Kynkaanniemi et al. 2019, arXiv
  1904.06991) of generated features against real features: each set's manifold is the union of
  balls around its points with radius the distance to the point's k-th nearest neighbour in the
  same set. Precision = share of generated points inside the real manifold (fidelity); recall =
  share of real points inside the generated manifold (diversity).
- :func:`class_histogram` and :func:`mode_coverage`: which digit classes a generator produces,
  under the shipped classifier, compared with a reference (the teacher, or real data).

Features are any ``[N, D]`` tensor; kdlab uses the FID classifier's 128 features
(:func:`kdlab.evaluation.fid.embed`).
"""
from __future__ import annotations

import torch
from torch import nn

from ..utils import check_int


def _check_features(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"expected features [N, D] and [M, D] with the same D, got {list(a.shape)} and {list(b.shape)}")


def knn_radii(feats: torch.Tensor, k: int = 3, chunk: int = 1024) -> torch.Tensor:
    """Distance from each point of ``feats`` ``[N, D]`` to its k-th nearest other point, ``[N]``."""
    check_int("k", k)
    if len(feats) <= k:
        raise ValueError(f"need more than k={k} points for k-nearest-neighbour radii, got {len(feats)}")
    radii = torch.empty(len(feats), dtype=feats.dtype, device=feats.device)
    for i in range(0, len(feats), chunk):
        d = torch.cdist(feats[i:i + chunk], feats)  # (chunk, N), includes the point itself at distance 0
        radii[i:i + chunk] = d.kthvalue(k + 1, dim=1).values
    return radii


def inside(query: torch.Tensor, ref: torch.Tensor, ref_radii: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """For each ``query`` point ``[M, D]``, whether it lies within ``ref_radii[j]`` of some ``ref[j]``,
    ``[M]`` bool. Its mean is precision (query = generated) or recall (query = real)."""
    return torch.cat([(torch.cdist(query[i:i + chunk], ref) <= ref_radii[None]).any(1)
                      for i in range(0, len(query), chunk)])


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 3, chunk: int = 1024) -> tuple[float, float]:
    """``(precision, recall)`` in [0, 1] of generated features ``fake`` ``[M, D]`` against ``real``
    ``[N, D]`` (float64 recommended); k = 3 as in the paper. Vectorised in chunks of ``chunk`` rows:
    5,000 x 5,000 points of 128 features take about a second on a CPU."""
    _check_features(real, fake)
    precision = inside(fake, real, knn_radii(real, k, chunk), chunk).double().mean().item()
    recall = inside(real, fake, knn_radii(fake, k, chunk), chunk).double().mean().item()
    return precision, recall


@torch.no_grad()
def class_histogram(classifier: nn.Module, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Share of ``images`` ``[N, 1, 28, 28]`` in [-1, 1] that ``classifier`` assigns to each class,
    ``[n_classes]`` (float64, sums to 1)."""
    classifier.eval()
    dev = next(classifier.parameters()).device
    preds = torch.cat([classifier(images[i:i + batch_size].to(dev, torch.float32)).argmax(1).cpu()
                       for i in range(0, len(images), batch_size)])
    n_classes = classifier.config["n_classes"] if hasattr(classifier, "config") else int(preds.max()) + 1
    return torch.bincount(preds, minlength=n_classes).double() / len(preds)


def mode_coverage(hist: torch.Tensor, reference: torch.Tensor, min_share: float = 0.01) -> dict[str, float]:
    """Compare class histograms ``[K]``: ``tv`` = total variation distance ``0.5 sum_k |h_k - r_k|``
    (0 = same class balance, 1 = disjoint), ``covered`` = classes with at least ``min_share`` of the
    samples among those the reference has at that share, ``reference_classes`` = how many the
    reference has."""
    if hist.shape != reference.shape or hist.dim() != 1:
        raise ValueError(f"expected two class histograms [K], got {list(hist.shape)} and {list(reference.shape)}")
    ref_classes = reference >= min_share
    return {"tv": 0.5 * (hist - reference).abs().sum().item(),
            "covered": int((ref_classes & (hist >= min_share)).sum()), "reference_classes": int(ref_classes.sum())}
