"""Several processes (torchrun + DistributedDataParallel, Gloo on the CPU) against one process.

Tolerance: the two runs add the same numbers in another order (DDP averages the two half-batch
gradients; one process averages over the whole batch), so gradients differ by rounding, about 1e-7
relative. Adam divides each gradient entry by its running RMS, which turns a rounding difference in an
entry near 0 into a visible difference of that entry's step. So the runs are compared by the relative
difference of their weight updates, ||d_2 - d_1|| / ||d_1|| with d = final - initial weights: rounding
gives about 1e-5 (measured 2026-11-30: 1.6e-5 for 3 diffusion steps), while a wrong split of the batch or a
missing gradient average gives order 1. The bound is 1e-3.
"""
from __future__ import annotations

import argparse
import copy
import inspect
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

import kdlab as kd
from kdlab import distributed, fit, losses, models
from kdlab.engine import Trainer, TrainConfig, step_generator
from kdlab.methods import gan

ROOT = Path(__file__).resolve().parent.parent
TORCHRUN = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
JOB = Path(__file__).with_name("distributed_job.py")
STEPS, BATCH = 3, 8
needs_torchrun = pytest.mark.skipif(TORCHRUN is None, reason="torchrun is not installed next to this Python")


def one_thread_env() -> dict[str, str]:
    """This process's environment with one thread per process, no progress bars and no launcher variables."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "KDLAB_PROGRESS": "off"}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID"):
        env.pop(name, None)
    return env


def torchrun(*args: str, timeout: float = 240, processes: int = 2) -> subprocess.CompletedProcess:
    return subprocess.run([TORCHRUN, "--nproc-per-node", str(processes), "--standalone", *args], cwd=ROOT,
                          env=one_thread_env(), capture_output=True, text=True, timeout=timeout)


def fit_args(*argv: str) -> argparse.Namespace:
    """``kdlab fit`` arguments, on the CPU (so the one-process runs compare with the Gloo runs on any host)."""
    parser = argparse.ArgumentParser()
    fit.add_arguments(parser)
    return parser.parse_args([*argv, "--quiet", *([] if "--device" in argv else ["--device", "cpu"])])


def fit_initial_unet() -> dict[str, torch.Tensor]:
    """The initial weights of ``kdlab fit diffusion --seed 0`` on MNIST, rebuilt here."""
    torch.manual_seed(0)
    return {f"model.model.{k}": v for k, v in models.UNet(channels=1, widths=(16, 32, 64), img_size=28).state_dict().items()}


def weights(path: Path) -> dict[str, torch.Tensor]:
    return kd.checkpoints.load_tensors(path)[0]


def relative_update_difference(initial: dict, a: dict, b: dict) -> float:
    """||(b - initial) - (a - initial)|| / ||a - initial|| over the floating-point parameters in ``initial``.
    First checks that ``initial`` is where ``a`` started: its update is small next to the weights."""
    num = den = size = 0.0
    for k, v in initial.items():
        if v.is_floating_point():
            da, db = a[k].double() - v.double(), b[k].double() - v.double()
            num += (da - db).pow(2).sum().item()
            den += da.pow(2).sum().item()
            size += v.double().pow(2).sum().item()
    assert 0 < den < 0.01 * size, "initial is not the weights the run started from"
    return math.sqrt(num / den)


@pytest.fixture(scope="module")
def two_process_runs(tmp_path_factory):
    """One 2-process job: diffusion, distill-gan, gan and pixelcnn for 3 steps, distill-diffusion for 2 steps (resumed
    later; diffusion cannot resume to more steps, its learning-rate schedule depends on the total)."""
    out = tmp_path_factory.mktemp("ddp")
    common = f"--steps {STEPS} --batch-size {BATCH} --quiet --device cpu"
    runs = [f"diffusion --out {out / 'diffusion'} {common}", f"distill-gan --out {out / 'gan'} {common}",
            f"gan --out {out / 'adversarial'} {common}", f"pixelcnn --out {out / 'pixelcnn'} {common}",
            f"distill-diffusion --out {out / 'resume'} --steps 2 --batch-size {BATCH} --quiet --device cpu"]
    done = torchrun(str(JOB), *" ; ".join(runs).split())
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.mark.distributed
@needs_torchrun
def test_two_processes_train_diffusion_like_one(two_process_runs, tmp_path):
    one = fit.fit(fit_args("diffusion", "--out", str(tmp_path), "--steps", str(STEPS), "--batch-size", str(BATCH)))
    two = json.loads((two_process_runs / "diffusion" / "metrics.json").read_text())
    assert two["world_size"] == 2 and one["world_size"] == 1
    a, b = weights(tmp_path / "state.safetensors"), weights(two_process_runs / "diffusion" / "state.safetensors")
    assert relative_update_difference(fit_initial_unet(), a, b) < 1e-3
    # the logged loss is the mean over the processes: the global batch's mean loss
    assert two["final_metrics_mean_of_last_100_steps"]["loss"] == pytest.approx(
        one["final_metrics_mean_of_last_100_steps"]["loss"], rel=1e-5)


@pytest.mark.distributed
@needs_torchrun
def test_two_processes_train_pixelcnn_like_one(two_process_runs, tmp_path):
    fit.fit(fit_args("pixelcnn", "--out", str(tmp_path), "--steps", str(STEPS), "--batch-size", str(BATCH)))
    torch.manual_seed(0)
    initial = {f"model.model.{k}": v for k, v in models.GatedPixelCNN(hidden=32).state_dict().items()}
    a, b = weights(tmp_path / "state.safetensors"), weights(two_process_runs / "pixelcnn" / "state.safetensors")
    assert relative_update_difference(initial, a, b) < 1e-3


@pytest.mark.distributed
@needs_torchrun
def test_two_processes_distill_gan_match_a_per_shard_reference(two_process_runs):
    """The DCGAN student has BatchNorm; PyTorch's SyncBatchNorm needs CUDA, so under Gloo each process
    normalises its own half. Reference, written out here in one process: the student's loss on each half
    separately (per-half BatchNorm statistics), averaged, one Adam step. Parameters are compared (the
    BatchNorm running statistics are rank 0's own, from its half, so they are not)."""
    teacher = kd.checkpoints.load(kd.checkpoints.shipped("gan_teacher")).eval().requires_grad_(False)
    torch.manual_seed(0)
    student = models.Generator(**{**teacher.config, "width": teacher.config["width"] // 2})
    initial = {f"student.model.{k}": v.clone() for k, v in student.named_parameters()}
    opt = torch.optim.Adam(student.parameters(), lr=fit.DEFAULTS["distill-gan"][1], betas=gan.DCGAN_BETAS)
    for s in range(STEPS):
        z = student.sample_noise(BATCH, step_generator(0, s))
        halves = z.chunk(2)
        loss = sum(losses.output_distillation(student(h), teacher(h), "mse") for h in halves) / 2
        opt.zero_grad()
        loss.backward()
        opt.step()
    reference = {f"student.model.{k}": v.detach() for k, v in student.named_parameters()}
    two = weights(two_process_runs / "gan" / "state.safetensors")
    assert relative_update_difference(initial, reference, two) < 1e-3


@pytest.mark.distributed
@needs_torchrun
def test_two_processes_train_a_gan_like_a_per_shard_reference(two_process_runs):
    """Both players under DDP (generator and discriminator, two optimisers, the discriminator called three times
    a step). Both have BatchNorm, normalised per process under Gloo, so the reference, written out here in one
    process from kdlab.losses, runs each network on each half separately and, as DDP does, adds the halves'
    gradients (each half's loss / 2, its own backward): the discriminator's step, then the generator's against
    the updated discriminator. Measured 2026-11-30: 5e-7 for both players. Summing the halves' losses in one
    backward instead changes the gradients only by rounding (3e-7 relative at the first step), but Adam's
    normalised first steps and the adversarial game grow that to 1.4e-2 within 3 steps: too close to the
    bound to tell rounding from a bug, so the reference follows DDP's order of additions."""
    images, _ = kd.data.as_tensors(kd.data.load("mnist5k", "train"))
    torch.manual_seed(0)  # kdlab fit's initial weights: generator, then discriminator
    width = fit.WIDTHS["28x28"]["gan"]
    G, D = models.Generator(width=width, img_size=28, channels=1), models.Discriminator(width=width, img_size=28, channels=1)
    named = lambda: {f"{n}.model.{k}": v.detach().clone() for n, m in (("generator", G), ("discriminator", D))  # noqa: E731
                     for k, v in m.named_parameters()}
    initial = named()
    lr = fit.DEFAULTS["gan"][1]
    opt_g, opt_d = (torch.optim.Adam(m.parameters(), lr=lr, betas=gan.DCGAN_BETAS) for m in (G, D))
    for s in range(STEPS):
        g = step_generator(0, s)
        real = images[torch.randint(len(images), (BATCH,), generator=g)]  # train_gan's draws, in its order
        z = G.sample_noise(BATCH, g)
        fakes = [G(h) for h in z.chunk(2)]
        opt_d.zero_grad()
        for r, f in zip(real.chunk(2), fakes):
            (losses.discriminator_loss(D(r), D(f.detach())) / 2).backward()
        opt_d.step()
        opt_g.zero_grad()
        for f in fakes:
            (losses.generator_adversarial(D(f)) / 2).backward()
        opt_g.step()
    two = weights(two_process_runs / "adversarial" / "state.safetensors")
    for player in ("generator", "discriminator"):  # each player's update on its own: a missed all-reduce shows
        pick = lambda d: {k: v for k, v in d.items() if k.startswith(player)}  # noqa: E731
        assert relative_update_difference(pick(initial), pick(named()), two) < 1e-3, player


@pytest.mark.distributed
@needs_torchrun
def test_a_two_process_run_resumes_in_one_process(two_process_runs, tmp_path):
    """Progressive distillation, 2 steps on 2 processes, then the same command with 3 steps in one process:
    the same weights as 3 steps in one process."""
    resumed = two_process_runs / "resume"
    for out in (resumed, tmp_path):
        fit.fit(fit_args("distill-diffusion", "--out", str(out), "--steps", str(STEPS), "--batch-size", str(BATCH)))
    teacher = kd.checkpoints.load(kd.checkpoints.shipped("diffusion_teacher"))  # the student starts as its copy
    initial = {f"student.model.{k}": v for k, v in teacher.state_dict().items()}
    a, b = weights(tmp_path / "state.safetensors"), weights(resumed / "state.safetensors")
    assert kd.checkpoints.load_tensors(resumed / "state.safetensors")[1]["step"] == STEPS
    assert relative_update_difference(initial, a, b) < 1e-3


@pytest.mark.distributed
@needs_torchrun
def test_torchrun_with_one_process_trains_in_a_group_of_one_exactly_like_a_plain_process(tmp_path):
    """What one GPU runs before several (and tools/gpu-check's ddp stage with NCCL on one GPU): torchrun with one
    process joins a process group and trains the student through DDP. DDP's all-reduce over one process sums one
    gradient and divides it by 1, so the weights are bit-identical to a plain process's (both with one thread)."""
    args = ["distill-gan", "--steps", str(STEPS), "--batch-size", str(BATCH), "--device", "cpu", "--quiet"]
    done = torchrun("-m", "kdlab", "fit", *args, "--out", str(tmp_path / "torchrun"), processes=1)
    assert done.returncode == 0, done.stderr[-3000:]
    plain = subprocess.run([sys.executable, "-m", "kdlab", "fit", *args, "--out", str(tmp_path / "plain")], cwd=ROOT,
                           env=one_thread_env(), capture_output=True, text=True, timeout=240)
    assert plain.returncode == 0, plain.stderr[-3000:]
    ran = {name: json.loads((tmp_path / name / "metrics.json").read_text()) for name in ("torchrun", "plain")}
    assert (ran["torchrun"]["backend"], ran["plain"]["backend"]) == ("gloo", None)
    assert ran["torchrun"]["world_size"] == ran["plain"]["world_size"] == 1
    a, b = (weights(tmp_path / name / "checkpoint.safetensors") for name in ("torchrun", "plain"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.distributed
@needs_torchrun
def test_ctrl_c_stops_every_process_after_the_same_step_and_saves_it(tmp_path):
    env = one_thread_env()
    job = subprocess.Popen([TORCHRUN, "--nproc-per-node", "2", "--standalone", "-m", "kdlab", "fit", "distill-diffusion",
                            "--out", str(tmp_path), "--steps", "100000", "--batch-size", "4", "--device", "cpu",
                            "--checkpoint-every", "5", "--quiet"], cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    state = tmp_path / "state.safetensors"
    deadline = time.monotonic() + 120
    while not state.exists() and time.monotonic() < deadline and job.poll() is None:
        time.sleep(0.5)
    job.send_signal(signal.SIGINT)  # what Ctrl-C in the terminal sends torchrun
    _, err = job.communicate(timeout=120)
    assert job.returncode != 0
    saved = kd.checkpoints.load_tensors(state)[1]["step"]
    assert saved >= 5
    # rank 0 says where the state is; torchrun may signal twice, so the stop can also come inside a step, whose
    # half-done update is not saved: then the state named is the last one saved, still the one on disk
    said = [line for line in err.splitlines() if line.startswith("kdlab fit: stopped after step")]
    assert len(said) == 1 and f"the training state of step {saved} is in {state}" in said[0], err[-3000:]


@pytest.mark.distributed
@needs_torchrun
def test_a_rank_that_raises_ends_the_job_with_its_error():
    done = torchrun(str(JOB), "fail", timeout=180)
    assert done.returncode != 0
    assert "rank 1 fails on purpose at step 1" in done.stderr + done.stdout
    assert "rank: 1" in done.stderr  # torchrun's summary names the failed rank


@pytest.mark.distributed
@needs_torchrun
def test_a_rank_that_dies_ends_the_job_at_once_naming_it():
    """Rank 1 exits mid-job without a word (as a crash or the kernel's OOM killer would), while rank 0 is in the
    step's collectives: Gloo sees the closed connection and rank 0 fails too, instead of waiting for the
    collective timeout (KDLAB_DIST_TIMEOUT_MIN, 10 minutes); torchrun names rank 1 and its exit status."""
    started = time.monotonic()
    done = torchrun(str(JOB), "die", timeout=180)
    assert done.returncode != 0 and time.monotonic() - started < 60
    assert re.search(r"rank\s*: 1 .*\n\s*exitcode\s*: 7\b", done.stderr), done.stderr[-3000:]  # torchrun's summary


@pytest.mark.distributed
@needs_torchrun
def test_torchruns_sigterm_during_an_error_report_leaves_the_report_whole(tmp_path):
    """When a rank fails, torchrun sends SIGTERM to the others, which are often failing too and writing their error
    files. PyTorch releases that then read those files (2.11 and 2.14 here; 2.4 does not) crashed with a
    JSONDecodeError on a file that was opened but not yet written, instead of printing the summary (a full test
    run hit it once). Here rank 0 fails and takes 3 s to write its report, and rank 1 exits once the write has
    started, so torchrun's SIGTERM always reaches rank 0 during the write: kdlab.distributed.record holds it back
    until the file is whole."""
    done = torchrun(str(JOB), "die-slow-report", str(tmp_path / "writing"), timeout=180)
    assert done.returncode != 0 and "JSONDecodeError" not in done.stderr, done.stderr[-3000:]
    assert re.search(r"rank\s*: 1 .*\n\s*exitcode\s*: 7\b", done.stderr), done.stderr[-3000:]
    from torch.distributed.elastic.multiprocessing.api import SubprocessContext

    if hasattr(SubprocessContext, "_capture_process_failures"):  # a release that reads the stopped ranks' files
        # rank 0, ended by the SIGTERM once its report was written, is listed with that report (its traceback)
        assert re.search(r"rank\s*: 0 .*\n\s*exitcode\s*: -15\b.*\n\s*error_file: \S+\n\s*traceback : Traceback",
                         done.stderr), done.stderr[-3000:]
        assert "rank 0 fails on purpose at step 1" in done.stderr


@pytest.mark.distributed
@needs_torchrun
def test_data_missing_on_one_rank_stops_every_rank_and_rank_0_names_it(tmp_path):
    """A failure only some processes see (a machine without the data) is agreed on before training: every
    rank exits with status 2 at once, and rank 0 prints the failing rank's message."""
    started = time.monotonic()
    done = torchrun(str(JOB), "rank1-lacks-data", "diffusion", "--out", str(tmp_path), "--steps", "2",
                    "--batch-size", "4", "--device", "cpu", "--quiet", timeout=180)
    assert done.returncode != 0 and time.monotonic() - started < 120  # no collective timeout waited out
    said = [line for line in done.stderr.splitlines() if line.startswith("kdlab fit:")]
    assert len(said) == 1, done.stderr[-3000:]
    assert said[0].startswith("kdlab fit: rank 1: --data mnist5k: bundled file /nonexistent-kdlab-data/mnist5k.npz")
    assert not (tmp_path / "state.safetensors").exists()


@pytest.mark.filterwarnings("ignore:Unable to enable fault handler")  # torchrun's @record outside torchrun
def test_a_global_batch_that_does_not_split_stops_every_rank_and_rank_0_says_why(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    for rank in ("0", "1"):  # the check comes before the process group, so each rank can be run alone here
        monkeypatch.setenv("RANK", rank)
        assert fit.main(fit_args("diffusion", "--out", str(tmp_path), "--batch-size", "7")) == 2
        err = capsys.readouterr().err.strip().splitlines()
        said = "kdlab fit: --batch-size 7 (the global batch) is not divisible by the 2 processes; choose a multiple of 2"
        assert err == ([] if rank == "1" else [said])
    assert not any(tmp_path.iterdir())


@pytest.mark.filterwarnings("error::FutureWarning")  # PyTorch 2.14 warns about broadcast_buffers
def test_a_wrapped_network_with_batchnorm_takes_two_forward_passes_before_one_backward(tmp_path):
    """A GAN's discriminator sees the real and the generated images before its loss's backward. With DDP's
    default buffer broadcast before each forward pass, PyTorch 2.11 failed that backward (BatchNorm's running
    statistics, saved for it, overwritten in place); the 2-process GAN run above failed the same way there. Gloo
    with one process (as torchrun with one starts it), the gradient against the unwrapped network's. PyTorch 2.14
    passes with the broadcast too: there this checks that wrap() uses 2.14's option (the old one warns)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(), torch.nn.Linear(144, 1))
    plain = copy.deepcopy(net)
    x, y = torch.randn(4, 1, 8, 8), torch.randn(4, 1, 8, 8)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'group'}", rank=0, world_size=1)
    try:
        wrapped = distributed.wrap(net, distributed.World(rank=0, size=1, launched=True), torch.device("cpu"))
        assert isinstance(wrapped, torch.nn.parallel.DistributedDataParallel)
        (wrapped(x).mean() - wrapped(y).mean()).backward()
    finally:
        distributed.leave()
    (plain(x).mean() - plain(y).mean()).backward()
    for a, b in zip(net.parameters(), plain.parameters()):
        torch.testing.assert_close(a.grad, b.grad)


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="pins threads to one CPU (Linux)")
def test_the_collectives_tensors_are_freed_by_the_calling_thread_so_leaving_the_group_cannot_hang(tmp_path, monkeypatch):
    """A Gloo worker thread lets go of a collective's tensors just after it completes; when Python has dropped
    them first, their Python objects are freed on that thread, under the GIL. PyTorch before 2.8 destroys the
    group holding the GIL and waits for the worker threads: kdlab fit's exit hung on 2.4.1 (4 of 100
    failing-rank jobs). Freed on a worker thread, a tensor's weakref callback runs there. Results dropped at
    once, as a caller may, are the worst case. One Gloo process (the functions are told there are two; the
    collectives are the same)."""
    freed = []  # per watched tensor, whether its Python object was freed on the main thread
    watched = []
    def watch(*tensors):
        main = threading.main_thread()
        watched.extend(weakref.ref(t, lambda _: freed.append(threading.current_thread() is main)) for t in tensors)
    real_reduce, real_gather = dist.all_reduce, dist.all_gather
    monkeypatch.setattr(dist, "all_reduce", lambda t, **kw: (watch(t), real_reduce(t, **kw))[1])
    monkeypatch.setattr(dist, "all_gather", lambda out, t, **kw: (watch(t, *out), real_gather(out, t, **kw))[1])
    monkeypatch.setattr(distributed, "HOLD_SECONDS", 0.3)  # the hold's end is tested too (kdlab holds for 1 s)
    w, cpu = distributed.World(rank=0, size=2), torch.device("cpu")
    cpus = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(cpus)})  # this thread and Gloo's (started next) on one CPU: on two, a worker
    try:  # thread mostly lets go first (0.2% of results freed there without the hold; on one CPU, 15-25%)
        dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'group'}", rank=0, world_size=1)
        try:
            for _ in range(100):
                assert distributed.mean_over_processes({"a": 1.0, "b": 3.0}, w, cpu) == {"a": 0.5, "b": 1.5}  # / 2
                assert distributed.same_over_processes(7, w, cpu)
                assert distributed.first_error(None, w, cpu) is None
                assert distributed.first_error("données absentes", w, cpu) == "données absentes"
            for _ in range(300):
                distributed._all_reduce(torch.ones(2))
                distributed._all_gather(torch.ones(2))
        finally:
            distributed.leave()
    finally:
        os.sched_setaffinity(0, cpus)
    assert not dist.is_initialized()
    n = 100 * (1 + 1 + 2 + 4) + 300 * (1 + 2)
    assert len(watched) == n and len(freed) == n  # each freed once the group is left
    assert all(freed), f"{freed.count(False)} of {n} tensors were freed on a backend thread"


@pytest.mark.parametrize("messages, agreed", [
    ([None, None, None], None),
    (["rank 0's own", None, "later"], "rank 0's own"),
    ([None, "données absentes, a longer message", "x"], "rank 1: données absentes, a longer message"),
    ([None, None, ""], "rank 2: "),
    ([None, "--teacher /tmp/\udcff.safetensors: no such file", None], "rank 1: --teacher /tmp/\udcff.safetensors: no such file"),
])
def test_first_error_gives_the_lowest_failing_ranks_message_whole(monkeypatch, messages, agreed):
    """Rank 0 of three; the other ranks' all-gather contributions are what they send: the UTF-8 length (-1 for
    no error), then the bytes padded to the longest. A path that is not UTF-8 (surrogate escapes) comes back
    unchanged."""
    sent = [None if m is None else m.encode("utf-8", "surrogateescape") for m in messages]
    def all_gather(t):
        if t.dtype == torch.int64:
            assert t.tolist() == [-1 if sent[0] is None else len(sent[0])]
            return [torch.tensor([-1 if b is None else len(b)]) for b in sent]
        assert bytes(t.tolist()).rstrip(b"\0") == (sent[0] or b"").rstrip(b"\0")
        return [torch.tensor(list((b or b"").ljust(len(t), b"\0")), dtype=torch.uint8) for b in sent]
    monkeypatch.setattr(distributed, "_all_gather", all_gather)
    assert distributed.first_error(messages[0], distributed.World(rank=0, size=3), torch.device("cpu")) == agreed


def test_world_reads_the_launcher_environment(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    assert distributed.world() == distributed.World(0, 1, 0) and distributed.world().main
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert distributed.world() == distributed.World(3, 4, 1) and not distributed.world().main
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "kd1")  # what torchrun sets too
    assert distributed.world() == distributed.World(3, 4, 1, launched=True)
    assert not distributed.World().group and distributed.World(0, 1, launched=True).group and distributed.World(0, 2).group
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(ValueError, match="0 <= RANK < WORLD_SIZE"):
        distributed.world()
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(ValueError, match="RANK='x'"):
        distributed.world()


def launch(monkeypatch) -> None:
    """The environment torchrun gives its only process (port 0: a group of one binds any free port)."""
    for name, value in dict(WORLD_SIZE=1, RANK=0, LOCAL_RANK=0, MASTER_ADDR="127.0.0.1", MASTER_PORT=0,
                            TORCHELASTIC_RUN_ID="none").items():
        monkeypatch.setenv(name, str(value))


def test_a_launched_single_process_on_a_gpu_joins_nccl_on_gpu_local_rank(monkeypatch):
    """torchrun with one process on a GPU (tools/gpu-check ddp on one GPU): "cuda" and "auto" are cuda:LOCAL_RANK
    and the group is NCCL's (CUDA and the group are stand-ins here). WORLD_SIZE=1 without TORCHELASTIC_RUN_ID
    (not torchrun: e.g. a cluster container's own variables) stays a plain process."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    joined = []
    monkeypatch.setattr(dist, "init_process_group", lambda backend, **kwargs: joined.append(backend))
    launch(monkeypatch)
    for device in ("cuda", "auto"):
        w, dev = distributed.setup(device)
        assert w.group and dev == torch.device("cuda", 0)
    assert joined == ["nccl", "nccl"]
    monkeypatch.delenv("TORCHELASTIC_RUN_ID")
    w, dev = distributed.setup("cuda")
    assert not w.group and dev == torch.device("cuda") and joined == ["nccl", "nccl"]


def test_a_launched_single_process_trains_through_ddp_and_a_method_without_ddp_stays_plain(monkeypatch):
    """In a Gloo group of one, as torchrun with one process starts it: a distributed method's networks are called
    through DDP; a method that does not use DDP gets a plain trainer, outside the group."""
    launch(monkeypatch)
    config = TrainConfig(steps=1, batch_size=4, device="cpu", progress=False)
    try:
        plain = Trainer(config, modules={"m": torch.nn.Linear(2, 1)}, optimizers={}, run={}, desc="toy")
        assert not plain.world.group and not dist.is_initialized()
        assert isinstance(plain.net("m"), torch.nn.Linear)
        trainer = Trainer(config, modules={"m": torch.nn.Linear(2, 1)}, optimizers={}, run={}, desc="toy",
                          distributed=True)
        assert trainer.world.group and distributed.backend() == "gloo"
        assert isinstance(trainer.net("m"), torch.nn.parallel.DistributedDataParallel)
    finally:
        distributed.leave()


@pytest.mark.filterwarnings("ignore:Unable to enable fault handler")  # torchrun's @record outside torchrun
def test_kdlab_fit_as_torchrun_s_only_process_trains_through_ddp_and_averages_its_metrics(tmp_path, monkeypatch):
    """kdlab fit in a group of one (Gloo), in this process: the student is wrapped in DDP and every step's
    metrics go through the all-reduce, as with several processes."""
    launch(monkeypatch)
    wrapped, reduced = [], []
    real_ddp, real_reduce = torch.nn.parallel.DistributedDataParallel, distributed._all_reduce

    class WatchedDDP(real_ddp):
        def __init__(self, module, *args, **kwargs):
            wrapped.append(type(module).__name__)
            super().__init__(module, *args, **kwargs)

    WatchedDDP.__signature__ = inspect.signature(real_ddp)  # wrap() reads DDP's options from it

    monkeypatch.setattr(torch.nn.parallel, "DistributedDataParallel", WatchedDDP)
    monkeypatch.setattr(distributed, "_all_reduce", lambda t, *a: (reduced.append(t.dtype), real_reduce(t, *a))[1])
    try:
        metrics = fit.fit(fit_args("distill-gan", "--out", str(tmp_path), "--steps", "2", "--batch-size", "4"))
    finally:
        distributed.leave()
    assert (metrics["backend"], metrics["world_size"]) == ("gloo", 1)
    assert wrapped == ["Generator"]  # the student; the frozen teacher is not wrapped
    # the metrics' means (float64): one all-reduce a step, and one more agreeing on a stop after the last save
    assert reduced.count(torch.float64) == 2 + 1


def test_shards_are_the_global_batch_in_order():
    x = torch.arange(24).view(12, 2)
    parts = [distributed.shard(x, distributed.World(r, 3)) for r in range(3)]
    assert torch.equal(torch.cat(parts), x) and all(len(p) == 4 for p in parts)
    assert distributed.shard(x, distributed.World()) is x
    with pytest.raises(ValueError, match="not divisible by the 5 processes"):
        distributed.shard(x, distributed.World(0, 5))


def test_methods_without_several_processes_refuse_them(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    model = torch.nn.Linear(2, 1)
    with pytest.raises(ValueError, match="runs in one process only, but WORLD_SIZE=2"):
        Trainer(TrainConfig(steps=1, batch_size=4), modules={"m": model}, optimizers={}, run={}, desc="toy")
    with pytest.raises(ValueError, match="batch_size=5 .* not divisible by the 2 processes"):
        Trainer(TrainConfig(steps=1, batch_size=5), modules={"m": model}, optimizers={}, run={}, desc="toy",
                distributed=True)


def test_only_rank_0_writes_the_training_state(tmp_path, monkeypatch):
    model = torch.nn.Linear(2, 1)
    trainer = Trainer(TrainConfig(steps=1, batch_size=4, state_path=tmp_path / "state.safetensors"),
                      modules={"m": model}, optimizers={}, run={})
    monkeypatch.setattr(distributed, "barrier", lambda w: None)
    trainer.world = distributed.World(1, 2)
    trainer._save(1)
    assert not (tmp_path / "state.safetensors").exists() and trainer.saved_step == 1
    trainer.world = distributed.World(0, 2)
    trainer._save(1)
    assert (tmp_path / "state.safetensors").exists()


@pytest.mark.filterwarnings("ignore:Unable to enable fault handler")  # torchrun's @record outside torchrun
@pytest.mark.parametrize("argv, message", [
    (["dance", "--out", "x"], "method 'dance' is unknown"),
    (["gan", "--out", "x", "--data", "imagenet"], "--data 'imagenet' is unknown"),
    (["gan", "--out", "x", "--teacher", "t.safetensors"], "--teacher applies to distill-* methods"),
    (["distill-gan", "--out", "x", "--teacher", str(ROOT / "data/checkpoints/diffusion_teacher.safetensors")],
     "is a UNet; distill-gan needs a Generator"),
    (["distill-gan", "--out", "x", "--teacher", "missing.safetensors"], "--teacher missing.safetensors: no such file"),
    (["diffusion", "--out", "x", "--steps", "0"], "--steps 0 is not valid"),
    (["distill-gan", "--out", "x", "--data", "cifar10"], "--data cifar10: dataset 'cifar10' (train) is not in"),
    (["diffusion", "--out", "x", "--device", "gpu"], "--device gpu: device='gpu' is not a device"),
])
def test_fit_names_the_bad_argument(argv, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    if "cifar10" in argv:
        monkeypatch.setenv("KDLAB_DATA", str(tmp_path))  # an empty data folder: cifar10 is not there
    assert fit.main(fit_args(*argv)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("kdlab fit: ") and message in err[0]
    assert not (tmp_path / "x" / "checkpoint.safetensors").exists()


def test_fit_trains_gan_and_diffusion_on_cifar_shaped_data(tmp_path, monkeypatch):
    """CIFAR-10 cannot be downloaded here: 16 random 3x32x32 images stand in for it (same shape and range)."""
    fake = kd.data.ImageTensorDataset(torch.rand(16, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1,
                                      torch.arange(16) % 10, [str(i) for i in range(10)], "cifar10")
    real_load = kd.data.load
    monkeypatch.setattr(kd.data, "load", lambda name, *a, **k: fake if name == "cifar10" else real_load(name, *a, **k))
    for method, cls, config in [("gan", "Generator", {"width": 64, "img_size": 32, "channels": 3}),
                                ("diffusion", "UNet", {"widths": [32, 64, 128], "img_size": 32, "channels": 3})]:
        m = fit.fit(fit_args(method, "--data", "cifar10", "--out", str(tmp_path / method), "--steps", "1", "--batch-size", "4"))
        model = kd.checkpoints.load(tmp_path / method / "checkpoint.safetensors")
        assert m["model"]["class"] == type(model).__name__ == cls
        assert {k: model.config[k] for k in config} == config
    student = fit.fit(fit_args("distill-gan", "--data", "cifar10", "--teacher", str(tmp_path / "gan" / "checkpoint.safetensors"),
                               "--out", str(tmp_path / "student"), "--steps", "1", "--batch-size", "4"))
    assert student["model"]["config"]["width"] == 32
    g = kd.checkpoints.load(tmp_path / "student" / "checkpoint.safetensors")
    assert g(g.sample_noise(2, torch.Generator().manual_seed(0))).shape == (2, 3, 32, 32)
    with pytest.raises(fit.FitError, match="needs --teacher: the shipped teachers are trained on mnist5k"):
        fit.fit(fit_args("distill-diffusion", "--data", "cifar10", "--out", str(tmp_path / "x")))
    with pytest.raises(fit.FitError, match="has 3 channels; kdlab's PixelCNNs model one"):
        fit.fit(fit_args("pixelcnn", "--data", "cifar10", "--out", str(tmp_path / "x")))


def test_bf16_runs_the_trained_network_in_bfloat16_and_keeps_fp32_weights():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 1))
    trainer = Trainer(TrainConfig(steps=1, batch_size=4, precision="bf16", device="cpu"), modules={"m": model},
                      optimizers={}, run={}, distributed=True)
    net = trainer.net("m")
    assert net.module is model
    inside = []
    model[0].register_forward_hook(lambda m, i, o: inside.append(o.dtype))
    out = net(torch.randn(4, 1, 8, 8))
    assert inside == [torch.bfloat16] and out.dtype == torch.float32  # computed in bf16, handed on in fp32 for the loss
    (out - 1).pow(2).mean().backward()
    assert all(p.dtype == p.grad.dtype == torch.float32 for p in model.parameters())
    with pytest.raises(ValueError, match="precision='fp16' is not valid"):
        TrainConfig(precision="fp16")
    with pytest.raises(ValueError, match="toy: precision='bf16' is not supported by this method"):  # not using .net()
        Trainer(TrainConfig(steps=1, batch_size=4, precision="bf16"), modules={"m": model}, optimizers={}, run={},
                desc="toy")


def test_fit_in_bf16_follows_the_fp32_run_to_bfloat16_accuracy(tmp_path):
    """bfloat16 keeps 8 bits of mantissa (relative rounding 2^-9 = 0.2%): after 3 steps the loss agrees to 1% and
    the weight updates differ by more than rounding in float32 would (1e-3) but much less than a different
    update would (order 1; measured 2026-11-30: 0.085 after 5 steps)."""
    runs = {p: fit.fit(fit_args("diffusion", "--out", str(tmp_path / p), "--steps", str(STEPS), "--batch-size", str(BATCH),
                                "--precision", p)) for p in ("fp32", "bf16")}
    loss = {p: m["final_metrics_mean_of_last_100_steps"]["loss"] for p, m in runs.items()}
    assert loss["bf16"] == pytest.approx(loss["fp32"], rel=1e-2)
    diff = relative_update_difference(fit_initial_unet(), weights(tmp_path / "fp32" / "state.safetensors"),
                                      weights(tmp_path / "bf16" / "state.safetensors"))
    assert 1e-3 < diff < 0.3
