import os

import pytest
import torch

os.environ.setdefault("MPLBACKEND", "Agg")
# notebook kernels started by the tests inherit this: no interactive widgets, whose display can stall
# a headless nbclient run (jupyter/nbclient#312); the widget tests switch them back on
os.environ["KDLAB_WIDGETS"] = "0"
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def mnist5k_train():
    import kdlab as kd

    return kd.data.as_tensors(kd.data.load("mnist5k", "train"))
