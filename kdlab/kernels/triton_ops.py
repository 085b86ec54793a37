"""Triton implementations of kdlab's two fused ops, for GPUs where the CUDA build cannot run: a plain
``pip install torch`` on Linux brings Triton but no ``nvcc``. Same contract as :mod:`.reference` (loss
per position or per sample, or its mean / sum, and the gradient of that loss with respect to the
student, in one pass); :mod:`kdlab.kernels` registers them as the ops' CUDA implementations when
:func:`kdlab.kernels.backend` is ``"triton"``. On a CPU they run under Triton's interpreter
(``TRITON_INTERPRET=1``, set before Triton is imported), which is how CI tests them.

The formulas are the reference's (see its docstring), computed as the CUDA kernels compute them:

- KL: one program takes a tile of rows (positions) by classes, ``[BLOCK_R, BLOCK_K]``. Positions innermost
  (``[N, K, *spatial]`` contiguous): 16 neighbouring positions, so a warp's loads are contiguous (16 bytes a
  thread when H W is a multiple of 16 bytes' worth of values); class axis innermost (``[N, K]``, or both logits
  channels-last, read in place): whole rows (16-byte loads when K is such a multiple). Up to :data:`TILE` logits
  of each input stay in registers, read once; more classes stream through in chunks, read twice (the softmax
  statistics with online maxima, then the gradient). Any K.
- attention transfer: three launches, as in CUDA: the maps (a program per 64 positions of a sample, the
  channels in tiles of 32), each sample's norms and loss, and the gradient (programs as for the maps).
  Any C; H W < 2^26.

``python -m kdlab.bench`` measures them beside the CUDA kernels; ``tests/test_kernels_triton.py`` checks them
under the interpreter and compiles them for sm_90 here, without a GPU (registers, spills, load widths).
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from . import reference

TILE = 4096  # logits of each input one program holds at once: more classes than fit stream through it in chunks
COLUMN_POSITIONS = 16  # neighbouring positions a program reads together in the positions-innermost layout
ROW_TILE = 2048  # rows layout with few classes: rows per program so that a tile holds about this many logits


@triton.jit
def _kl_add(ma, sa, mb, sb, d, a, b, c, REVERSE: tl.constexpr):
    """The softmax statistics of BLOCK_R rows, ``(ma, sa, mb, sb, d)`` (each ``[BLOCK_R]``), with a tile of
    their logits added: student ``a`` and teacher ``b`` ``[BLOCK_R, BLOCK_K]`` as loaded (``-inf`` where
    masked), ``c = log2(e) / T``. In the logits' own units (not divided by T):

        ma, mb   maxima;  sa = sum_k exp((a_k - ma) / T),  sb likewise
        forward: d = sum_k w_k ((b_k - mb) - (a_k - ma)),  w_k = exp((b_k - mb) / T)
        reverse: d = sum_k w_k ((a_k - ma) - (b_k - mb)),  w_k = exp((a_k - ma) / T)

    Differences are taken from the maxima, so large logits lose no precision to T. When a maximum rises,
    the old sums scale by exp((old - new) / T) and d's differences all move by the same offset."""
    Ma, Mb = tl.split(tl.max(tl.join(a, b), 1))  # one reduction of both tiles: Triton 3.6's code then issues
    Ma = tl.maximum(ma, Ma)  # the teacher's loads before it uses the student's (not after the student's maxima)
    Mb = tl.maximum(mb, Mb)
    fa = tl.where(ma == float("-inf"), 0.0, tl.exp2((ma - Ma) * c))
    fb = tl.where(mb == float("-inf"), 0.0, tl.exp2((mb - Mb) * c))
    da = tl.where(ma == Ma, 0.0, ma - Ma)  # an unchanged maximum moves by 0, also at -inf (not -inf - -inf)
    db = tl.where(mb == Mb, 0.0, mb - Mb)
    xa = tl.where(a == Ma[:, None], 0.0, a - Ma[:, None])
    xb = tl.where(b == Mb[:, None], 0.0, b - Mb[:, None])
    ea = tl.where(a == float("-inf"), 0.0, tl.exp2(xa * c))
    eb = tl.where(b == float("-inf"), 0.0, tl.exp2(xb * c))
    if REVERSE:  # weights vanishing at the new maximum add nothing (never 0 * inf)
        d = tl.where(sa * fa > 0, fa * (d + sa * (da - db)), 0.0) + tl.sum(tl.where(ea > 0, ea * (xa - xb), 0.0), 1)
    else:
        d = tl.where(sb * fb > 0, fb * (d + sb * (db - da)), 0.0) + tl.sum(tl.where(eb > 0, eb * (xb - xa), 0.0), 1)
    return Ma, sa * fa + tl.sum(ea, 1), Mb, sb * fb + tl.sum(eb, 1), d


