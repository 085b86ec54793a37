"""Run by tests/test_distributed.py under ``torchrun``: several ``kdlab fit`` runs in one job (one launch,
one process group); with ``fail``, a job whose rank 1 raises at its second step (``die``: exits there at once,
status 7, as a crashed or killed process would, while rank 0 waits in that step's collectives; ``die-slow-report
MARKER``: rank 0 raises at its second step and takes 3 s to write its error file, creating MARKER as the write
starts, and rank 1 exits with status 7 once MARKER exists, so torchrun's SIGTERM reaches rank 0 during the write);
with ``rank1-lacks-data``, ``kdlab fit`` (its command line) where rank 1 finds no data folder."""
import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

from kdlab import distributed, fit
from kdlab.engine import Trainer, TrainConfig


def failing_job(mode: str, marker: Path | None = None) -> None:
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = Trainer(TrainConfig(steps=5, batch_size=4, lr=0.1, progress=False), modules={"m": model},
                      optimizers={"o": opt}, run={"kind": "test"}, distributed=True)

    def step(s, g):
        if mode == "die-slow-report" and s == 1:
            if trainer.world.rank == 0:
                raise RuntimeError("rank 0 fails on purpose at step 1")
            while not marker.exists():  # rank 0 is writing its error file
                time.sleep(0.01)
            os._exit(7)
        if trainer.world.rank == 1 and s == 1:
            if mode == "die":
                os._exit(7)  # no exception, no clean-up: the process is gone
            raise RuntimeError("rank 1 fails on purpose at step 1")
        loss = trainer.net("m")(trainer.shard(torch.randn(4, 2, generator=g))).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        return {"loss": loss.detach()}

    trainer.fit(step)


def slow_json_dump(marker: Path) -> None:
    """From now on ``json.dump`` creates ``marker``, then waits 3 s before it writes: torch's error handler opens
    the error file, then calls it."""
    dump = json.dump

    def slow(*args, **kwargs):
        marker.touch()
        time.sleep(3)
        dump(*args, **kwargs)

    json.dump = slow


@distributed.record
def main() -> None:
    if sys.argv[1] in ("fail", "die", "die-slow-report"):
        marker = Path(sys.argv[2]) if sys.argv[1] == "die-slow-report" else None
        try:
            failing_job(sys.argv[1], marker)
        except Exception:
            if marker is not None:
                slow_json_dump(marker)
            raise
        return
    if sys.argv[1] == "rank1-lacks-data":
        if os.environ["RANK"] == "1":
            os.environ["KDLAB_DATA"] = "/nonexistent-kdlab-data"
        parser = argparse.ArgumentParser()
        fit.add_arguments(parser)
        sys.exit(fit.main(parser.parse_args(sys.argv[2:])))
    parser = argparse.ArgumentParser()
    fit.add_arguments(parser)
    for command in " ".join(sys.argv[1:]).split(" ; "):  # runs separated by " ; "
        fit.fit(parser.parse_args(command.split()))
    distributed.leave()


if __name__ == "__main__":
    main()
