"""Independent float64 formulas of the fused kernels' losses, shared by the kernel tests (written
out from the definitions, not calling kdlab)."""
import torch


def kl64(s, t, temperature, reverse):
    """Independent float64 formula: T^2 sum_k a_k log(a_k / b_k) per position, softmax written out."""
    s, t = s.double() / temperature, t.double() / temperature
    q = torch.exp(s - s.max(1, keepdim=True).values)
    q = q / q.sum(1, keepdim=True)
    p = torch.exp(t - t.max(1, keepdim=True).values)
    p = p / p.sum(1, keepdim=True)
    a, b = (q, p) if reverse else (p, q)
    return temperature ** 2 * (a * (a.log() - b.log())).sum(1)


def at64(fs, ft, p):
    """Independent float64 attention transfer per sample."""
    a_s = (fs.double().abs() ** p).mean(1).flatten(1)
    a_t = (ft.double().abs() ** p).mean(1).flatten(1)
    return ((a_s / a_s.norm(dim=1, keepdim=True) - a_t / a_t.norm(dim=1, keepdim=True)) ** 2).sum(1)


def value_and_grad64(fn, student, *args):
    """``fn(student64, *args)`` per position / sample and the gradient of its sum, both float64."""
    s64 = student.detach().double().requires_grad_(True)
    value = fn(s64, *args)
    (grad,) = torch.autograd.grad(value.sum(), s64)
    return value.detach(), grad
