"""The assignment checks (kdlab.exercises) accept the tutorials' own steps, catch typical mistakes
with a message that names them, refuse (in their hidden variant) solutions that call the routine an
exercise is about, and show learners the message alone. The assignments' solutions are the
tutorials' steps: a test fails when they drift apart."""
import ast
import math
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import kdlab as kd
from kdlab.exercises import ExerciseError
from kdlab.methods import consistency as cm
from kdlab.methods import diffusion as dm
from kdlab.methods import dmd

from assignment_sources import ASSIGNMENTS, functions, solutions, tutorial_functions

CHECKS = {  # function the learner writes -> its check
    "my_gan_step": kd.exercises.check_gan_step, "my_mle_step": kd.exercises.check_mle_step,
    "my_distill_step": kd.exercises.check_distill_step, "my_kl_step": kd.exercises.check_kl_step,
    "my_feature_terms": kd.exercises.check_feature_terms, "my_band_energies": kd.exercises.check_band_energies,
    "my_two_step_target": kd.exercises.check_two_step_target,
    "my_progressive_step": kd.exercises.check_progressive_step,
    "kernel_logsumexp": kd.exercises.check_kernel_logsumexp, "online_logsumexp": kd.exercises.check_online_logsumexp,
    "my_consistency_function": kd.exercises.check_consistency_function,
    "my_matching_gradient": kd.exercises.check_matching_gradient,
}
TUTORIAL = {name: a for a in ASSIGNMENTS for src in solutions(a).values() for name in functions(src)}


def namespace() -> dict:
    return {"math": math, "torch": torch, "F": F, "nn": nn, "kd": kd, "dm": dm, "cm": cm, "dmd": dmd,
            "copy": __import__("copy")}


def tutorial_step(name: str, replace=None, ns: dict | None = None):
    """The tutorial's function ``name``, with text replacements (a typical mistake: one ``(old, new)``
    pair or a list of them), defined in ``ns``."""
    ns = namespace() if ns is None else ns
    src = tutorial_functions(TUTORIAL[name])[name]
    for old, new in [] if replace is None else [replace] if isinstance(replace[0], str) else replace:
        assert old in src, f"the mistake {old!r} no longer applies to the tutorial's {name}"
        src = src.replace(old, new)
    exec(src, ns)
    return ns[name]


def test_every_assignment_function_has_a_check():
    assert set(TUTORIAL) == set(CHECKS)


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_assignment_solutions_are_the_tutorials_steps(assignment):
    """No third copy: each solution function in an assignment's source is, token for token, the
    function of that name its tutorial writes out (comments and layout aside)."""
    steps = tutorial_functions(assignment)
    for grade_id, src in solutions(assignment).items():
        for name, node in functions(src).items():
            assert name in steps, f"{assignment}: {name} (cell {grade_id}) is not written out in the tutorial"
            assert ast.dump(node) == ast.dump(ast.parse(steps[name]).body[0]), (
                f"{assignment}: the solution of {name} and the tutorial's step have drifted apart")


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_checks_accept_the_tutorials_steps_visible_and_hidden(name, capsys):
    ns = namespace()
    if name == "my_progressive_step":
        tutorial_step("my_two_step_target", ns=ns)
    fn = tutorial_step(name, ns=ns)
    assert CHECKS[name](fn) is None  # nothing to echo in a notebook cell
    CHECKS[name](fn, hidden=True)
    out = capsys.readouterr().out
    assert out.count("✓") >= 2 and "hidden checks pass" in out


