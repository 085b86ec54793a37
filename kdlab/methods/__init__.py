"""One module per kind of teacher, each holding how the teacher is trained and how it is distilled.
Every method is a short public step function (the code a notebook writes out and then checks this
one against) and a loop around it that runs on :class:`kdlab.engine.Trainer`:

=========================  ==========================================  ===========================
module                     step functions                              loops
=========================  ==========================================  ===========================
:mod:`.gan`                ``gan_step``, ``distill_step``              ``train_gan``, ``distill``
:mod:`.pixelcnn`           ``mle_step``, ``kl_step``                   ``train_pixelcnn``, ``distill_pixelcnn``
:mod:`.diffusion`          ``diffusion_step``, ``progressive_step``    ``train_diffusion``, ``distill_round``
:mod:`.consistency`        ``consistency_step``                        ``distill_consistency``
:mod:`.dmd`                ``generator_step``, ``fake_score_step``     ``distill_dmd``
=========================  ==========================================  ===========================
"""
from . import consistency, diffusion, dmd, gan, pixelcnn

__all__ = ["consistency", "diffusion", "dmd", "gan", "pixelcnn"]