@triton.jit
def _kl_value(sa, sb, d, inv_t, REVERSE: tl.constexpr):
    """KL per row from its statistics: forward d / (T sb) + log sa - log sb; reverse d / (T sa) + log sb - log sa;
    as the reference: 0 where the weighting distribution (p forward, q reverse) is all masked, else NaN where the
    other one is (its log-softmax is NaN)."""
    if REVERSE:
        return tl.where(sa > 0, tl.where(sb > 0, d * inv_t / sa + tl.log(sb) - tl.log(sa), float("nan")), 0.0)
    return tl.where(sb > 0, tl.where(sa > 0, d * inv_t / sb + tl.log(sa) - tl.log(sb), float("nan")), 0.0)


@triton.jit
def _kl_grad(a, b, ma, sa, mb, sb, kl, c, inv_t, temperature, REVERSE: tl.constexpr):
    """d (T^2 KL) / d s for a tile of logits, from the rows' final statistics: forward T (q - p); reverse
    T q (log q - log p - KL), 0 where q = 0 (a -inf student logit)."""
    xa = tl.where(a == ma[:, None], 0.0, a - ma[:, None])
    q = tl.where(a == float("-inf"), 0.0, tl.exp2(xa * c)) * (1.0 / sa)[:, None]
    if REVERSE:
        xb = tl.where(b == mb[:, None], 0.0, b - mb[:, None])
        log_ratio = (xa - xb) * inv_t + (tl.log(sb) - tl.log(sa))[:, None]  # log q - log p
        return tl.where(q > 0, temperature * (q * (log_ratio - kl[:, None])), 0.0)  # T q underflows first otherwise
    p = tl.where(b == float("-inf"), 0.0, tl.exp2((b - mb[:, None]) * c)) * (1.0 / sb)[:, None]
    return temperature * (q - p)