MISTAKES = [  # (function, text replaced in the tutorial's step, hint the check must give)
    ("my_gan_step", ("torch.ones_like(d_real))", "torch.zeros_like(d_real))"), "loss_d"),
    ("my_gan_step", ("torch.ones_like(d_real))\n              + F", "torch.zeros_like(d_real))\n              + F"), "loss_d"),
    ("my_gan_step", ("loss_g = F.binary_cross_entropy_with_logits(d_gen, torch.ones_like(d_gen))",
                     "loss_g = -F.binary_cross_entropy_with_logits(d_gen, torch.zeros_like(d_gen))"), "saturating"),
    ("my_mle_step", ("nll.item() / math.log(2)", "nll.item()"), "nats"),
    ("my_distill_step", ("(fake - target).pow(2).mean() if", "(fake - target).pow(2).mean().sqrt() if"), "root"),
    ("my_distill_step", ("target = teacher(z)", "target = teacher(torch.randn_like(z))"), "same noise"),
    ("my_distill_step", ("loss = loss + w * F", "loss = loss + F"), "not weighted"),
    ("my_kl_step", ("(kl * T ** 2).mean()", "kl.mean()"), "T^2"),
    ("my_kl_step", ("(log_p, log_q) if direction", "(log_q, log_p) if direction"), "KL(student || teacher)"),
    ("my_kl_step", ("(kl * T ** 2).mean()", "(kl * T ** 2).sum()"), "summed"),
    ("my_kl_step", ("log_q = F.log_softmax(logits / T, dim=1)", "log_q = torch.softmax(logits / T, dim=1).log()"),
     "log_softmax"),
    ("my_feature_terms", ("F.normalize(f.pow(2).mean(1).flatten(1), dim=1)", "f.pow(2).mean(1).flatten(1)"), "unit L2 norm"),
    ("my_feature_terms", ("hint = (r - ft).pow(2).mean()", "hint = (r - ft).pow(2).sum()"), "do not sum"),
    ("my_feature_terms", (" / (f.shape[2] * f.shape[3])", ""), "H W"),
    ("my_band_energies", ("images.double() - images.double().mean((-2, -1), keepdim=True)", "images.double()"), "DC"),
    ("my_band_energies", ("/ (h * w) ** 2", "/ (h * w)"), "too large"),
    ("my_band_energies", ("(radius >= lo) & (radius < hi)", "(radius > lo) & (radius <= hi)"), "split across bands"),
    ("my_two_step_target", ("col(s_2 / s_t)", "col(s_t / s_2)"), "inverted"),
    ("my_two_step_target", ("dm.ddim_step(z1, t1, t2, dm.predict_x(teacher, z1, t1))",
                            "dm.ddim_step(z1, t1, t2, dm.predict_x(teacher, z, t))"), "its own x prediction"),
    ("my_progressive_step", ("loss = (student(z, t) - v_tilde).pow(2).mean()",
                             "loss = (dm.predict_x(student, z, t, clip=False) - x_tilde).pow(2).mean()"), "regress v"),
    ("kernel_logsumexp", ("(x - m).exp()", "x.exp()"), "values differ"),
    ("my_kl_step", [("F.log_softmax(logits / T, dim=1)", "F.log_softmax(logits / T, dim=-1)"), (".sum(1)", ".sum(-1)"),
                    ("teacher_logits.float() / T, dim=1)", "teacher_logits.float() / T, dim=-1)")], "wrong axis"),
    ("online_logsumexp", ("l * torch.exp(m - m_new)", "l"), "rescal"),
    ("online_logsumexp", ("return m + torch.log(l)", "return m"), "only the maximum"),
    ("my_consistency_function", ("c_skip = sigma_d ** 2 / (gap ** 2 + sigma_d ** 2)\n    c_out = 1 - c_skip",
                                 "c_out = sigma_d ** 2 / (gap ** 2 + sigma_d ** 2)\n    c_skip = 1 - c_out"), "swapped"),
    ("my_consistency_function", ("gap = k * (s / a", "gap = (s / a"), "time scale k is missing"),
    ("my_consistency_function", ("gap = k * (s / a", "gap = 10.0 * (s / a"), "ignores the argument k"),
    ("my_consistency_function", ("gap = k * (s / a - s_min / a_min)", "gap = k * (s - s_min)"), "sigma_t / alpha_t"),
    ("my_consistency_function", ("gap = k * (s / a - s_min / a_min)", "gap = k * s / a"), "exactly z"),
    ("my_consistency_function", ("torch.full_like(t, t_min)", "torch.full_like(t, cm.T_MIN)"), "use the t_min argument"),
    ("my_consistency_function", ("c_out = 1 - c_skip", "c_out = 1 - c_skip ** 2"), "c_out = 1 - c_skip"),
    ("my_consistency_function", ("dm.predict_x(model, z, t, clip=False)", "model(z, t)"), "not its raw output v"),
    ("my_consistency_function", ("dm.predict_x(model, z, t, clip=False)", "dm.predict_x(model, z, t)"), "unclipped"),
    ("my_consistency_function", ("dm.predict_x(model, z, t, clip=False)", "(col(a) * z + col(s) * model(z, t))"),
     "sign of the v term"),
    ("my_consistency_function", ("col(c_skip) * z", "c_skip * z"), "[B, 1, 1, 1]"),
    ("my_matching_gradient", ("a ** 2 / s ** 2 * (x_fake - x_real)", "a ** 2 / s ** 2 * (x_real - x_fake)"), "sign is reversed"),
    ("my_matching_gradient", ("a ** 2 / s ** 2", "a ** 2 / s"), "sigma_t is squared"),
    ("my_matching_gradient", ("a ** 2 / s ** 2", "a / s ** 2"), "alpha_t^2 / sigma_t^2"),
    ("my_matching_gradient", ("dm.predict_x(real, z, t, clip=False), dm.predict_x(fake, z, t, clip=False)",
                              "real(z, t), fake(z, t)"), "the networks output v"),
    ("my_matching_gradient", ("dm.predict_x(real, z, t, clip=False), dm.predict_x(fake, z, t, clip=False)",
                              "dm.predict_x(real, z, t), dm.predict_x(fake, z, t)"), "unclipped"),
    ("my_matching_gradient", ("z = dm.diffuse(x, t, eps)", "z = x"), "noisy x_t"),
    ("my_matching_gradient", ("z = dm.diffuse(x, t, eps)", "z = dm.diffuse(x, t, torch.randn_like(eps))"), "given eps"),
    ("my_matching_gradient", ("a ** 2 / s ** 2 * (x_fake - x_real)", "a ** 2 / s ** 2 * (x - x_real)"),
     "not the image x itself"),
    ("my_matching_gradient", ("(x - x_real).abs().mean(dim=(1, 2, 3), keepdim=True)", "(x - x_real).abs().mean()"),
     "not over the whole batch"),
    ("my_matching_gradient", ("(x - x_real).abs().mean(dim=(1, 2, 3), keepdim=True)",
                              "(x - x_fake).abs().mean(dim=(1, 2, 3), keepdim=True)"),
     "teacher's (real) prediction"),
    ("my_matching_gradient", ("return (x_fake - x_real) / (x", "return a ** 2 / s ** 2 * (x_fake - x_real) / (x"),
     "has no alpha_t^2 / sigma_t^2"),
    ("my_matching_gradient", ("(x - x_real).abs().mean(dim=(1, 2, 3), keepdim=True)", "(x - x_real).abs()"), "pixel by pixel"),
    ("my_matching_gradient", ("if not normalise:", "if True:"), "normalise=True (the default)"),
]


