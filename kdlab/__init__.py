"""kdlab: knowledge distillation for image generation, taught in notebooks.

The layers, bottom up:

- data and models: ``data`` (datasets, offline first), ``textures`` (procedural images with known
  frequency bands), ``models`` (DCGAN, PixelCNN, U-Net, the FID classifier, a registry), ``taps``
  (named intermediate features), ``checkpoints`` (safetensors + JSON, no pickles);
- losses: ``losses`` (output, KL and adversarial), ``feature_losses`` (hint, attention, Gram),
  ``kernels`` (the same losses as fused CUDA kernels, with the formulas as fallback);
- ``engine``: the training loop every method shares (:class:`TrainConfig`, ``Trainer``);
- ``methods``: one module per kind of teacher (``gan``, ``pixelcnn``, ``diffusion``), each a short
  step function and the loop around it;
- ``evaluation``: metrics, diversity, FID and the one ``Evaluator``; it never imports training;
- ``viz``, ``widgets``, ``kl`` (the exact laboratories of notebook 03), ``exercises``, ``sweep`` and
  ``cli`` (``kdlab run`` / ``kdlab sweep``), ``bench`` (kernel benchmark); ``utils`` and ``paths``.
"""
from . import (checkpoints, data, engine, evaluation, exercises, feature_losses, kernels, kl, losses, methods, models,
               paths, taps, textures, utils, viz, widgets)
from .engine import TrainConfig
from .models import count_parameters
from .utils import check_parameters, get_device, run_dir, seed_everything, smoke_mode, write_metrics
from .version import __version__

__all__ = ["checkpoints", "data", "engine", "evaluation", "exercises", "feature_losses", "kernels", "kl", "losses",
           "methods", "models", "paths", "taps", "textures", "utils", "viz", "widgets", "TrainConfig", "count_parameters",
           "check_parameters", "get_device", "run_dir", "seed_everything", "smoke_mode", "write_metrics", "__version__"]
