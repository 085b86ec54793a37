"""The networks of kdlab, each registered so a checkpoint can rebuild it from its metadata.

- :class:`Generator`, :class:`Discriminator`: DCGAN of any width (teachers and students, notebooks 01-05);
- :class:`PixelCNN`: masked-convolution autoregressive model over K intensity levels (blind spot; notebook 01);
- :class:`GatedPixelCNN`: vertical and horizontal stacks, no blind spot (the shipped teacher; notebooks 01, 03);
- :class:`UNet`: time-conditioned U-Net for v-prediction diffusion (notebook 06);
- :class:`Classifier`: the digit classifier whose features define kdlab's FID.
"""
from .classifier import Classifier
from .dcgan import Discriminator, Generator, is_generator_size
from .pixelcnn import GatedPixelCNN, MaskedConv2d, PixelCNN
from .registry import MODELS, architecture, build, count_parameters, register
from .unet import UNet

__all__ = ["Classifier", "Discriminator", "GatedPixelCNN", "Generator", "MaskedConv2d", "PixelCNN", "UNet", "MODELS",
           "architecture", "build", "count_parameters", "is_generator_size", "register"]
