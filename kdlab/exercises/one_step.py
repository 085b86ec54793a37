"""Assignment 08: the consistency function and the distribution-matching gradient.

    def my_consistency_function(model, z, t, t_min=cm.T_MIN, sigma_d=0.5, k=10.0) -> f(z, t)
    def my_matching_gradient(real, fake, x, t, eps, normalise=True) -> g   # [B, C, H, W] each

``f(z, t) = c_skip(t) z + c_out(t) F(z, t)`` with ``F`` the network's unclipped ``x`` prediction,
``c_skip = sigma_d^2 / ((k (s(t) - s(t_min)))^2 + sigma_d^2)``, ``s = sigma_t / alpha_t`` and ``c_out =
1 - c_skip``. Checked without a network where it can be: the boundary ``f(z, t_min) == z`` bit for bit
whatever the network says; ``c_skip`` and ``c_out`` read off the learner's own function with two probe
networks and compared with the closed form (math.tan); then ``F`` on a small U-Net, mixed with the
learner's own weights (so a wrong ``c_skip`` costs one part), and against
:func:`kdlab.methods.consistency.consistency_function`.

The matching gradient ``alpha_t^2 / sigma_t^2 (x_hat_fake - x_hat_real)`` at ``x_t = alpha_t x + sigma_t
eps``, normalised per image to ``(x_hat_fake - x_hat_real) / mean |x - x_hat_real|``: checked on 1-D
Gaussians, where the exact v-network is known and the gradient is ``alpha_t (score_fake - score_real)``
of two Gaussian densities; it must vanish when the fake score is the real one; the normalised form
must be the raw one times one positive number per image. All in float64.
"""
from __future__ import annotations

import copy
import itertools
import math

import torch
from torch import nn

from ..methods import consistency as cm
from ..methods import dmd
from ..models import UNet
from .core import ExerciseError, Forbidden, Part, close, run_parts, tensor

FORBIDDEN = Forbidden("kdlab's consistency function, its c_skip and c_out, or DMD's matching gradient and scores",
                      python=(cm.consistency_function, cm.skip_out, dmd.matching_gradient, dmd.score))


def _col(v: torch.Tensor) -> torch.Tensor:
    return v.view(-1, 1, 1, 1)  # (B,) -> (B, 1, 1, 1)