@triton.jit
def _kl_kernel(s_ptr, t_ptr, loss_ptr, grad_ptr, k_units, p_units, tiles, temperature, grad_scale, weight, w_ptr,
               ROWS: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr, ONE_PASS: tl.constexpr,
               REVERSE: tl.constexpr, HAS_W: tl.constexpr, K_UNIT: tl.constexpr, P_UNIT: tl.constexpr):
    """One program: BLOCK_R rows (positions) x all K classes, as tiles [BLOCK_R, BLOCK_K].
    ROWS: the class axis innermost (``[rows, K]``; P = the number of rows), row r's class k at r K + k.
    Otherwise ``[N, K, P]`` with the positions innermost: program ``pid`` takes sample ``pid // tiles`` and its
    positions from ``(pid % tiles) BLOCK_R``, class k of position j at k P + j (neighbouring positions together).
    ONE_PASS (K <= BLOCK_K): the tile stays in registers, read once. Otherwise the logits stream through in
    chunks of BLOCK_K classes twice: the statistics, then the gradient.
    K = k_units K_UNIT and P = p_units P_UNIT, the units powers of two up to a 16-byte load: Triton then knows that
    K (rows) or P (positions innermost) is a multiple of them and loads 16 bytes at a time (it specialises a runtime
    integer only on divisibility by 16)."""
    K = k_units * K_UNIT
    P = p_units * P_UNIT
    pid = tl.program_id(0)
    r = tl.arange(0, BLOCK_R)
    k = tl.arange(0, BLOCK_K)
    if ROWS:
        first = pid.to(tl.int64) * BLOCK_R  # this program's first row
        base = first * K
        rows_left = P - first
        offsets = r[:, None] * K + k[None, :]
        class_step = 1
        loss_at = first
    else:
        n = pid // tiles
        j0 = (pid % tiles) * BLOCK_R
        base = n.to(tl.int64) * K * P + j0
        rows_left = P - j0
        offsets = k[None, :] * P + r[:, None]
        class_step = P
        loss_at = n.to(tl.int64) * P + j0
    row_ok = r < rows_left
    s_ptr += base
    t_ptr += base
    grad_ptr += base
    inv_t = 1.0 / temperature
    c = inv_t * 1.4426950408889634  # exp(x / T) = 2^(x c)
    w = weight
    if HAS_W:  # the weight tensor's value, read on the device
        w = w * tl.load(w_ptr)
    ma = tl.full([BLOCK_R], float("-inf"), tl.float32)
    mb = tl.full([BLOCK_R], float("-inf"), tl.float32)
    sa = tl.zeros([BLOCK_R], tl.float32)
    sb = tl.zeros([BLOCK_R], tl.float32)
    d = tl.zeros([BLOCK_R], tl.float32)
    if ONE_PASS:
        mask = row_ok[:, None] & (k[None, :] < K)
        a = tl.load(s_ptr + offsets, mask=mask, other=float("-inf")).to(tl.float32)
        b = tl.load(t_ptr + offsets, mask=mask, other=float("-inf")).to(tl.float32)
        ma, sa, mb, sb, d = _kl_add(ma, sa, mb, sb, d, a, b, c, REVERSE)
        kl = _kl_value(sa, sb, d, inv_t, REVERSE)
        g = _kl_grad(a, b, ma, sa, mb, sb, kl, c, inv_t, temperature, REVERSE) * (grad_scale * w)
        tl.store(grad_ptr + offsets, g.to(grad_ptr.dtype.element_ty), mask=mask)
    else:
        for k0 in tl.range(0, K, BLOCK_K, num_stages=3):  # loads of the next chunks issued ahead (cp.async)
            mask = row_ok[:, None] & (k[None, :] < K - k0)
            a = tl.load(s_ptr + k0 * class_step + offsets, mask=mask, other=float("-inf")).to(tl.float32)
            b = tl.load(t_ptr + k0 * class_step + offsets, mask=mask, other=float("-inf")).to(tl.float32)
            ma, sa, mb, sb, d = _kl_add(ma, sa, mb, sb, d, a, b, c, REVERSE)
        kl = _kl_value(sa, sb, d, inv_t, REVERSE)
        for k0 in tl.range(0, K, BLOCK_K, num_stages=3):  # loads of the next chunks issued ahead (cp.async)
            mask = row_ok[:, None] & (k[None, :] < K - k0)
            a = tl.load(s_ptr + k0 * class_step + offsets, mask=mask, other=float("-inf")).to(tl.float32)
            b = tl.load(t_ptr + k0 * class_step + offsets, mask=mask, other=float("-inf")).to(tl.float32)
            g = _kl_grad(a, b, ma, sa, mb, sb, kl, c, inv_t, temperature, REVERSE) * (grad_scale * w)
            tl.store(grad_ptr + k0 * class_step + offsets, g.to(grad_ptr.dtype.element_ty), mask=mask)
    tl.store(loss_ptr + loss_at + r, w * temperature * temperature * kl, mask=row_ok)


AT_POSITIONS = 64  # positions one program of the maps and gradient kernels takes (neighbours: contiguous loads)
AT_CHANNELS = 32  # channels it reads at once, as a tile [AT_CHANNELS, AT_POSITIONS]
AT_STATS_BLOCK = 1024  # positions the stats kernel reads at once


@triton.jit
def _pow(ax, e):
    """ax^e for ax >= 0, with powf's values at 0 (as the reference's and the CUDA kernel's): 0 for e > 0, 1 for
    e = 0, +inf for e < 0."""
    at_zero = tl.where(e > 0, 0.0, tl.where(e == 0, 1.0, float("inf")))
    return tl.where(ax > 0, tl.exp2(e * tl.log2(ax)), at_zero)


@triton.jit
def _abs_pow(x, p, SQUARE: tl.constexpr):
    """|x|^p (x * x for p = 2)."""
    if SQUARE:
        return x * x
    return _pow(tl.abs(x), p)


