"""Assignment 01: the two teachers' training steps.

    def my_gan_step(G, D, real, z, opt_g, opt_d) -> (loss_d, loss_g)   # one DCGAN step, losses in nats
    def my_mle_step(model, x, opt) -> float                             # one likelihood step, bits/dim

Each is compared with kdlab's step (:func:`kdlab.methods.gan.gan_step`,
:func:`kdlab.methods.pixelcnn.mle_step`) run from the same weights on the same batch with plain SGD,
so equal weights afterwards mean equal gradients.
"""
from __future__ import annotations

import copy
import math

import torch
from torch.nn import functional as F

from .. import losses
from ..methods import gan, pixelcnn
from ..models import Discriminator, GatedPixelCNN, Generator
from .core import ExerciseError, Forbidden, Part, number, run_parts, same_weights, sgd

FORBIDDEN = Forbidden("kdlab's training steps and losses", python=(gan, pixelcnn, losses))


def _gan_setup(seed: int):
    torch.manual_seed(10 + seed)
    G, D = Generator(z_dim=8, width=2).double(), Discriminator(width=2).double()
    g = torch.Generator().manual_seed(seed)
    real = torch.tanh(torch.randn(6, 1, 28, 28, generator=g, dtype=torch.float64))
    z = torch.randn(6, 8, generator=g, dtype=torch.float64)
    return G, D, real, z


def _run_gan(fn, seed: int):
    """The learner's step and kdlab's from the same start; returns both pairs of models and losses."""
    G, D, real, z = _gan_setup(seed)
    G0, D0 = copy.deepcopy(G), copy.deepcopy(D)
    out = fn(G, D, real, z, sgd(G), sgd(D))
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        raise ExerciseError("return the two losses as a pair: (loss_d, loss_g)")
    loss_d, loss_g = number(out[0], "loss_d"), number(out[1], "loss_g")
    G1, D1 = copy.deepcopy(G0), copy.deepcopy(D0)
    ref = gan.gan_step(G1, D1, real, z, sgd(G1), sgd(D1))
    return (G, D, loss_d, loss_g), (G0, D0, G1, D1, ref["loss_d"].item(), ref["loss_g"].item()), (real, z)


def _discriminator(fn, seed: int) -> int:
    (G, D, loss_d, _), (G0, D0, _, D1, ref_d, _), (real, z) = _run_gan(fn, seed)
    if same_weights(D, D0, 0, 0):
        raise ExerciseError("the discriminator did not move: opt_d.zero_grad(), loss_d.backward(), opt_d.step()")
    if abs(loss_d - ref_d) > 1e-6 * max(1, abs(ref_d)):
        with torch.no_grad():
            d_real, d_fake = D0(real), D0(copy.deepcopy(G0)(z))
            swapped = (F.binary_cross_entropy_with_logits(d_real, torch.zeros_like(d_real))
                       + F.binary_cross_entropy_with_logits(d_fake, torch.ones_like(d_fake))).item()
        if abs(loss_d - swapped) < 1e-6 * max(1, abs(swapped)):
            raise ExerciseError("the labels are swapped: real images are labelled 1, generated ones 0")
        if abs(loss_d - ref_d / 2) < 1e-6 * max(1, abs(ref_d)):
            raise ExerciseError("L_D is the sum of the two terms (real and generated), not their mean")
        raise ExerciseError(f"loss_d = {loss_d:.5f}, expected L_D = -mean log sigmoid(D(x)) - mean log(1 - sigmoid(D(G(z)))) "
                            f"= {ref_d:.5f} before the step")
    if not same_weights(D, D1):
        raise ExerciseError("loss_d is right but the discriminator's update is not: one opt_d step on L_D, with "
                            "G(z) detached so that only D learns from it")
    return 3


