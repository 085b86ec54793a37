"""The exercise checks (kdlab.exercises) accept correct solutions, catch typical mistakes with a
helpful message, and the exercise notebooks run end to end with a solution injected."""
import json
import math
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import kdlab as kd
from kdlab.exercises import ExerciseError

EXERCISES = Path(__file__).resolve().parent.parent / "notebooks" / "exercises"


# ---------------------------------------------------------------- solutions, written independently of kdlab
def kl_solution(s, t, temperature=1.0, direction="forward"):
    log_q, log_p = F.log_softmax(s / temperature, 1), F.log_softmax(t / temperature, 1)
    a, b = (log_p, log_q) if direction == "forward" else (log_q, log_p)
    return (a.exp() * (a - b)).sum(1).mean() * temperature ** 2


SOLUTIONS = {
    "01_exercises.ipynb": """
        def bits_per_dim(log_prob, num_pixels):
            return -log_prob / (num_pixels * math.log(2))
    """,
    "02_exercises.ipynb": """
        def distill_step(student, teacher, z, optimizer):
            with torch.no_grad():
                target = teacher(z)
            loss = ((student(z) - target) ** 2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            return loss.item()
    """,
    "03_exercises.ipynb": """
        def my_kl(student_logits, teacher_logits, temperature=1.0, direction="forward"):
            log_q = torch.log_softmax(student_logits / temperature, 1)
            log_p = torch.log_softmax(teacher_logits / temperature, 1)
            a, b = (log_p, log_q) if direction == "forward" else (log_q, log_p)
            return (a.exp() * (a - b)).sum(1).mean() * temperature ** 2
    """,
    "04_exercises.ipynb": """
        def attention_map(features):
            a = (features ** 2).mean(1).flatten(1)
            return a / a.norm(dim=1, keepdim=True)
    """,
    "05_exercises.ipynb": """
        def radial_spectrum(images, n_bins):
            x = images - images.mean((-2, -1), keepdim=True)
            power = (torch.fft.fft2(x).abs() ** 2).mean((0, 1)).flatten()
            h, w = images.shape[-2:]
            fy, fx = torch.fft.fftfreq(h), torch.fft.fftfreq(w)
            ring = ((fy[:, None] ** 2 + fx[None, :] ** 2).sqrt() * 2 * n_bins).round().long().clamp(max=n_bins).flatten()
            total = torch.zeros(n_bins + 1, dtype=power.dtype).index_add_(0, ring, power)
            count = torch.zeros(n_bins + 1, dtype=power.dtype).index_add_(0, ring, torch.ones_like(power))
            return total / count.clamp(min=1)
    """,
    "06_exercises.ipynb": """
        def distillation_target(z_t, z_t2, t, t2):
            a_t, s_t = torch.cos(math.pi * t / 2).view(-1, 1, 1, 1), torch.sin(math.pi * t / 2).view(-1, 1, 1, 1)
            a_2, s_2 = torch.cos(math.pi * t2 / 2).view(-1, 1, 1, 1), torch.sin(math.pi * t2 / 2).view(-1, 1, 1, 1)
            return (z_t2 - s_2 / s_t * z_t) / (a_2 - s_2 / s_t * a_t)
    """,
    "07_exercises.ipynb": """
        def online_logsumexp(x):
            m = torch.full(x.shape[:-1], -math.inf, dtype=x.dtype)
            l = torch.zeros(x.shape[:-1], dtype=x.dtype)
            for k in range(x.shape[-1]):
                m_new = torch.maximum(m, x[..., k])
                l = l * torch.exp(m - m_new) + torch.exp(x[..., k] - m_new)
                m = m_new
            return m + torch.log(l)
    """,
}
WRONG = {  # one typical mistake per notebook, and the hint the check must give
    "01_exercises.ipynb": ("def bits_per_dim(log_prob, num_pixels):\n    return -log_prob / num_pixels", "convert to bits"),
    "02_exercises.ipynb": ("def distill_step(student, teacher, z, optimizer):\n    return 0.0", "did not change"),
    "03_exercises.ipynb": ("def my_kl(s, t, temperature=1.0, direction='forward'):\n"
                           "    p, q = torch.log_softmax(t / temperature, 1), torch.log_softmax(s / temperature, 1)\n"
                           "    a, b = (p, q) if direction == 'forward' else (q, p)\n"
                           "    return (a.exp() * (a - b)).sum(1).mean()", "T^2"),
    "04_exercises.ipynb": ("def attention_map(features):\n    return (features ** 2).mean(1).flatten(1)", "L2 norm 1"),
    "05_exercises.ipynb": (textwrap.dedent(SOLUTIONS["05_exercises.ipynb"]).replace(
        "x = images - images.mean((-2, -1), keepdim=True)", "x = images"), "DC"),
    "06_exercises.ipynb": ("def distillation_target(z_t, z_t2, t, t2):\n    return z_t2", "teacher's z_t2"),
    "07_exercises.ipynb": ("def online_logsumexp(x):\n    return torch.log(torch.exp(x).sum(-1))", "+-1000"),
}