@pytest.mark.parametrize("name, mistake, hint", MISTAKES, ids=[f"{m[0]}-{i}" for i, m in enumerate(MISTAKES)])
def test_checks_catch_typical_mistakes(name, mistake, hint):
    ns = namespace()
    if name == "my_progressive_step":
        tutorial_step("my_two_step_target", ns=ns)
    fn = tutorial_step(name, mistake, ns)
    with pytest.raises(ExerciseError, match=re.escape(hint)):
        CHECKS[name](fn)


def test_a_wrong_part_fails_alone():
    """Points per part: a step without T^2 passes the other parts of the KL check."""
    fn = tutorial_step("my_kl_step", ("(kl * T ** 2).mean()", "kl.mean()"))
    for part in ("forward", "reverse", "stable"):
        kd.exercises.check_kl_step(fn, part)
    with pytest.raises(ExerciseError, match="T\\^2"):
        kd.exercises.check_kl_step(fn, "temperature")
    with pytest.raises(ValueError, match="has parts"):
        kd.exercises.check_kl_step(fn, "direction")


DELEGATING = {  # solutions that hand the work to kdlab or torch, and the call the guard must name
    "my_kl_step": [("def my_kl_step(student, x, teacher_logits, opt, T=1.0, direction='forward'):\n"
                    "    return kd.methods.pixelcnn.kl_step(student, x, teacher_logits, opt, T, direction)['kl'].item()",
                    "pixelcnn.kl_step"),
                   ("def my_kl_step(student, x, teacher_logits, opt, T=1.0, direction='forward'):\n"
                    "    s, t = student(x), teacher_logits.float()\n"
                    "    loss = kd.kernels.reference.kl_fused(s, t, T, direction == 'reverse', 1)[0]\n"
                    "    opt.zero_grad(); loss.backward(); opt.step(); return loss.item()", "kl_fused"),
                   ("def my_kl_step(student, x, teacher_logits, opt, T=1.0, direction='forward'):\n"
                    "    C = torch.distributions.Categorical\n"
                    "    p, q = C(logits=teacher_logits.movedim(1, -1) / T), C(logits=student(x).movedim(1, -1) / T)\n"
                    "    loss = torch.distributions.kl_divergence(p, q).mean() * T ** 2\n"
                    "    opt.zero_grad(); loss.backward(); opt.step(); return loss.item()", "kl_divergence")],
    "my_distill_step": [("from kdlab.methods.gan import distill_step as ds\n"
                         "def my_distill_step(student, teacher, z, opt, kind='mse', real=None, D=None, opt_d=None, w=0.0):\n"
                         "    return ds(student, teacher, z, opt, kind)['loss'].item()", "gan.distill_step")],
    "my_feature_terms": [("def my_feature_terms(fs, ft, adapter):\n"
                          "    L = kd.feature_losses\n"
                          "    return {'hint': L.hint_loss(adapter(fs), ft), 'attention': L.attention_transfer(fs, ft),\n"
                          "            'gram': L.gram_loss(adapter(fs), ft)}", "feature_losses")],
    "online_logsumexp": [("def online_logsumexp(x):\n    return x.logsumexp(-1)", "Tensor.logsumexp"),
                         ("def online_logsumexp(x):\n    return torch.logcumsumexp(x, -1)[..., -1]", "logcumsumexp"),
                         ("def online_logsumexp(x):\n    m = x.topk(1, -1).values\n"
                          "    return (m + (x - m).exp().sum(-1, keepdim=True).log())[..., 0]", "topk"),
                         ("def online_logsumexp(x):\n    m = x.max(-1, keepdim=True).values\n"
                          "    return (m + (x - m).exp().sum(-1, keepdim=True).log())[..., 0]", "Tensor.max")],
    "my_consistency_function": [("def my_consistency_function(model, z, t, t_min=cm.T_MIN, sigma_d=0.5, k=10.0):\n"
                                 "    return cm.consistency_function(model, z, t, t_min)", "consistency_function"),
                                ("from kdlab.methods.consistency import skip_out\n"
                                 "def my_consistency_function(model, z, t, t_min=cm.T_MIN, sigma_d=0.5, k=10.0):\n"
                                 "    c_skip, c_out = (c.view(-1, 1, 1, 1) for c in skip_out(t, t_min, sigma_d, k))\n"
                                 "    return c_skip * z + c_out * dm.predict_x(model, z, t, clip=False)", "skip_out")],
    "my_gan_step": [("def my_gan_step(G, D, real, z, opt_g, opt_d):\n"
                     "    out = kd.methods.gan.gan_step(G, D, real, z, opt_g, opt_d)\n"
                     "    return out['loss_d'].item(), out['loss_g'].item()", "gan.gan_step")],
    "my_mle_step": [("def my_mle_step(model, x, opt):\n"
                     "    return kd.methods.pixelcnn.mle_step(model, x, opt)['bits_per_dim'].item()", "pixelcnn.mle_step")],
    "my_band_energies": [("def my_band_energies(images, bands):\n    return kd.evaluation.metrics.band_energies(images, bands)",
                          "band_energies")],
    "my_two_step_target": [("def my_two_step_target(teacher, z, t, N):\n    return dm.two_step_target(teacher, z, t, N)",
                            "two_step_target")],
    "my_progressive_step": [("def my_progressive_step(student, teacher, x, t, eps, opt, N):\n"
                             "    return dm.progressive_step(student, teacher, x, t, eps, opt, N)['loss'].item()",
                             "progressive_step")],
    "kernel_logsumexp": [("def kernel_logsumexp(x):\n    return torch.logsumexp(x, -1)", "logsumexp")],
    "my_matching_gradient": [("def my_matching_gradient(real, fake, x, t, eps, normalise=True):\n"
                              "    return dmd.matching_gradient(real, fake, x, t, eps, normalise)", "matching_gradient"),
                             ("def my_matching_gradient(real, fake, x, t, eps, normalise=True):\n"
                              "    z, (a, s) = dm.diffuse(x, t, eps), (v.view(-1, 1, 1, 1) for v in dm.alpha_sigma(t))\n"
                              "    raw = a * (dmd.score(fake, z, t) - dmd.score(real, z, t))\n"
                              "    scale = (x - dm.predict_x(real, z, t, clip=False)).abs().mean(dim=(1, 2, 3), keepdim=True)\n"
                              "    return raw / (a ** 2 / s ** 2) / scale if normalise else raw", "dmd.score")],
}


