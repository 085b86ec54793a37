"""Read the fused kernels' machine code without a GPU: registers, spills, instructions, loads in flight, load
width and blocks per SM, for each launch path, as the table in kdlab/kernels/README.md.

    CUDA_HOME=/usr/local/cuda python tools/kernel_sass.py [--archs 90 86 75] [--out DIR]

Compiles kl.cu, attention.cu and scale.cu to cubins with nvcc (``-O3``, the flags
``torch.utils.cpp_extension`` uses), reads ``ptxas -v`` and the SASS from ``cuobjdump -sass`` (CUDA's own,
or the copy Triton bundles). "Loads in flight" is the most global loads (LDG) a thread has issued and
not yet used, in a straight-line model of its SASS: in-order issue, one instruction per cycle, a load's
registers ready 600 cycles after issue (branches are ignored, so a loop counts once). "Instructions" counts
the kernel's SASS without the NOP padding: static, so a loop counts once.
"""
from __future__ import annotations

import argparse
import math
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KERNELS = ROOT / "kdlab" / "kernels"
FLAGS = ["-O3", "-std=c++20", "--expt-relaxed-constexpr", "-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__",
         "-D__CUDA_NO_BFLOAT16_CONVERSIONS__", "-D__CUDA_NO_HALF2_OPERATORS__", "-Xptxas", "-v"]
# (max threads, registers, shared memory bytes, max blocks) per SM
GPUS = {"H100": (2048, 65536, 228 * 1024, 32), "RTX 30-40, L4": (1536, 65536, 100 * 1024, 16), "T4": (1024, 65536, 64 * 1024, 16)}
# (label, kernel name with {t} for the dtype and {v} for its 16-byte pack, threads, shared bytes[, dtypes])
COLUMNS_SHARED, ROW_BLOCK_SHARED = 5 * 8 * 32 * 4, 5 * 32 * 4  # SoftmaxStats (5 floats) per warp and lane / per warp
PATHS = [
    ("KL columns, 2 classes/thread (K <= 16)", "void kl_columns_kernel<{t}, false, 2, false>", 256, COLUMNS_SHARED, ("float",)),
    ("KL columns, 8 classes/thread (K <= 64)", "void kl_columns_kernel<{t}, false, 8, false>", 256, COLUMNS_SHARED, ("float",)),
    ("KL columns, 32 classes/thread (K <= 256)", "void kl_columns_kernel<{t}, false, 32, false>", 256, COLUMNS_SHARED),
    ("KL columns, 32 classes/thread, full (K = 96, 128, ..., 256)", "void kl_columns_kernel<{t}, false, 32, true>", 256,
     COLUMNS_SHARED),
    ("KL columns, streaming (K > 256)", "void kl_columns_kernel<{t}, false, 0, false>", 256, COLUMNS_SHARED),
    ("KL rows, G <= 32 threads/row, 16-byte loads", "void kl_rows_kernel<{t}, false, {v}, 4, false>", 256, 0),
    ("KL rows, a block (<= 512) per row, 16-byte loads", "void kl_rows_kernel<{t}, false, {v}, 4, true>", 512,
     ROW_BLOCK_SHARED),
    ("KL rows, streaming, 16-byte loads", "void kl_rows_kernel<{t}, false, {v}, 0, true>", 512, ROW_BLOCK_SHARED),
    ("attention maps", "void attention_maps_kernel<{t}>", 256, 2048),
    ("attention gradient", "void attention_grad_kernel<{t}>", 256, 0),
]


def demangle(name: str) -> str:
    out = subprocess.run(["c++filt", name], capture_output=True, text=True).stdout.strip() or name
    return re.sub(r"\(.*\)$", "", out.replace("kdlab::", "").replace("c10::", ""))


def compile_arch(arch: str, out: Path) -> tuple[dict, dict]:
    """``({kernel: (registers, spill bytes)}, {kernel: SASS instructions})`` for one sm_ARCH."""
    import torch.utils.cpp_extension as ext

    includes = [f"-I{p}" for p in ext.include_paths("cuda")] + [f"-I{sysconfig.get_paths()['include']}"]
    nvcc = shutil.which("nvcc") or str(Path(os.environ.get("CUDA_HOME", "/usr/local/cuda")) / "bin" / "nvcc")
    cuobjdump = _cuobjdump()
    usage, sass = {}, {}
    for source in ("kl.cu", "attention.cu", "scale.cu"):
        cubin = out / f"{Path(source).stem}.sm{arch}.cubin"
        done = subprocess.run([nvcc, "-cubin", *FLAGS, f"-gencode=arch=compute_{arch},code=sm_{arch}", *includes,
                               "-o", str(cubin), str(KERNELS / source)], capture_output=True, text=True)
        if done.returncode:
            sys.exit(f"nvcc failed on {source} for sm_{arch}:\n{done.stderr[-3000:]}")
        current, spill = None, 0
        for line in done.stderr.splitlines():
            if m := re.search(r"Compiling entry function '(\w+)'", line):
                current, spill = demangle(m.group(1)), 0
            elif m := re.search(r"(\d+) bytes spill stores", line):
                spill = int(m.group(1))
            elif (m := re.search(r"Used (\d+) registers", line)) and current:
                usage[current] = (int(m.group(1)), spill)
        listing = subprocess.run([cuobjdump, "-sass", str(cubin)], capture_output=True, text=True, check=True).stdout
        for block in re.split(r"\n\s*Function : ", listing)[1:]:
            sass[demangle(block.split("\n", 1)[0].strip())] = re.findall(r"/\*[0-9a-f]{4,}\*/\s+(.*?);", block)
    return usage, sass


