"""kdlab: knowledge distillation for image generation, taught in notebooks.

Modules: ``data`` (datasets, offline first), ``textures`` (procedural frequency-controlled
images), ``models`` (DCGAN generator/discriminator, PixelCNN, classifier), ``taps`` (named feature
taps), ``train`` (teacher and distillation loops), ``losses`` (output and KL distillation losses),
``feature_losses`` (hint, attention transfer, Gram), ``diversity`` (precision/recall, mode coverage), ``evaluate`` (one
evaluation protocol for digit students), ``metrics``
(spectra, Fréchet distance, cost), ``fid`` (FID on MNIST), ``checkpoints`` (safetensors + JSON),
``viz`` (plots), ``widgets`` (ipywidgets explorers), ``kl`` (exact KL laboratories of notebook 03),
``exercises`` (checks for the exercise notebooks), ``sweep`` and ``cli`` (``kdlab run``, ``kdlab sweep``),
``unet`` and ``diffusion`` (v-prediction diffusion, DDIM, progressive distillation), ``kernels`` (fused
CUDA distillation losses with a pure-PyTorch fallback),
``nbclean`` (notebook hygiene), ``utils``.
"""
__version__ = "0.1.0"

from . import checkpoints, data, diffusion, diversity, evaluate, exercises, feature_losses, fid, kernels, kl, losses, metrics, models, taps, textures, train, unet, utils, viz, widgets  # noqa: E402
from .models import count_parameters  # noqa: E402
from .utils import get_device, run_dir, seed_everything, smoke_mode, write_metrics  # noqa: E402