def test_checks_accept_correct_solutions():
    ns = {"math": math, "torch": torch}
    for src in SOLUTIONS.values():
        exec(textwrap.dedent(src), ns)
    assert kd.exercises.check_bits_per_dim(ns["bits_per_dim"])
    assert kd.exercises.check_distill_step(ns["distill_step"])
    assert kd.exercises.check_kl(ns["my_kl"]) and kd.exercises.check_kl(kl_solution)
    assert kd.exercises.check_attention_map(ns["attention_map"])
    assert kd.exercises.check_radial_spectrum(ns["radial_spectrum"])
    assert kd.exercises.check_distillation_target(ns["distillation_target"])
    assert kd.exercises.check_online_logsumexp(ns["online_logsumexp"])
    assert kd.exercises.check_online_logsumexp(lambda x: torch.logsumexp(x, -1))
    with pytest.raises(ExerciseError, match="rescaled"):
        kd.exercises.check_online_logsumexp(lambda x: x.max(-1).values)
    with pytest.raises(ExerciseError, match="rescaling|rescaled"):  # forgetting exp(m - m')
        kd.exercises.check_online_logsumexp(lambda x: x.max(-1).values + torch.log(torch.exp(x - x[..., :1]).sum(-1)))


@pytest.mark.parametrize("wrong, hint", [
    (lambda s, t, T=1.0, d="forward": kl_solution(s, t, T, d) / T ** 2, "T^2"),
    (lambda s, t, T=1.0, d="forward": kl_solution(s, t, T, "reverse" if d == "forward" else "forward"), "KL(student || teacher)"),
    (lambda s, t, T=1.0, d="forward": kl_solution(s, t, 1.0, d) * T ** 2, "softmax(logits / T)"),
    (lambda s, t, T=1.0, d="forward": kl_solution(s, t, T, d) * len(s), "summed over positions"),
    (lambda s, t, T=1.0, d="forward": (kl_solution(s, t, T, d) * 0 + 1), "differs"),
    (lambda s, t, T=1.0, d="forward": _naive_kl(s, t, T, d), "log_softmax"),
    (lambda s, t, T=1.0, d="forward": torch.tensor(kl_solution(s, t, T, d).item(), dtype=s.dtype), "gradient"),
    (lambda s, t, T=1.0, d="forward": _kl_last_axis(s, t, T, d), "dim 1"),
])
def test_kl_check_catches_typical_mistakes(wrong, hint):
    with pytest.raises(ExerciseError, match=hint.replace("(", r"\(").replace(")", r"\)").replace("|", r"\|").replace("^", r"\^")):
        kd.exercises.check_kl(wrong)


def _naive_kl(s, t, T, d):  # log(softmax(...)) overflows to -inf for extreme logits
    p, q = torch.softmax(t / T, 1), torch.softmax(s / T, 1)
    a, b = (p, q) if d == "forward" else (q, p)
    return (a * (a.log() - b.log())).sum(1).mean() * T ** 2


def _kl_last_axis(s, t, T, d):  # softmax over the last axis: right for [N, K], wrong for [N, K, H, W]
    log_q, log_p = F.log_softmax(s / T, -1), F.log_softmax(t / T, -1)
    a, b = (log_p, log_q) if d == "forward" else (log_q, log_p)
    return (a.exp() * (a - b)).sum(-1).mean() * T ** 2


