"""Run by tests/test_distributed.py under ``torchrun``: several ``kdlab fit`` runs in one job (one launch,
one process group); with ``fail``, a job whose rank 1 raises at its second step (``die``: exits there at once,
status 7, as a crashed or killed process would, while rank 0 waits in that step's collectives); with ``rank1-lacks-data``,
``kdlab fit`` (its command line) where rank 1 finds no data folder."""
import argparse
import os
import sys

import torch
from torch.distributed.elastic.multiprocessing.errors import record

from kdlab import distributed, fit
from kdlab.engine import Trainer, TrainConfig


def failing_job(die: bool) -> None:
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = Trainer(TrainConfig(steps=5, batch_size=4, lr=0.1, progress=False), modules={"m": model},
                      optimizers={"o": opt}, run={"kind": "test"}, distributed=True)

    def step(s, g):
        if trainer.world.rank == 1 and s == 1:
            if die:
                os._exit(7)  # no exception, no clean-up: the process is gone
            raise RuntimeError("rank 1 fails on purpose at step 1")
        loss = trainer.net("m")(trainer.shard(torch.randn(4, 2, generator=g))).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        return {"loss": loss.detach()}

    trainer.fit(step)


@record
def main() -> None:
    if sys.argv[1:] in (["fail"], ["die"]):
        failing_job(die=sys.argv[1] == "die")
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