def _generator(fn, seed: int) -> int:
    """Graded against the learner's own discriminator after its step, so a wrong D step costs only
    the discriminator's part."""
    (G, D, _, loss_g), (G0, D0, _, _, _, _), (_, z) = _run_gan(fn, seed)
    if same_weights(G, G0, 0, 0):
        raise ExerciseError("the generator did not move: opt_g.zero_grad(), loss_g.backward(), opt_g.step()")
    ref_G, judge = copy.deepcopy(G0), copy.deepcopy(D)  # judge: the learner's D after its step
    logits = judge(ref_G(z))
    ref = losses.generator_adversarial(logits)  # L_G = -mean log sigmoid(D(G(z)))
    opt = sgd(ref_G)
    opt.zero_grad()
    ref.backward()
    opt.step()
    ref_g = ref.item()
    if abs(loss_g - ref_g) > 1e-6 * max(1, abs(ref_g)):
        with torch.no_grad():
            fake = copy.deepcopy(G0)(z)
            after, before = copy.deepcopy(D)(fake), copy.deepcopy(D0)(fake)
            saturating = -F.binary_cross_entropy_with_logits(after, torch.zeros_like(after)).item()
            stale = F.binary_cross_entropy_with_logits(before, torch.ones_like(before)).item()
        if abs(loss_g - saturating) < 1e-6 * max(1, abs(saturating)):
            raise ExerciseError("this is the saturating loss mean log(1 - sigmoid(D(G(z)))); use the non-saturating "
                                "L_G = -mean log sigmoid(D(G(z))), whose gradient is strong while D rejects G's images")
        if abs(loss_g - stale) < 1e-6 * max(1, abs(stale)):
            raise ExerciseError("L_G uses the discriminator from before its step: score G(z) with D again after "
                                "opt_d.step(), as notebook 01 does")
        raise ExerciseError(f"loss_g = {loss_g:.5f}, expected L_G = -mean log sigmoid(D(G(z))) = {ref_g:.5f}, with D "
                            "after its step")
    if not same_weights(G, ref_G):
        raise ExerciseError("loss_g is right but the generator's update is not: one opt_g step on L_G (clear the "
                            "gradients L_D left first)")
    return 3


def _mle_setup(seed: int):
    torch.manual_seed(20 + seed)
    model = GatedPixelCNN(levels=4, hidden=8, n_layers=2).double()
    x = torch.randint(0, 4, (3, 1, 28, 28), generator=torch.Generator().manual_seed(seed))
    return model, x


def _mle(fn, seed: int) -> int:
    model, x = _mle_setup(seed)
    start = copy.deepcopy(model)
    bpd = number(fn(model, x, sgd(model)), "my_mle_step")
    ref_model = copy.deepcopy(start)
    ref = pixelcnn.mle_step(ref_model, x, sgd(ref_model))["bits_per_dim"].item()
    for value, hint in ((ref * math.log(2), "these are nats per pixel: divide by ln 2 for bits"),
                        (-ref, "the sign is flipped: bits/dim are -log2 p(x) / D, positive"),
                        (ref * x[0].numel(), "divide by the number of pixels: bits/dim are per dimension"),
                        (ref * x[0].numel() * len(x), "average over pixels and images, not a sum")):
        if abs(bpd - value) < 1e-6 * abs(value):
            raise ExerciseError(hint)
    if abs(bpd - ref) > 1e-6 * ref:
        raise ExerciseError(f"{bpd:.5f} bits/dim, expected {ref:.5f}: the mean over pixels of -log softmax(logits)[x] "
                            "(nats), divided by ln 2, before the step")
    if same_weights(model, start, 0, 0):
        raise ExerciseError("the model did not move: opt.zero_grad(), loss.backward(), opt.step()")
    if not same_weights(model, ref_model):
        raise ExerciseError("the returned bits/dim are right but the update is not: step on the mean negative "
                            "log-likelihood per pixel (nats or bits only rescale the gradient; use nats as notebook 01)")
    return 3


GAN_PARTS = {"discriminator": Part("the discriminator's loss and step", _discriminator),
             "generator": Part("the generator's non-saturating loss and step", _generator)}
MLE_PARTS = {"mle": Part("bits/dim and the likelihood step", _mle)}


def check_gan_step(fn, part: str | None = None, hidden: bool = False) -> None:
    """Check ``my_gan_step`` (parts ``discriminator``, ``generator``); ``hidden``: the graders' variant."""
    run_parts(fn, GAN_PARTS, part, hidden, FORBIDDEN, "my_gan_step")


def check_mle_step(fn, part: str | None = None, hidden: bool = False) -> None:
    """Check ``my_mle_step`` (part ``mle``); ``hidden``: the graders' variant."""
    run_parts(fn, MLE_PARTS, part, hidden, FORBIDDEN, "my_mle_step")