def test_other_checks_catch_typical_mistakes():
    with pytest.raises(ExerciseError, match="sign"):
        kd.exercises.check_bits_per_dim(lambda lp, d: lp / (d * math.log(2)))
    with pytest.raises(ExerciseError, match="number of pixels"):
        kd.exercises.check_bits_per_dim(lambda lp, d: -lp / math.log(2))
    with pytest.raises(ExerciseError, match="num_pixels"):
        kd.exercises.check_bits_per_dim(lambda lp, d: -lp / (784 * math.log(2)))

    def updates_teacher(student, teacher, z, opt):
        loss = ((student(z) - teacher(z)) ** 2).mean()
        torch.optim.SGD(teacher.parameters(), lr=0.1).zero_grad()
        loss.backward()
        opt.step()
        for p in teacher.parameters():
            p.data -= 0.1 * p.grad
        return loss.item()

    with pytest.raises(ExerciseError, match="teacher is frozen"):
        kd.exercises.check_distill_step(updates_teacher)

    def teacher_in_train_mode(student, teacher, z, opt):
        teacher.train()  # BatchNorm now updates its running statistics from this batch
        with torch.no_grad():
            target = teacher(z)
        loss = ((student(z) - target) ** 2).mean()
        opt.zero_grad(); loss.backward(); opt.step()
        return loss.item()

    with pytest.raises(ExerciseError, match="BatchNorm statistics"):
        kd.exercises.check_distill_step(teacher_in_train_mode)

    def different_noise(student, teacher, z, opt):
        with torch.no_grad():
            target = teacher(torch.randn_like(z))
        loss = ((student(z) - target) ** 2).mean()
        opt.zero_grad(); loss.backward(); opt.step()
        return loss.item()

    with pytest.raises(ExerciseError, match="same noise"):
        kd.exercises.check_distill_step(different_noise)
    with pytest.raises(ExerciseError, match=r"\|F\|"):
        kd.exercises.check_attention_map(lambda f: F.normalize(f.abs().mean(1).flatten(1), dim=1))
    with pytest.raises(ExerciseError, match=r"\[N, H\*W\]"):
        kd.exercises.check_attention_map(lambda f: F.normalize((f ** 2).mean(1), dim=(1, 2)))


def _spectrum(images, n_bins, amplitude=False, first_only=False, cycles_per_image=False):
    """A float64 radial spectrum written with NumPy, with one mistake switched on."""
    x = images.numpy()[:1] if first_only else images.numpy()
    x = x - x.mean(axis=(-2, -1), keepdims=True)
    power = (np.abs(np.fft.fft2(x)) ** (1 if amplitude else 2)).mean(axis=(0, 1))
    h, w = x.shape[-2:]
    fy, fx = np.fft.fftfreq(h, d=1 / h if cycles_per_image else 1), np.fft.fftfreq(w, d=1 / w if cycles_per_image else 1)
    ring = np.minimum(np.round(np.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2) * 2 * n_bins), n_bins).astype(int)
    total = np.bincount(ring.ravel(), power.ravel(), minlength=n_bins + 1)
    count = np.bincount(ring.ravel(), minlength=n_bins + 1)
    return torch.from_numpy(total / np.maximum(count, 1))


def test_spectrum_check_accepts_numpy_reference_and_catches_typical_mistakes():
    assert kd.exercises.check_radial_spectrum(_spectrum)
    for kwargs, hint in (({"amplitude": True}, "amplitude"), ({"first_only": True}, "all images"),
                         ({"cycles_per_image": True}, "cycles per pixel")):
        with pytest.raises(ExerciseError, match=hint):
            kd.exercises.check_radial_spectrum(lambda x, n, kw=kwargs: _spectrum(x, n, **kw))
    with pytest.raises(ExerciseError, match="n_bins \\+ 1"):
        kd.exercises.check_radial_spectrum(lambda x, n: _spectrum(x, n)[1:])
    with pytest.raises(ExerciseError, match="sum grows"):
        kd.exercises.check_radial_spectrum(lambda x, n: _spectrum(x, n) * torch.bincount(
            torch.from_numpy(np.minimum(np.round(np.sqrt(np.fft.fftfreq(x.shape[-2])[:, None] ** 2
                                                          + np.fft.fftfreq(x.shape[-1])[None, :] ** 2) * 2 * n), n)
                             .astype(np.int64).ravel()), minlength=n + 1))