def _alpha_sigma(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The cosine schedule, per image ``[B, 1, 1, 1]``, written here rather than taken from kdlab."""
    return _col(torch.cos(0.5 * math.pi * t)), _col(torch.sin(0.5 * math.pi * t))


def _shape(out: torch.Tensor, like: torch.Tensor, what: str) -> torch.Tensor:
    if out.shape != like.shape:
        raise ExerciseError(f"{what} must have the images' shape {list(like.shape)}, got {list(out.shape)}")
    if not torch.isfinite(out).all():
        raise ExerciseError(f"inf or nan in {what}")
    return out.detach().double()


# ------------------------------------------------------------------------------ the consistency function
def _c_skip(t: list[float], t_min: float, sigma_d: float, k: float, s=lambda u: math.tan(math.pi * u / 2),
            relative: bool = True) -> torch.Tensor:
    """The closed form (``s(t) = tan(pi t / 2) = sigma_t / alpha_t``); ``s`` and ``relative`` give the variants
    of typical mistakes."""
    gaps = [k * (s(u) - (s(t_min) if relative else 0.0)) for u in t]
    return torch.tensor([sigma_d ** 2 / (g ** 2 + sigma_d ** 2) for g in gaps], dtype=torch.float64)


class _ConstantV(nn.Module):
    """A probe network whose v output is ``value`` everywhere (its x prediction is ``alpha_t z - sigma_t value``)."""

    def __init__(self, value: float):
        super().__init__()
        self.value = value

    def forward(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.full_like(z, self.value)


def _network(seed: int) -> nn.Module:
    """A small U-Net in float64 whose v output is far from 0 (kdlab's U-Net starts as the zero predictor)."""
    with torch.random.fork_rng():  # the learner's random state stays as it was
        torch.manual_seed(80 + seed)
        net = UNet(widths=(4, 8, 8), emb_dim=8).double().eval()
        nn.init.normal_(net.head[-1].weight, std=0.5)
    return net


def _broadcast(call):
    """``call()``, with a clearer message for the usual broadcasting mistake of a per-image weight."""
    try:
        return call()
    except RuntimeError as e:
        if "must match the size" not in str(e):
            raise
        raise ExerciseError(f"your function raised: {e}. A weight with one value per image, shape [B], must be "
                            "viewed as [B, 1, 1, 1] to broadcast over images [B, C, H, W]") from e


def _call_f(fn, model, z, t, kwargs: dict) -> torch.Tensor:
    with torch.no_grad():
        return _shape(tensor(_broadcast(lambda: fn(model, z, t, **kwargs)), "f(z, t)"), z, "f(z, t)")


def _weights(fn, t: torch.Tensor, kwargs: dict, shape=(1, 3, 5)) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``c_skip(t)`` and ``c_out(t)`` ``[B]`` read off the learner's function with two probe networks, under
    two readings of its ``F``: ``"x"`` (the network's x prediction, as asked) and ``"v"`` (its raw output,
    a typical mistake). A function linear in z and v fits both readings; only the weights tell them apart.

    Probe 1 outputs v = 0 at images z: F = alpha_t z (reading "x") or 0 (reading "v"). Probe 2 outputs
    v = 1 at z = 0: F = -sigma_t (reading "x") or 1 (reading "v"). Neither leaves [-1, 1], so clipping the
    x prediction does not change them."""
    g = torch.Generator().manual_seed(len(t))
    z = 0.5 * torch.rand(len(t), *shape, generator=g, dtype=torch.float64) + 0.25  # (B, C, H, W), in (0.25, 0.75)
    f1 = _call_f(fn, _ConstantV(0.0), z, t, kwargs)
    f2 = _call_f(fn, _ConstantV(1.0), torch.zeros_like(z), t, kwargs)
    r = (f1 * z).sum((1, 2, 3)) / (z * z).sum((1, 2, 3))  # f1 = r z, one r per image
    c2 = f2.mean((1, 2, 3))
    if not (close(f1, _col(r) * z, 1e-9, 1e-12) and close(f2, _col(c2).expand_as(f2), 1e-9, 1e-12)):
        raise ExerciseError("f(z, t) must be c_skip(t) z + c_out(t) F(z, t) with one c_skip and one c_out per image: "
                            "turn the times' [B] weights into [B, 1, 1, 1] to broadcast them over each image")
    a, s = (v.flatten() for v in _alpha_sigma(t))
    c_out_x = -c2 / s
    return {"x": (r - c_out_x * a, c_out_x), "v": (r, c2)}


def _boundary(fn, seed: int) -> int:
    net = _network(seed)
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(3, 1, 28, 28, generator=g, dtype=torch.float64)
    t_min = 0.01 if seed == 0 else 0.035
    for kwargs, tm in (({}, cm.T_MIN), ({"t_min": t_min}, t_min)):
        t = torch.full((3,), tm, dtype=torch.float64)
        t[2] = 0.5  # one image above t_min: the boundary holds per image
        with torch.no_grad():
            out = tensor(_broadcast(lambda: fn(net, z, t, **kwargs)), "f(z, t)")
            v = net(z, t)
        _shape(out, z, "f(z, t)")
        if torch.equal(out[:2], z[:2]):
            continue
        a, s = _alpha_sigma(t)
        if close(out[:2], (a * z - s * v)[:2], 1e-9, 1e-12):
            raise ExerciseError("f(z, t_min) is the network's prediction F, not z: c_skip and c_out are swapped "
                                "(c_skip, the weight of z, is 1 at t_min and falls towards 0)")
        if kwargs and _equal_at_default(fn, net, z):
            raise ExerciseError(f"f(z, t_min) == z holds for the default t_min but not for t_min={tm}: use the "
                                "t_min argument, not a fixed value")
        if close(out[:2], z[:2], 1e-6, 1e-9):
            raise ExerciseError("f(z, t_min) is close to z but not equal: at t_min the gap k (s(t) - s(t_min)) must be "
                                "exactly 0, so compute s(t_min) with the same operations as s(t) (e.g. on "
                                "torch.full_like(t, t_min))")
        raise ExerciseError(f"f(z, t_min) must be exactly z (t_min={tm}, whatever the network): c_skip(t_min) = 1 and "
                            "c_out(t_min) = 0, which needs the gap k (s(t) - s(t_min)) to be 0 there")
    return 2


def _equal_at_default(fn, net, z) -> bool:
    t = torch.full((len(z),), cm.T_MIN, dtype=torch.float64)
    with torch.no_grad():
        return torch.equal(tensor(fn(net, z, t), "f(z, t)"), z)


def _weights_part(fn, seed: int) -> int:
    if seed == 0:
        times, calls = [0.01, 0.06, 0.2, 0.5, 0.9, 1.0], [{}, {"sigma_d": 0.3, "k": 4.0}]
    else:
        times, calls = [0.03, 0.13, 0.37, 0.81, 1.0], [{}, {"t_min": 0.01, "sigma_d": 0.8, "k": 20.0}]
    for kwargs in calls:
        t_min, sigma_d, k = kwargs.get("t_min", cm.T_MIN), kwargs.get("sigma_d", 0.5), kwargs.get("k", 10.0)
        ts = [t_min] + times
        t = torch.tensor(ts, dtype=torch.float64)
        ref = _c_skip(ts, t_min, sigma_d, k)
        read = _weights(fn, t, kwargs)
        if not _right(read["x"], ref):
            _diagnose_weights(read, ts, t_min, sigma_d, k, kwargs)
    return 4


def _right(weights: tuple[torch.Tensor, torch.Tensor], ref: torch.Tensor) -> bool:
    return close(weights[0], ref, 1e-8, 1e-12) and close(weights[1], 1 - ref, 1e-8, 1e-12)


def _diagnose_weights(read, ts, t_min, sigma_d, k, kwargs) -> None:
    ref = _c_skip(ts, t_min, sigma_d, k)
    if _right(read["v"], ref):
        raise ExerciseError("F is the network's x prediction, alpha_t z - sigma_t v(z, t) (dm.predict_x(model, z, t, "
                            "clip=False)), not its raw output v")
    c_skip, c_out = read["x"]
    if close(c_out, ref - 1, 1e-6, 1e-9):
        raise ExerciseError("the x prediction is alpha_t z - sigma_t v(z, t): the sign of the v term is reversed")
    same = lambda other: close(c_skip, other, 1e-6, 1e-9)
    if same(1 - ref) and close(c_out, ref, 1e-6, 1e-9):
        raise ExerciseError("c_skip and c_out are swapped: c_skip, the weight of z, is 1 at t_min and falls towards 0 "
                            "as t grows; c_out = 1 - c_skip weights the network's prediction")
    if same(ref):
        raise ExerciseError("c_skip is right but c_out is not: c_out = 1 - c_skip, so that f = F wherever c_skip has "
                            "fallen to 0")
    if same(_c_skip(ts, t_min, sigma_d, 1.0)):
        raise ExerciseError("the time scale k is missing: the gap is k (s(t) - s(t_min)), with k = 10 by default")
    given, defaults = {"t_min": t_min, "sigma_d": sigma_d, "k": k}, {"t_min": cm.T_MIN, "sigma_d": 0.5, "k": 10.0}
    for names in [c for n in (1, 2, 3) for c in itertools.combinations(kwargs, n)]:  # arguments replaced by fixed values
        if same(_c_skip(ts, **{**given, **{name: defaults[name] for name in names}})):
            raise ExerciseError(f"c_skip ignores the argument{'s' * (len(names) > 1)} {', '.join(names)} (called with "
                                f"{kwargs}): use {'them' if len(names) > 1 else 'it'} as given, not a fixed value")
    if same(_c_skip(ts, t_min, sigma_d, k, s=lambda u: math.sin(math.pi * u / 2))):
        raise ExerciseError("s(t) is sigma_t / alpha_t (the noise level of z_t / alpha_t = x + s eps), not sigma_t")
    if same(_c_skip(ts, t_min, sigma_d, k, relative=False)):
        raise ExerciseError("subtract s(t_min) inside the gap, k (s(t) - s(t_min)), so that c_skip(t_min) = 1 exactly")
    i = int((c_skip - ref).abs().argmax())
    raise ExerciseError(f"c_skip at t = {ts[i]:g} is {c_skip[i].item():.6g}, expected sigma_d^2 / ((k (s(t) - s(t_min)))^2 "
                        f"+ sigma_d^2) = {ref[i].item():.6g} with s(t) = sigma_t / alpha_t (sigma_d={sigma_d}, k={k}, "
                        f"t_min={t_min})")


def _network_part(fn, seed: int) -> int:
    net = _network(seed)
    g = torch.Generator().manual_seed(10 + seed)
    t = torch.tensor([0.004, 0.05, 0.3, 0.7, 1.0] if seed == 0 else [0.01, 0.1, 0.5, 0.95], dtype=torch.float64)
    z = 1.5 * torch.randn(len(t), 1, 28, 28, generator=g, dtype=torch.float64)
    out = _call_f(fn, net, z, t, {})
    read = _weights(fn, t, {})  # linear in z and v, both readings fit: "x" is the one asked for
    with torch.no_grad():
        v = net(z, t)
    a, s = _alpha_sigma(t)
    x_hat = a * z - s * v  # F: the network's x prediction
    c_skip, c_out = read["x"]  # the learner's own weights (the weights part grades them)
    mix = lambda F: _col(c_skip) * z + _col(c_out) * F  # f = c_skip z + c_out F
    if close(out, mix(x_hat), 1e-8, 1e-10):
        if _right(read["x"], _c_skip(t.tolist(), cm.T_MIN, 0.5, 10.0)):  # right weights: kdlab's function too
            with torch.no_grad():
                ref = cm.consistency_function(net, z, t)
            if not close(out, ref, 1e-8, 1e-10):
                raise ExerciseError("f(z, t) differs from kdlab's consistency function on a U-Net")
        return 2
    if close(out, mix(x_hat.clamp(-1, 1)), 1e-8, 1e-10):
        raise ExerciseError("F is the network's unclipped x prediction (dm.predict_x(model, z, t, clip=False)): a "
                            "clipped one is not differentiable where it is clipped and changes f")
    raise ExerciseError("f(z, t) differs from c_skip z + c_out F(z, t) with F the network's x prediction "
                        "alpha_t z - sigma_t v(z, t) (dm.predict_x(model, z, t, clip=False)) on a U-Net")


# ------------------------------------------------------------------------------ the matching gradient
class _GaussianV(nn.Module):
    """The exact v-network of data N(m, s^2), pixel by pixel: x_hat = E[x | z_t] (posterior mean)."""

    def __init__(self, m: float, s: float):
        super().__init__()
        self.m, self.s = m, s

    def x_hat(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a, sg = _alpha_sigma(t)
        return self.m + a * self.s ** 2 * (z - a * self.m) / (a ** 2 * self.s ** 2 + sg ** 2)

    def score(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """grad_z log N(z; alpha_t m, alpha_t^2 s^2 + sigma_t^2): the diffused density's score."""
        a, sg = _alpha_sigma(t)
        return -(z - a * self.m) / (a ** 2 * self.s ** 2 + sg ** 2)

    def forward(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a, sg = _alpha_sigma(t)
        return (a * z - self.x_hat(z, t)) / sg


def _gaussians(seed: int):
    """Data N(m, s^2) and a generator N(mu, vs^2) far apart, so that the x predictions often leave [-1, 1];
    images drawn from the generator, times in [0.05, 0.95], noise."""
    g = torch.Generator().manual_seed(20 + seed)
    real, fake = (_GaussianV(1.4, 0.5), _GaussianV(-1.3, 0.7)) if seed == 0 else (_GaussianV(-1.5, 0.6), _GaussianV(1.2, 0.4))
    shape = (4, 1, 3, 5) if seed == 0 else (5, 1, 4, 3)
    x = fake.m + fake.s * torch.randn(shape, generator=g, dtype=torch.float64)
    t = 0.05 + 0.9 * torch.rand(shape[0], generator=g, dtype=torch.float64)
    eps = torch.randn(shape, generator=g, dtype=torch.float64)
    return real, fake, x, t, eps


def _call_g(fn, real, fake, x, t, eps, **kwargs) -> torch.Tensor:
    with torch.no_grad():
        out = _broadcast(lambda: fn(real, fake, x, t, eps, **kwargs))
    return _shape(tensor(out, "the matching gradient"), x, "the matching gradient")


def _predictions(real, fake, x, t, eps) -> dict[str, tuple[torch.Tensor, torch.Tensor, str]]:
    """``x_hat_real`` and ``x_hat_fake`` as asked (``""``), and as typical mistakes compute them, with the hint."""
    a, s = _alpha_sigma(t)
    z = a * x + s * eps
    return {"": (real.x_hat(z, t), fake.x_hat(z, t), ""),
            "v": (real(z, t), fake(z, t), "the networks output v; use their x predictions, x_hat = alpha_t x_t - sigma_t v "
                                          "(dm.predict_x(..., clip=False))"),
            "clip": (real.x_hat(z, t).clamp(-1, 1), fake.x_hat(z, t).clamp(-1, 1),
                     "use the unclipped x predictions (dm.predict_x(..., clip=False)): the scores need them"),
            "x": (real.x_hat(x, t), fake.x_hat(x, t), "evaluate both networks at the noisy x_t = alpha_t x + sigma_t eps "
                                                     "(dm.diffuse), not at x")}


def _same_twice(fn, out, real, fake, x, t, eps, **kwargs) -> None:
    if not torch.equal(out, _call_g(fn, real, fake, x, t, eps, **kwargs)):
        raise ExerciseError("two calls with the same inputs give different gradients: diffuse x with the given eps, "
                            "not fresh noise")


def _zero(fn, seed: int) -> int:
    real, _, x, t, eps = _gaussians(seed)
    net = _network(seed)
    g = torch.Generator().manual_seed(30 + seed)
    x_net = torch.randn(3, 1, 28, 28, generator=g, dtype=torch.float64).clamp(-1, 1)
    t_net, eps_net = 0.05 + 0.9 * torch.rand(3, generator=g, dtype=torch.float64), torch.randn_like(x_net)
    for models, inputs in (((real, real), (x, t, eps)), ((net, copy.deepcopy(net)), (x_net, t_net, eps_net))):
        for normalise in (False, True):
            out = _call_g(fn, *models, *inputs, normalise=normalise)
            if out.abs().max() <= 1e-12:
                continue
            xi, ti, ei = inputs
            a, s = _alpha_sigma(ti)
            if models[0] is real and close(out, a ** 2 / s ** 2 * (xi - real.x_hat(a * xi + s * ei, ti)), 1e-6, 1e-9):
                raise ExerciseError("x_hat_fake is the fake network's prediction at x_t, not the image x itself")
            raise ExerciseError(f"with fake = real the gradient must be 0 at every pixel (normalise={normalise}), it is "
                                f"up to {out.abs().max().item():.3g}: it is the difference between the two networks' x "
                                "predictions at the same x_t (one x_t, from the given eps, for both)")
    return 4


def _raw_ref(real, fake, x, t, eps) -> torch.Tensor:
    a, s = _alpha_sigma(t)
    z = a * x + s * eps
    return a * (fake.score(z, t) - real.score(z, t))  # alpha_t (score_fake - score_real)


def _check_on_unets(fn, seed: int, input_seed: int, **kwargs) -> None:
    """After the Gaussian case passes: the learner's gradient on two U-Nets against kdlab's (any networks,
    not only exact Gaussian ones); ``kwargs`` (``normalise=False``) are passed to both."""
    net, other = _network(seed), _network(seed + 5)
    g = torch.Generator().manual_seed(input_seed)
    xn = torch.randn(3, 1, 28, 28, generator=g, dtype=torch.float64).clamp(-1, 1)
    tn, en = 0.05 + 0.9 * torch.rand(3, generator=g, dtype=torch.float64), torch.randn_like(xn)
    if not close(_call_g(fn, net, other, xn, tn, en, **kwargs), dmd.matching_gradient(net, other, xn, tn, en, **kwargs),
                 1e-8, 1e-10):
        raise ExerciseError("right on Gaussians but not on two U-Nets: use the networks' x predictions "
                            "(dm.predict_x(model, x_t, t, clip=False)), whatever the networks")


def _gaussian(fn, seed: int) -> int:
    real, fake, x, t, eps = _gaussians(seed)
    out = _call_g(fn, real, fake, x, t, eps, normalise=False)
    ref = _raw_ref(real, fake, x, t, eps)
    if close(out, ref, 1e-8, 1e-10):
        _check_on_unets(fn, seed, 40 + seed, normalise=False)
        return 3
    _same_twice(fn, out, real, fake, x, t, eps, normalise=False)
    a, s = _alpha_sigma(t)
    xr, xf, _ = _predictions(real, fake, x, t, eps)[""]
    mistakes = [(a ** 2 / s ** 2 * (pf - pr), hint) for key, (pr, pf, hint) in _predictions(real, fake, x, t, eps).items()
                if key] + [
        (-ref, "the sign is reversed: the gradient is alpha_t (score_fake - score_real), i.e. x_hat_fake - x_hat_real; "
               "the generator moves along minus it"),
        (a ** 2 / s * (xf - xr), "the weight is alpha_t^2 / sigma_t^2: sigma_t is squared (the score is "
                                 "-(x_t - alpha_t x_hat) / sigma_t^2)"),
        (a / s ** 2 * (xf - xr), "the weight is alpha_t^2 / sigma_t^2: one alpha_t from the score, one from "
                                 "d x_t / d x = alpha_t"),
        (xf - xr, "normalise=False returns alpha_t^2 / sigma_t^2 (x_hat_fake - x_hat_real): the weight is missing"),
        (a ** 2 / s ** 2 * (x - xr), "x_hat_fake is the fake network's prediction at x_t, not the image x itself"),
        ((xf - xr) / (x - xr).abs().mean((1, 2, 3), keepdim=True), "normalise=False returns the raw gradient, "
                                                                   "without the per-image normalisation"),
    ]
    for wrong, message in mistakes:
        if close(out, wrong, 1e-6, 1e-9):
            raise ExerciseError(message)
    raise ExerciseError("the gradient differs from alpha_t^2 / sigma_t^2 (x_hat_fake - x_hat_real) at x_t = alpha_t x + "
                        "sigma_t eps, checked on Gaussians where the exact scores are known")


def _normalised(fn, seed: int) -> int:
    real, fake, x, t, eps = _gaussians(seed)
    out = _call_g(fn, real, fake, x, t, eps)  # normalise=True, the default
    a, s = _alpha_sigma(t)
    z = a * x + s * eps
    predictions = _predictions(real, fake, x, t, eps)
    xr, xf, _ = predictions[""]
    ref = (xf - xr) / (x - xr).abs().mean((1, 2, 3), keepdim=True)
    if close(out, ref, 1e-8, 1e-10):
        _check_on_unets(fn, seed, 50 + seed)
        return 3
    _same_twice(fn, out, real, fake, x, t, eps)
    for key, (pr, pf, hint) in predictions.items():  # a mistake in the predictions, shared with the raw form
        if key and close(out, (pf - pr) / (x - pr).abs().mean((1, 2, 3), keepdim=True), 1e-6, 1e-9):
            raise ExerciseError(hint)
    raw = _raw_ref(real, fake, x, t, eps)
    if close(out, raw, 1e-6, 1e-9):
        raise ExerciseError("normalise=True (the default) must return the normalised gradient, not the raw one")
    c = (out * raw).sum((1, 2, 3), keepdim=True) / (raw * raw).sum((1, 2, 3), keepdim=True)  # one multiple per image
    if not close(out, c * raw, 1e-6, 1e-9):
        raise ExerciseError("the normalised gradient must be the raw one times one positive number per image (the same "
                            "direction): divide each image by the mean over its pixels, not pixel by pixel")
    if (c <= 0).any():
        raise ExerciseError("the normalised gradient points against the raw one: the sign is reversed "
                            "(x_hat_fake - x_hat_real)")
    mistakes = [
        ((xf - xr) / (x - xr).abs().mean(), "normalise per image: the mean of |x - x_hat_real| over each image's "
                                            "pixels (dim=(1, 2, 3), keepdim=True), not over the whole batch"),
        (raw / (x - xr).abs().mean((1, 2, 3), keepdim=True), "the normalised form has no alpha_t^2 / sigma_t^2: it is "
                                                              "(x_hat_fake - x_hat_real) / mean |x - x_hat_real|"),
        ((xf - xr) / (x - xf).abs().mean((1, 2, 3), keepdim=True), "the scale is the distance between x and the "
                                                                   "teacher's (real) prediction, mean |x - x_hat_real|"),
        ((xf - xr) / (z - xr).abs().mean((1, 2, 3), keepdim=True), "the scale is mean |x - x_hat_real| with the "
                                                                   "generator's image x, not the noisy x_t"),
    ]
    for wrong, message in mistakes:
        if close(out, wrong, 1e-6, 1e-9):
            raise ExerciseError(message)
    raise ExerciseError("each image's normalised gradient must be (x_hat_fake - x_hat_real) divided by the mean over its "
                        "pixels of |x - x_hat_real|")


CONSISTENCY_PARTS = {"boundary": Part("f(z, t_min) = z exactly", _boundary),
                     "weights": Part("c_skip and c_out", _weights_part),
                     "network": Part("F, the network's unclipped x prediction", _network_part)}
MATCHING_PARTS = {"zero": Part("zero when the fake score is the real one", _zero),
                  "gaussian": Part("the closed form on Gaussians", _gaussian),
                  "normalised": Part("the per-image normalisation", _normalised)}


def check_consistency_function(fn, part: str | None = None, hidden: bool = False) -> None:
    """Check ``my_consistency_function`` (parts ``boundary``, ``weights``, ``network``); ``hidden``: the graders' variant."""
    run_parts(fn, CONSISTENCY_PARTS, part, hidden, FORBIDDEN, "my_consistency_function")


def check_matching_gradient(fn, part: str | None = None, hidden: bool = False) -> None:
    """Check ``my_matching_gradient`` (parts ``zero``, ``gaussian``, ``normalised``); ``hidden``: the graders' variant."""
    run_parts(fn, MATCHING_PARTS, part, hidden, FORBIDDEN, "my_matching_gradient")