@pytest.mark.parametrize("name, src, called", [(n, s, c) for n, cases in sorted(DELEGATING.items()) for s, c in cases])
def test_checks_refuse_solutions_that_call_the_reference(name, src, called):
    ns = namespace()
    exec(src, ns)
    part = {"my_distill_step": "mse", "my_feature_terms": "hint"}.get(name)
    for hidden in (False, True):  # learners see it before grading does
        with pytest.raises(ExerciseError, match=f"calls .*{re.escape(called)}.*score 0"):
            CHECKS[name](ns[name], part, hidden=hidden)


def test_one_step_mistakes_cost_one_part():
    """Assignment 08: the U-Net part mixes F with the learner's own c_skip and c_out, and the normalised
    part compares with the exact raw gradient, so a mistake in one formula loses only its part."""
    cases = [("my_consistency_function", ("gap = k * (s / a", "gap = (s / a"), "weights"),
             ("my_consistency_function", ("dm.predict_x(model, z, t, clip=False)", "dm.predict_x(model, z, t)"), "network"),
             ("my_consistency_function", ("dm.predict_x(model, z, t, clip=False)", "model(z, t)"), "weights"),
             ("my_matching_gradient", ("a ** 2 / s ** 2", "a ** 2 / s"), "gaussian"),
             ("my_matching_gradient", ("(x - x_real).abs().mean(dim=(1, 2, 3), keepdim=True)", "(x - x_real).abs().mean()"),
              "normalised")]
    for name, mistake, lost in cases:
        fn = tutorial_step(name, mistake)
        one_step = kd.exercises.one_step
        parts = one_step.CONSISTENCY_PARTS if name == "my_consistency_function" else one_step.MATCHING_PARTS
        for part in parts:
            if part == lost:
                with pytest.raises(ExerciseError):
                    CHECKS[name](fn, part, hidden=True)
            else:
                CHECKS[name](fn, part, hidden=True)