def test_distillation_target_check_catches_typical_mistakes():
    ab = lambda t: [v.view(-1, 1, 1, 1) for v in kd.methods.diffusion.alpha_sigma(t)]

    def inverted(z, z2, t, t2):
        (a_t, s_t), (a_2, s_2) = ab(t), ab(t2)
        return (z2 - s_t / s_2 * z) / (a_2 - s_t / s_2 * a_t)

    def no_denominator(z, z2, t, t2):
        (_, s_t), (_, s_2) = ab(t), ab(t2)
        return z2 - s_2 / s_t * z

    def alpha_ratio(z, z2, t, t2):
        (a_t, s_t), (a_2, s_2) = ab(t), ab(t2)
        return (z2 - a_2 / a_t * z) / (s_2 - a_2 / a_t * s_t)

    for wrong, hint in ((inverted, "inverted|inf or nan"), (no_denominator, "divide by"), (alpha_ratio, "does not land")):
        with pytest.raises(ExerciseError, match=hint):
            kd.exercises.check_distillation_target(wrong)


def _with_solution(path: Path, src: str, dest: Path) -> Path:
    nb = json.loads(path.read_text())
    cells = [c for c in nb["cells"] if "exercise" in c["metadata"].get("tags", [])]
    assert len(cells) == 1, "each exercise notebook has one cell tagged 'exercise'"
    assert "raise NotImplementedError" in "".join(cells[0]["source"])  # the learner's starting point
    cells[0]["source"] = textwrap.dedent(src).strip()
    dest.write_text(json.dumps(nb))
    return dest


def _check_in_process(path: Path, src: str) -> None:
    """Run an exercise notebook's imports, parameters, exercise cell (with ``src``) and the check cell
    that follows it in this process: the path a wrong answer takes, without starting a kernel."""
    cells = [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
    at = next(i for i, c in enumerate(cells) if "exercise" in c["metadata"].get("tags", []))
    check = next(c for c in cells[at + 1:] if "kd.exercises.check_" in "".join(c["source"]))
    ns: dict = {}
    for source in ("".join(cells[0]["source"]), "".join(cells[1]["source"]), textwrap.dedent(src), "".join(check["source"])):
        exec("\n".join(line for line in source.splitlines() if not line.startswith("%")), ns)


@pytest.mark.notebook
@pytest.mark.parametrize("name", sorted(SOLUTIONS))
def test_exercise_notebook_runs_with_a_solution_and_stops_on_a_wrong_one(name, tmp_path):
    import papermill as pm

    path = EXERCISES / name
    ok = _with_solution(path, SOLUTIONS[name], tmp_path / f"ok_{name}")
    pm.execute_notebook(str(ok), str(tmp_path / f"ok_out_{name}"), kernel_name="python3", cwd=str(EXERCISES),
                        progress_bar=False, execution_timeout=300)
    executed = json.loads((tmp_path / f"ok_out_{name}").read_text())
    text = json.dumps(executed["cells"])
    assert "all " in text and "checks pass" in text
    wrong_src, hint = WRONG[name]
    with pytest.raises(ExerciseError) as err:
        _check_in_process(path, wrong_src)
    assert hint in str(err.value)


@pytest.mark.parametrize("name", sorted(SOLUTIONS))
def test_exercise_notebooks_have_a_parameters_cell_after_the_imports(name):
    code = [c for c in json.loads((EXERCISES / name).read_text())["cells"] if c["cell_type"] == "code"]
    assert "import kdlab as kd" in "".join(code[0]["source"])
    assert code[1]["metadata"].get("tags") == ["parameters"]  # papermill can rerun it with other values


def test_exercise_notebooks_are_the_ones_we_have_solutions_for():
    assert sorted(p.name for p in EXERCISES.glob("*.ipynb")) == sorted(SOLUTIONS)
