"""Read the Triton kernels' machine code without a GPU: Triton compiles them for sm_90 here (its own ptxas), and
this prints registers, spills, shared memory, instructions, loads in flight (register loads, and the asynchronous
copies of pipelined loops) and load widths for the plan each benchmark shape gets, as the Triton table in
kdlab/kernels/README.md.

    python tools/triton_sass.py

The same measures as tools/kernel_sass.py (whose helpers read the SASS) for kdlab/kernels/triton_ops.py: the
launch plans come from triton_ops itself (``_kl_launch``, ``_attention_launch``), and the arguments are
specialised as Triton specialises them at run time for those shapes (pointers and integers divisible by 16 marked).
"""
from __future__ import annotations

import math
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kernel_sass import GPUS, _cuobjdump, blocks_per_sm, instructions, load_widths, loads_in_flight  # noqa: E402

ARCH = 90
# (label, logits shape, channels-last) of kdlab.bench's KL rows; reverse at the first
KL_CASES = [("[256, 256, 32, 32]", (256, 256, 32, 32), False), ("[64, 256, 28, 28]", (64, 256, 28, 28), False),
            ("[64, 256, 28, 28] channels-last", (64, 256, 28, 28), True), ("[65536, 10]", (65536, 10), False),
            ("[4096, 1024]", (4096, 1024), False), ("[512, 32768]", (512, 32768), False),
            ("[256, 1000] (not a benchmark shape)", (256, 1000), False)]
AT_CASE = ((128, 64, 32, 32), (128, 256, 32, 32))
DTYPES = ("fp32", "bf16")