def test_the_consistency_boundary_is_exact_for_any_network():
    """The boundary part asks for torch.equal, which the tutorial's parameterisation meets whatever
    the network predicts, in float32 too."""
    f = tutorial_step("my_consistency_function")
    torch.manual_seed(0)
    net = kd.models.UNet(widths=(4, 8, 8), emb_dim=8).eval()
    nn.init.normal_(net.head[-1].weight, std=0.5)  # the U-Net starts as the zero predictor
    z = 3 * torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(f(net, z, torch.full((2,), cm.T_MIN)), z)
        assert not torch.equal(dm.predict_x(net, z, torch.full((2,), cm.T_MIN), clip=False), z)  # sigma_t_min > 0


def test_the_guard_lets_legitimate_calls_through():
    """A decorated helper (torch.no_grad's wrapper is shared with kdlab's decorated functions), the
    elementwise torch.max(a, b) of a running maximum, and the models' forward passes are not delegation."""
    ns = namespace()
    exec("@torch.no_grad()\ndef teacher_images(teacher, z):\n    return teacher(z)\n\n"
         "def my_distill_step(student, teacher, z, opt, kind='mse', real=None, D=None, opt_d=None, w=0.0):\n"
         "    loss = (student(z) - teacher_images(teacher, z)).pow(2).mean() if kind == 'mse' else "
         "(student(z) - teacher_images(teacher, z)).abs().mean()\n"
         "    opt.zero_grad(); loss.backward(); opt.step(); return loss.item()\n\n"
         "def online_logsumexp(x):\n"
         "    m, l = torch.full(x.shape[:-1], -math.inf, dtype=x.dtype), torch.zeros(x.shape[:-1], dtype=x.dtype)\n"
         "    for k in range(x.shape[-1]):\n"
         "        m_new = torch.max(m, x[..., k])\n"
         "        l, m = l * torch.exp(m - m_new) + torch.exp(x[..., k] - m_new), m_new\n"
         "    return m + torch.log(l)", ns)
    for hidden in (False, True):
        kd.exercises.check_distill_step(ns["my_distill_step"], "mse", hidden=hidden)
        kd.exercises.check_distill_step(ns["my_distill_step"], "l1", hidden=hidden)
        kd.exercises.check_online_logsumexp(ns["online_logsumexp"], hidden=hidden)