@triton.jit
def _attention_maps_kernel(s_ptr, t_ptr, maps_ptr, N, CS, CT, HW, tiles, p, SQUARE: tl.constexpr,
                           BLOCK_C: tl.constexpr, BLOCK_J: tl.constexpr):
    """a[n, j] = mean_c |x[n, c, j]|^p for BLOCK_J positions of one sample, the teacher's maps from the first
    ``N tiles`` programs (usually the wider features: started first), the student's from the next: x ``[N, C, HW]``
    (C = CT or CS, one dtype), maps ``[2, N, HW]`` (a_S, then a_T)."""
    pid = tl.program_id(0)
    teacher = pid < N * tiles
    if teacher:
        x_ptr, C = t_ptr, CT
    else:
        x_ptr, C, pid = s_ptr, CS, pid - N * tiles
    n = pid // tiles
    j = (pid % tiles) * BLOCK_J + tl.arange(0, BLOCK_J)
    c = tl.arange(0, BLOCK_C)
    maps_ptr += (teacher.to(tl.int64) * N + n) * HW
    ptrs = x_ptr + n.to(tl.int64) * C * HW + c[:, None] * HW + j[None, :]
    acc = tl.zeros([BLOCK_C, BLOCK_J], tl.float32)
    for c0 in tl.range(0, C, BLOCK_C, num_stages=3):  # the next tiles' loads issued ahead (cp.async)
        mask = (c[:, None] < C - c0) & (j[None, :] < HW)
        acc += _abs_pow(tl.load(ptrs, mask=mask, other=0.0).to(tl.float32), p, SQUARE)
        ptrs += BLOCK_C * HW  # 64-bit pointers: no limit on C H W
    tl.store(maps_ptr + j, tl.sum(acc, 0) / C, mask=j < HW)


@triton.jit
def _attention_stats_kernel(maps_ptr, loss_ptr, stats_ptr, N, HW, eps, weight, w_ptr, BLOCK: tl.constexpr,
                            HAS_W: tl.constexpr):
    """One sample n: from its maps a_S = maps[n], a_T = maps[N + n], the norms (at least eps), u = a_S / ||a_S||,
    d = u - a_T / ||a_T||; writes loss[n] = weight sum_j d_j^2 and stats[n] = (||a_S||, ||a_T||, sum_j u_j d_j)."""
    n = tl.program_id(0)
    j = tl.arange(0, BLOCK)
    a_s_ptr = maps_ptr + n.to(tl.int64) * HW
    a_t_ptr = maps_ptr + (N + n).to(tl.int64) * HW
    ss = tl.zeros([BLOCK], tl.float32)
    st = tl.zeros([BLOCK], tl.float32)
    for j0 in range(0, HW, BLOCK):
        a_s = tl.load(a_s_ptr + j0 + j, mask=j < HW - j0, other=0.0)
        a_t = tl.load(a_t_ptr + j0 + j, mask=j < HW - j0, other=0.0)
        ss += a_s * a_s
        st += a_t * a_t
    norm_s = tl.maximum(tl.sqrt(tl.sum(ss, 0)), eps)
    norm_t = tl.maximum(tl.sqrt(tl.sum(st, 0)), eps)
    dd = tl.zeros([BLOCK], tl.float32)
    ud = tl.zeros([BLOCK], tl.float32)
    for j0 in range(0, HW, BLOCK):
        u = tl.load(a_s_ptr + j0 + j, mask=j < HW - j0, other=0.0) / norm_s
        d = u - tl.load(a_t_ptr + j0 + j, mask=j < HW - j0, other=0.0) / norm_t
        dd += d * d
        ud += u * d
    w = weight
    if HAS_W:  # the weight tensor's value, read on the device
        w = w * tl.load(w_ptr)
    tl.store(loss_ptr + n, w * tl.sum(dd, 0))
    tl.store(stats_ptr + 3 * n, norm_s)
    tl.store(stats_ptr + 3 * n + 1, norm_t)
    tl.store(stats_ptr + 3 * n + 2, tl.sum(ud, 0))


