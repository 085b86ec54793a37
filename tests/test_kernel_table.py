"""tools/kernel_table.py reads a GPU run's logs (here the committed H200 run of 2026-11-30) into the
README's speed table: its figures are the logs' own (Nsight's 223.46 us for the fp32 KL kernel, the run's
4,223 GB/s copy rate), and a streaming-rows run is reported with the block size it ran at."""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import kernel_table  # noqa: E402

RUN = ROOT / "kdlab" / "kernels" / "bench" / "2026-11-30-h200-3-final"


def test_speed_table_from_the_committed_h200_run():
    bench = kernel_table.json.loads((RUN / "bench.json").read_text())
    lines = kernel_table.speed_table(bench, kernel_table.nsight_runs((RUN / "profile.log").read_text()))
    rows = {line.split(" | ")[1] + " " + line.split(" | ")[2]: line for line in lines[2:]}
    assert len(rows) == len(bench["rows"]) == 16
    # 3 * 256 * 256 * 32 * 32 * 4 bytes in 223.46 us (the every-shape run, not the detailed one's 225.57) = 85% of 4,223 GB/s
    assert "| 223.5 | 85% | 0.448 / 0.777 / 2.427 |" in rows["[256, 256, 32, 32] fp32"]
    assert "| 69.9 (3 launches) | 68% |" in rows["[128, 64, 32, 32] / [128, 256, 32, 32] fp32"]  # maps + stats + grad
    assert "| - | - |" in rows["[64, 32, 28, 28] / [64, 128, 28, 28] fp32"]  # not profiled in that run


def test_streaming_rows_are_listed_by_block_size(tmp_path):
    report = ("==PROF== Connected to process 1\nkl:512,32768:float32: backend cuda, KDLAB_KL_STREAM_THREADS=1024\n"
              "  void kl_rows_kernel<float, 0, 4, 0, 1>(const T1 *, float *, KlArgs) (512, 1, 1)x(1024, 1, 1), Context 1\n"
              "    Duration                         us        80.25\n    DRAM Throughput                   %        61.50\n"
              "    L2 Hit Rate                       %        47.20\n")
    runs = kernel_table.nsight_runs(report)
    assert runs == [[("kl:512,32768:float32", "cuda", "1024", [runs[0][0][3][0]])]]
    assert kernel_table.stream_table(runs)[2] == "| kl:512,32768:float32 | 1024 | 80.2 | 61.5 | 47.2 |"
    assert kernel_table.main([str(tmp_path)]) == 1  # a folder without the logs: a clear message, no traceback


def test_profile_specs_are_the_benchmark_rows():
    """tools/profile_kernels.py's default Nsight specs (tools/gpu-check profile) name exactly the benchmark's rows,
    so every row of the table gets a kernel time."""
    import profile_kernels

    bench = kernel_table.json.loads((RUN / "bench.json").read_text())
    assert sorted(profile_kernels.bench_specs()) == sorted(kernel_table.spec_of(row) for row in bench["rows"])


def test_triton_kernels_are_tabled_apart_from_the_cuda_ones():
    """A run of the Triton kernels under Nsight (KDLAB_KERNELS=triton in tools/gpu-check profile; a Triton kernel's
    name has no parameter list) fills the Triton table and leaves the CUDA table's figures alone."""
    bench = kernel_table.json.loads((RUN / "bench.json").read_text())
    log = (RUN / "profile.log").read_text() + (
        "==PROF== Connected to process 9 (/usr/bin/python3.12)\nkl:256,256,32,32:float32: backend triton\n"
        "  _kl_kernel (16384, 1, 1)x(256, 1, 1), Context 1, Stream 7, Device 0, CC 9.0\n"
        "    Duration                         us       250.00\n"
        "at:128,64,32,32:128,256,32,32:float32: backend triton\n"
        "  _attention_maps_kernel (4096, 1, 1)x(128, 1, 1), Context 1, Stream 7, Device 0, CC 9.0\n"
        "    Duration                         us        50.00\n"
        "  _attention_stats_kernel (128, 1, 1)x(128, 1, 1), Context 1, Stream 7, Device 0, CC 9.0\n"
        "    Duration                         us         5.00\n"
        "  _attention_grad_kernel (2048, 1, 1)x(128, 1, 1), Context 1, Stream 7, Device 0, CC 9.0\n"
        "    Duration                         us        25.00\n")
    runs = kernel_table.nsight_runs(log)
    cuda = {line.split(" | ")[1] + " " + line.split(" | ")[2]: line for line in kernel_table.speed_table(bench, runs)[2:]}
    assert "| 223.5 | 85% |" in cuda["[256, 256, 32, 32] fp32"]  # the CUDA kernel's own time, not Triton's
    triton = {line.split(" | ")[1] + " " + line.split(" | ")[2]: line for line in kernel_table.triton_table(bench, runs)[2:]}
    # 3 * 256 * 256 * 1024 * 4 bytes in 250 us = 3,221 GB/s, 76% of the run's 4,223; beside the CUDA kernel's 223.5 us
    assert "| 250.0 | 76% | 223.5 | 2.209 / 0.448 |" in triton["[256, 256, 32, 32] fp32"]
    assert "| 80.0 | " in triton["[128, 64, 32, 32] / [128, 256, 32, 32] fp32"]  # three launches summed
    assert kernel_table.triton_table(bench, kernel_table.nsight_runs((RUN / "profile.log").read_text())) == []