def _compile(fn, args: dict, constexprs: dict, num_warps: int, maxnreg: int | None = None):
    """Triton's compiled kernel for sm_90: ``args`` maps each runtime argument to ``(type, value)`` (value None for
    pointers, which torch allocates 16-byte aligned); integers divisible by 16 are marked so, as at run time."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    names = list(fn.arg_names)
    signature = {name: (args[name][0] if name in args else "constexpr") for name in names}
    attrs = {(names.index(name),): [["tt.divisibility", 16]] for name, (kind, value) in args.items()
             if kind.startswith("*") or (kind == "i32" and value % 16 == 0)}
    source = ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
    options = {"num_warps": num_warps} | ({"maxnreg": maxnreg} if maxnreg else {})
    return triton.compile(source, target=GPUTarget("cuda", ARCH, 32), options=options)


def _read(kernel) -> dict:
    """Registers, spill bytes and the SASS of a compiled kernel (cuobjdump on its cubin)."""
    import re

    with tempfile.TemporaryDirectory() as folder:
        cubin = Path(folder) / "kernel.cubin"
        cubin.write_bytes(kernel.asm["cubin"])
        usage = subprocess.run([_cuobjdump(), "-res-usage", str(cubin)], capture_output=True, text=True, check=True).stdout
        listing = subprocess.run([_cuobjdump(), "-sass", str(cubin)], capture_output=True, text=True, check=True).stdout
    registers = int(re.search(r"REG:(\d+)", usage).group(1))
    spills = int(re.search(r"LOCAL:(\d+)", usage).group(1))
    sass = re.findall(r"/\*[0-9a-f]{4,}\*/\s+(.*?);", listing)
    return {"registers": registers, "spill_bytes": spills, "shared": kernel.metadata.shared,
            "threads": 32 * kernel.metadata.num_warps, "sass": sass}


def kl_plans(cases=KL_CASES, dtypes=DTYPES):
    """``(label, dtype, plan, compiled kernel)`` for each benchmark KL shape and dtype (and the reverse
    direction at the first shape), with the plan triton_ops.kl_fused chooses."""
    from kdlab.kernels import triton_ops

    out = []
    for dtype in dtypes:
        for i, (label, shape, channels_last) in enumerate(cases):
            n, k, positions = shape[0], shape[1], math.prod(shape[2:])
            launch = triton_ops._kl_launch(n, k, positions, positions == 1 or channels_last, 2 if dtype == "bf16" else 4)
            c = launch["constexprs"]
            for reverse in (False, True) if i == 0 else (False,):
                args = {"s_ptr": ("*" + dtype, None), "t_ptr": ("*" + dtype, None), "loss_ptr": ("*fp32", None),
                        "grad_ptr": ("*" + dtype, None), "k_units": ("i32", launch["k_units"]),
                        "p_units": ("i32", launch["p_units"]), "tiles": ("i32", launch["tiles"]),
                        "temperature": ("fp32", None), "grad_scale": ("fp32", None), "weight": ("fp32", None),
                        "w_ptr": ("*fp32", None)}
                options = launch["options"]
                plan = (f"{c['BLOCK_R']} x {c['BLOCK_K']}{'' if c['ONE_PASS'] else ' streamed'}, "
                        f"{options['num_warps']} warps" + (f", at most {options['maxnreg']} registers"
                                                           if options["maxnreg"] else ""))
                out.append((f"KL {label}{' reverse' if reverse else ''}", dtype, plan,
                            _compile(triton_ops._kl_kernel, args, {**c, "REVERSE": reverse, "HAS_W": False},
                                     options["num_warps"], options["maxnreg"])))
    return out


def attention_plans(dtypes=DTYPES):
    """``(label, dtype, plan, compiled kernel)`` for the three attention kernels at the benchmark shape (p = 2)."""
    from kdlab.kernels import triton_ops

    (n, cs, h, w), ct = AT_CASE[0], AT_CASE[1][1]
    hw = h * w
    launch = triton_ops._attention_launch(hw)
    block_j, tiles = launch["block_j"], launch["tiles"]
    tile = {"SQUARE": True, "BLOCK_C": triton_ops.AT_CHANNELS, "BLOCK_J": block_j}
    plan = f"{triton_ops.AT_CHANNELS} x {block_j}, 4 warps"
    out = []
    for dtype in dtypes:
        x = "*" + dtype
        maps = {"s_ptr": (x, None), "t_ptr": (x, None), "maps_ptr": ("*fp32", None), "N": ("i32", n), "CS": ("i32", cs),
                "CT": ("i32", ct), "HW": ("i32", hw), "tiles": ("i32", tiles), "p": ("fp32", None)}
        grad = {"x_ptr": (x, None), "maps_ptr": ("*fp32", None), "stats_ptr": ("*fp32", None), "grad_ptr": (x, None),
                "N": ("i32", n), "C": ("i32", cs), "HW": ("i32", hw), "tiles": ("i32", tiles), "p": ("fp32", None),
                "grad_scale": ("fp32", None), "weight": ("fp32", None), "w_ptr": ("*fp32", None)}
        out.append(("attention maps", dtype, plan, _compile(triton_ops._attention_maps_kernel, maps, tile, 4)))
        out.append(("attention gradient", dtype, plan,
                    _compile(triton_ops._attention_grad_kernel, grad, {**tile, "HAS_W": False}, 4)))
    stats = {"maps_ptr": ("*fp32", None), "loss_ptr": ("*fp32", None), "stats_ptr": ("*fp32", None), "N": ("i32", n),
             "HW": ("i32", hw), "eps": ("fp32", None), "weight": ("fp32", None), "w_ptr": ("*fp32", None)}
    block = launch["stats_block"]
    out.append(("attention stats", "fp32", f"{block}, 4 warps",
                _compile(triton_ops._attention_stats_kernel, stats, {"BLOCK": block, "HAS_W": False}, 4)))
    return out


def async_copies(sass: list[str]) -> int:
    """Global-to-shared asynchronous copies (``LDGSTS``, cp.async) in the SASS: Triton's software pipeline of a
    ``tl.range(..., num_stages=3)`` loop, whose next chunks' loads are in flight while one is used."""
    return sum(1 for i in sass if "LDGSTS" in i)


def rows() -> list[dict]:
    """One dict per compiled kernel: label, dtype, plan and the measures of :func:`_read` (``sass`` included)."""
    return [{"label": label, "dtype": dtype, "plan": plan, **_read(kernel)}
            for label, dtype, plan, kernel in kl_plans() + attention_plans()]


def main() -> int:
    h100 = GPUS["H100"]
    print(f"| kernel (benchmark shape) | dtype | tile (program), warps | registers (sm_{ARCH}) | spill bytes | "
          f"shared memory | instructions | loads in flight per thread | asynchronous copies | load widths | "
          f"blocks per SM (H100) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows():
        print(f"| {r['label']} | {r['dtype']} | {r['plan']} | {r['registers']} | {r['spill_bytes']} | {r['shared']} B | "
              f"{instructions(r['sass']):,} | {loads_in_flight(r['sass'])} | {async_copies(r['sass'])} | "
              f"{load_widths(r['sass'])} | "
              f"{blocks_per_sm(r['registers'], r['threads'], r['shared'], h100)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