@triton.jit
def _attention_grad_kernel(x_ptr, maps_ptr, stats_ptr, grad_ptr, N, C, HW, tiles, p, grad_scale, weight, w_ptr,
                           SQUARE: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_J: tl.constexpr, HAS_W: tl.constexpr):
    """d loss / d F_S for BLOCK_J positions of one sample: (d loss / d a_S[j]) (p / C) |F|^(p-1) sign(F), with
    d loss / d a_S = 2 (d - u sum_k u_k d_k) / ||a_S||; times the weight and grad_scale."""
    pid = tl.program_id(0)
    n = pid // tiles
    j = (pid % tiles) * BLOCK_J + tl.arange(0, BLOCK_J)
    c = tl.arange(0, BLOCK_C)
    norm_s = tl.load(stats_ptr + 3 * n)
    norm_t = tl.load(stats_ptr + 3 * n + 1)
    ud = tl.load(stats_ptr + 3 * n + 2)
    u = tl.load(maps_ptr + n.to(tl.int64) * HW + j, mask=j < HW, other=0.0) / norm_s
    d = u - tl.load(maps_ptr + (N + n).to(tl.int64) * HW + j, mask=j < HW, other=0.0) / norm_t
    w = weight * grad_scale
    if HAS_W:
        w = w * tl.load(w_ptr)
    g_a = 2.0 * (d - u * ud) / norm_s * (w * p / C)  # d loss / d a_S, times p / C and the weights
    offsets = n.to(tl.int64) * C * HW + c[:, None] * HW + j[None, :]
    x_ptrs, g_ptrs = x_ptr + offsets, grad_ptr + offsets
    for c0 in tl.range(0, C, BLOCK_C, num_stages=3):  # the next tiles' loads issued ahead (cp.async)
        mask = (c[:, None] < C - c0) & (j[None, :] < HW)
        x = tl.load(x_ptrs, mask=mask, other=0.0).to(tl.float32)
        if SQUARE:  # p |x|^(p-1) sign(x) = 2 x, the 2 already in g_a's p
            dx = x
        else:  # |x|^(p-1) sign(x): at x = 0, 0 for p > 1 and NaN (inf * 0) for p < 1, as the reference
            dx = _pow(tl.abs(x), p - 1.0) * tl.where(x > 0, 1.0, tl.where(x < 0, -1.0, 0.0))
        tl.store(g_ptrs, (g_a[None, :] * dx).to(grad_ptr.dtype.element_ty), mask=mask)
        x_ptrs += BLOCK_C * HW
        g_ptrs += BLOCK_C * HW


@triton.jit
def _apply_upstream_kernel(g_ptr, f_ptr, n, BLOCK: tl.constexpr):
    f = tl.load(f_ptr)  # read on the device: no host synchronisation
    if f != 1.0:  # the usual upstream gradient 1: no pass over memory
        i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        g = tl.load(g_ptr + i, mask=i < n)
        tl.store(g_ptr + i, (g.to(tl.float32) * f).to(g_ptr.dtype.element_ty), mask=i < n)


def _weight_pointer(weight_tensor: torch.Tensor | None, placeholder: torch.Tensor) -> torch.Tensor:
    """The weight tensor (one float32 value on the inputs' device), or a placeholder the kernel never reads."""
    if weight_tensor is None:
        return placeholder
    if weight_tensor.numel() != 1 or weight_tensor.dtype != torch.float32 or weight_tensor.device != placeholder.device:
        raise ValueError("weight_tensor must hold one float32 value on the inputs' device")
    return weight_tensor


def apply_upstream_(grad: torch.Tensor, factor: torch.Tensor) -> None:
    """``grad *= factor`` in place unless ``factor`` (one value on the GPU) is 1, decided on the device."""
    n = grad.numel()
    if n:
        _apply_upstream_kernel[(triton.cdiv(n, 1024),)](grad, factor.reshape(()).to(torch.float32), n, BLOCK=1024)


def _check(op: str, x: torch.Tensor, other: torch.Tensor, reduction: int) -> None:
    """The CUDA ops' refusals: a reduction code other than 0, 1, 2; float64 (which the routed losses send to the
    reference: the kernels compute in float32); student and teacher of different dtypes or devices."""
    if reduction not in (0, 1, 2):
        raise ValueError(f"{op}: reduction must be 0 (none), 1 (mean) or 2 (sum), got {reduction}")
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"{op}: the Triton kernels take float32, float16 or bfloat16, got {x.dtype}")
    if other.dtype != x.dtype or other.device != x.device:
        raise ValueError(f"{op}: student and teacher must share dtype and device, got {x.dtype} on {x.device} and "
                         f"{other.dtype} on {other.device}")


def _reduce(loss: torch.Tensor, reduction: int) -> torch.Tensor:
    return loss.mean() if reduction == 1 else loss.sum() if reduction == 2 else loss