def _cuobjdump() -> str:
    found = shutil.which("cuobjdump") or str(Path(os.environ.get("CUDA_HOME", "/usr/local/cuda")) / "bin" / "cuobjdump")
    if Path(found).exists():
        return found
    try:  # Triton bundles one
        import triton

        bundled = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
        if bundled.exists():
            return str(bundled)
    except ImportError:
        pass
    sys.exit("cuobjdump not found (CUDA's bin folder, or Triton's bundled copy)")


def loads_in_flight(instrs: list[str], latency: int = 600) -> int:
    """The most LDGs issued and not yet complete at once, in the straight-line model of the docstring."""
    ready, clock, pending, best = {}, 0, [], 0
    for ins in instrs:
        op, _, args = re.sub(r"^@!?U?P\w+\s+", "", ins).partition(" ")
        regs = [int(r) for r in re.findall(r"\bR(\d+)\b", args)]
        writes = not op.startswith(("ST", "BRA", "EXIT", "RET", "CALL", "BAR"))
        sources = regs[1:] if writes else regs
        clock = max([clock] + [ready.get(r, 0) for r in sources]) + 1
        pending = [c for c in pending if c > clock]
        if op.startswith("LDG") and not op.startswith(("LDGSTS", "LDGDEPBAR")):  # not Triton's asynchronous copies
            width = 4 if ".128" in op else 2 if ".64" in op else 1
            for r in range(regs[0], regs[0] + width):
                ready[r] = clock + latency
            pending.append(clock + latency)
            best = max(best, len(pending))
        elif regs and writes:
            ready[regs[0]] = clock + 1
    return best


def instructions(instrs: list[str]) -> int:
    """Static SASS instructions, without NOPs (padding)."""
    return sum(1 for i in instrs if not i.startswith("NOP"))


def load_widths(instrs: list[str]) -> str:
    """The widths of the thread's global loads (the weight tensor's float is one of them), e.g. ``2 B, 4 B``."""
    widths = {16 if ".128" in o else 8 if ".64" in o else 2 if ".U16" in o or ".16" in o else 4
              for o in (re.search(r"LDG\S*", i).group(0) for i in instrs if "LDG" in i and "LDGDEPBAR" not in i)}
    return ", ".join(f"{w} B" for w in sorted(widths))


def blocks_per_sm(registers: int, threads: int, shared: int, gpu: tuple) -> int:
    max_threads, max_registers, max_shared, max_blocks = gpu
    per_warp = math.ceil(registers / 8) * 8 * 32  # allocated per warp in units of 256
    by_shared = max_shared // (shared + 1024) if shared else max_blocks  # 1 KB per block reserved
    return min(max_threads // threads, max_registers // (per_warp * (threads // 32)), by_shared, max_blocks)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=["90", "86", "75"],
                        help="compute capabilities (the first one's SASS is read; blocks per SM use each GPU's own)")
    parser.add_argument("--out", help="keep the cubins here (default: a temporary folder)")
    args = parser.parse_args(argv)
    out = Path(args.out or tempfile.mkdtemp(prefix="kdlab-sass-"))
    out.mkdir(parents=True, exist_ok=True)
    usage, sass = {}, None
    for arch in args.archs:
        usage[arch], arch_sass = compile_arch(arch, out)
        sass = sass or arch_sass  # the first architecture's
    archs = " / ".join(f"sm_{a}" for a in args.archs)
    first = f"sm_{args.archs[0]}"
    print(f"| path | dtype | registers ({archs}) | spill bytes | shared memory per block | instructions ({first}) "
          f"| loads in flight per thread ({first}) | load widths | blocks per SM: {' / '.join(GPUS)} |")
    print("|---|---|---|---|---|---|---|---|---|")
    for label, template, threads, shared, *only in PATHS:
        for dtype, pack, short in (("float", 4, "fp32"), ("BFloat16", 8, "bf16")):
            if only and dtype not in only[0]:
                continue
            name = template.format(t=dtype, v=pack)
            regs = [usage[a][name] for a in args.archs]
            # each GPU with its own architecture's registers when given in the order of GPUS (90, 86, 75)
            occupancy = " / ".join(str(blocks_per_sm(regs[min(j, len(regs) - 1)][0], threads, shared, gpu))
                                   for j, gpu in enumerate(GPUS.values()))
            print(f"| {label} | {short} | {' / '.join(str(r) for r, _ in regs)} | {' / '.join(str(s) for _, s in regs)} | "
                  f"{shared} B | {instructions(sass[name]):,} | {loads_in_flight(sass[name])} | {load_widths(sass[name])} | "
                  f"{occupancy} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