def test_a_step_that_runs_batchnorm_twice_is_graded_on_its_weights():
    """Recomputing G(z) for the generator's loss updates BatchNorm's running statistics once more; the
    parameters are what the step is graded on."""
    src = tutorial_functions("01_teacher_pretraining")["my_gan_step"]
    twice = src.replace("d_gen = D(fake)", "d_gen = D(G(z))")
    assert twice != src
    ns = namespace()
    exec(twice, ns)
    kd.exercises.check_gan_step(ns["my_gan_step"], hidden=True)


def test_a_wrong_discriminator_step_costs_only_its_part():
    fn = tutorial_step("my_gan_step", ("torch.ones_like(d_real))", "torch.zeros_like(d_real))"))
    with pytest.raises(ExerciseError, match="loss_d"):
        kd.exercises.check_gan_step(fn, "discriminator")
    kd.exercises.check_gan_step(fn, "generator")  # graded with the learner's own discriminator


def test_the_guard_sees_aliases_and_tensor_methods_but_not_allowed_calls():
    forbidden = kd.exercises.Forbidden("x", python=(kd.losses.kl_distillation,),
                                       torch_ops=(torch.logsumexp, torch.Tensor.logsumexp))
    from kdlab.losses import kl_distillation as alias
    s = torch.randn(2, 3)
    for call, expect in ((lambda: alias(s, s), True), (lambda: s.logsumexp(-1), True), (lambda: torch.logsumexp(s, 1), True),
                         (lambda: torch.log_softmax(s, 1), False), (lambda: kd.losses.output_distillation(s, s), False)):
        with kd.exercises.recording(forbidden) as seen:
            call()
        assert bool(seen) is expect


def test_learners_see_the_message_alone(capsys):
    """IPython shows an exception's _render_traceback_ instead of the traceback into kdlab's checks."""
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    shell.user_ns.update(kd=kd, math=math, torch=torch, F=F)
    shell.run_cell(tutorial_functions("03_kl_derivation")["my_kl_step"].replace("(kl * T ** 2).mean()", "kl.mean()"))
    capsys.readouterr()
    result = shell.run_cell('kd.exercises.check_kl_step(my_kl_step, "temperature")')
    shown = capsys.readouterr().out
    assert isinstance(result.error_in_exec, ExerciseError)
    assert "off by a factor T^2" in shown
    assert "Traceback" not in shown and "exercises" not in shown.replace("ExerciseError", "") and "File " not in shown


def test_prediction_helper_measures_the_gradient_against_float64_autograd():
    step = tutorial_step("my_kl_step")
    g = torch.Generator().manual_seed(0)
    s, t = (3 * torch.randn(1, 10, 1, 1, generator=g, dtype=torch.float64) for _ in range(2))
    for T, norm in zip((1.0, 4.0), kd.exercises.kl_step.gradient_norms(step, (1.0, 4.0))):
        x = s.clone().requires_grad_(True)
        p, q = torch.softmax(t / T, 1), torch.softmax(x / T, 1)
        (T ** 2 * (p * (p.log() - q.log())).sum()).backward()
        assert math.isclose(norm, x.grad.norm().item(), rel_tol=1e-6)  # the step casts the teacher's logits to float32


def test_exercise_notebooks_are_generated_from_the_sources_only():
    from pathlib import Path
    released = sorted(p.name for p in (Path(__file__).resolve().parent.parent / "notebooks" / "exercises").glob("*.ipynb"))
    assert released == sorted(f"{a[:2]}_exercises.ipynb" for a in ASSIGNMENTS)


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_assignment_markdown_has_no_accidental_code_blocks(assignment):
    """A markdown line indented by four spaces outside a list becomes a code block (it did, once, for
    the introductions' tables)."""
    from assignment_sources import cells, source_notebook

    for c in cells(source_notebook(assignment)):
        if c["cell_type"] == "markdown":
            lines = c["source"].splitlines()
            bad = [line for i, line in enumerate(lines) if line.startswith("    ") and line.strip()
                   and not (i and lines[i - 1].lstrip().startswith(("-", "1.", "2.", "3.")) or lines[i - 1].startswith("    "))]
            assert not bad, f"{assignment}: markdown lines that render as code: {bad[:2]}"