def _kl_launch(samples: int, classes: int, positions: int, rows_layout: bool, element_size: int) -> dict:
    """How :func:`_kl_kernel` is launched for logits ``[samples, classes, positions]`` read as rows (class axis
    innermost: ``samples * positions`` rows) or with the positions innermost: its integer arguments (``k_units``,
    ``p_units``, ``tiles``: the programs per sample or in all), ``programs`` (the grid), its tile constants and
    compile options. A program holds at most :data:`TILE` logits of each input: all K classes at once when they
    fit, else chunks of them streamed twice."""
    rows = samples * positions if rows_layout else positions
    block_k = triton.next_power_of_2(classes)
    if rows_layout:  # class axis innermost: whole rows, several when they are short
        if block_k <= TILE:
            block_r = min(max(1, ROW_TILE // block_k), triton.next_power_of_2(rows))
        else:
            block_r, block_k = 1, TILE
    else:  # neighbouring positions together, so that a warp's loads are contiguous
        block_r = min(COLUMN_POSITIONS, triton.next_power_of_2(rows))
        block_k = min(block_k, max(1, TILE // block_r))
    pack = 16 // element_size  # values in a 16-byte load; the contiguous extent's share of it
    k_unit, p_unit = (math.gcd(classes, pack), 1) if rows_layout else (1, math.gcd(rows, pack))
    warps = 8 if block_r * block_k >= 4096 else 4
    one_pass = block_k >= classes
    tiles = triton.cdiv(rows, block_r)
    return {"k_units": classes // k_unit, "p_units": rows // p_unit, "tiles": tiles,
            "programs": tiles if rows_layout else samples * tiles,
            "constexprs": {"ROWS": rows_layout, "BLOCK_R": block_r, "BLOCK_K": block_k, "ONE_PASS": one_pass,
                           "K_UNIT": k_unit, "P_UNIT": p_unit},
            # a whole 4,096-logit tile in registers: at most 128 a thread keeps two programs of 8 warps on an SM
            # (Triton 3.8 took 141 in bfloat16, one program; no spills at 128)
            "options": {"num_warps": warps, "maxnreg": 128 if one_pass and warps == 8 else None}}


def _attention_launch(hw: int) -> dict:
    """The tiles of the attention kernels for ``hw`` positions a sample: ``block_j`` positions a program of the
    maps and gradient kernels, ``tiles`` such programs a sample, ``stats_block`` positions the stats kernel reads
    at once."""
    block_j = min(AT_POSITIONS, triton.next_power_of_2(hw))
    return {"block_j": block_j, "tiles": triton.cdiv(hw, block_j),
            "stats_block": min(AT_STATS_BLOCK, triton.next_power_of_2(hw))}


def kl_fused(student: torch.Tensor, teacher: torch.Tensor, temperature: float, reverse: bool, reduction: int = 0,
             weight: float = 1.0, weight_tensor: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`kdlab.kernels.reference.kl_fused` on Triton: logits ``[N, K, *spatial]`` (float32, float16 or bfloat16;
    any K >= 2); returns the float32 loss (per position ``[N, *spatial]``, or reduced) and the gradient
    (``student.dtype``, in :func:`~kdlab.kernels.reference.kl_grad_format`). Both channels-last: read in place, the
    class axis innermost."""
    if student.shape != teacher.shape or student.dim() < 2 or student.shape[1] < 2:
        raise ValueError(f"kl_fused: expected logits [N, K, *spatial] of one shape with K >= 2, got "
                         f"{tuple(student.shape)} and {tuple(teacher.shape)}")
    _check("kl_fused", student, teacher, reduction)
    n, k = student.shape[:2]
    spatial = tuple(student.shape[2:])
    positions = math.prod(spatial)
    fmt = reference.kl_grad_format(student, teacher)
    rows_layout = positions == 1 or fmt == torch.channels_last
    s, t = student.contiguous(memory_format=fmt), teacher.contiguous(memory_format=fmt)
    loss = torch.empty((n, *spatial), dtype=torch.float32, device=s.device)
    grad = torch.empty_like(s)  # the layout of s
    count = loss.numel()
    if count:
        if not rows_layout and k * positions >= 2 ** 31:
            raise ValueError(f"kl_fused: the Triton kernel takes at most 2^31 logits per sample, got K={k} x {positions}")
        launch = _kl_launch(n, k, positions, rows_layout, s.element_size())
        _kl_kernel[(launch["programs"],)](
            s, t, loss, grad, launch["k_units"], launch["p_units"], launch["tiles"], float(temperature),
            1.0 / count if reduction == 1 else 1.0, float(weight), _weight_pointer(weight_tensor, loss),
            REVERSE=bool(reverse), HAS_W=weight_tensor is not None, **launch["options"], **launch["constexprs"])
    return _reduce(loss, reduction), grad


def attention_fused(student: torch.Tensor, teacher: torch.Tensor, p: float = 2.0, reduction: int = 0,
                    weight: float = 1.0, weight_tensor: torch.Tensor | None = None, eps: float = 1e-12
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`kdlab.kernels.reference.attention_fused` on Triton: features ``[N, C_S, H, W]`` and
    ``[N, C_T, H, W]``; returns the float32 loss (per sample ``[N]``, or reduced) and the gradient. Three
    launches, as the CUDA op: the maps, each sample's norms and loss, the gradient."""
    if student.dim() != 4 or teacher.dim() != 4 or student.shape[0] != teacher.shape[0] \
            or student.shape[2:] != teacher.shape[2:]:
        raise ValueError(f"attention_fused: expected features [N, C, H, W] with the same N, H, W, got "
                         f"{tuple(student.shape)} and {tuple(teacher.shape)}")
    _check("attention_fused", student, teacher, reduction)
    n, cs, h, w = student.shape
    ct, hw = teacher.shape[1], h * w
    s, t = student.contiguous(), teacher.contiguous()
    loss = torch.empty(n, dtype=torch.float32, device=s.device)
    grad = torch.empty_like(s)
    if s.numel() == 0:  # no samples, channels or positions: nothing to compare
        return _reduce(loss.zero_(), reduction), grad
    if AT_CHANNELS * hw >= 2 ** 31:
        raise ValueError(f"attention_fused: the Triton kernels take H W < 2^26, got {hw}")
    maps = torch.empty((2, n, hw), dtype=torch.float32, device=s.device)  # a_S, then a_T
    stats = torch.empty((n, 3), dtype=torch.float32, device=s.device)
    launch = _attention_launch(hw)
    block_j, tiles = launch["block_j"], launch["tiles"]
    square, w_ptr = p == 2.0, _weight_pointer(weight_tensor, loss)
    _attention_maps_kernel[(2 * n * tiles,)](s, t, maps, n, cs, ct, hw, tiles, float(p), SQUARE=square,
                                             BLOCK_C=AT_CHANNELS, BLOCK_J=block_j)
    _attention_stats_kernel[(n,)](maps, loss, stats, n, hw, eps, float(weight), w_ptr,
                                  BLOCK=launch["stats_block"], HAS_W=weight_tensor is not None)
    _attention_grad_kernel[(n * tiles,)](s, maps, stats, grad, n, cs, hw, tiles, float(p),
                                         1.0 / n if reduction == 1 else 1.0, float(weight), w_ptr, SQUARE=square,
                                         BLOCK_C=AT_CHANNELS, BLOCK_J=block_j, HAS_W=weight_tensor is not None)
    return _reduce(loss, reduction), grad


def too_old() -> str | None:
    """Why this Triton cannot run these kernels, or None: one older than :data:`kdlab.kernels.build.TRITON_OLDEST`."""
    from .build import triton_too_old

    return triton_too_old(triton.__version__)


def interpreter_problem() -> str | None:
    """Why Triton's CPU interpreter cannot run these kernels here, or None: :func:`too_old`, or Triton 3.6's
    interpreter (PyTorch 2.11's) with NumPy 2.4: it converts a scalar with ``int()`` on a one-element array,
    which NumPy 2.4 refuses (a TypeError at the first loop); Triton 3.7 fixed it. Compiled kernels on a GPU are
    not affected by the second."""
    import numpy

    from .build import major_minor

    if old := too_old():
        return old
    if major_minor(triton.__version__) < (3, 7) and major_minor(numpy.__version__) >= (2, 4):
        return (f"Triton {triton.__version__}'s interpreter cannot run with NumPy {numpy.__version__} (fixed in "
                "Triton 3.7): pip install 'numpy<2.4' for the CPU check")
    return None


def check_against_reference(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> dict:
    """Largest errors of :func:`kl_fused` (per position) against the float64 reference, for both directions:
    ``{"forward": {"loss_max_rel_error", "grad_max_error"}, "reverse": {...}}`` (notebook 07)."""
    out = {}
    for reverse in (False, True):
        loss, grad = kl_fused(student, teacher, temperature, reverse, 0)
        ref_loss, ref_grad = reference.kl_fused(student.double(), teacher.double(), temperature, reverse, 0)
        out["reverse" if reverse else "forward"] = {
            "loss_max_rel_error": ((loss.double() - ref_loss).abs().max() / ref_loss.abs().max()).item(),
            "grad_max_error": (grad.double() - ref_grad).abs().max().item()}
    return out
