import os

import pytest
import torch

os.environ.setdefault("MPLBACKEND", "Agg")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def mnist5k_train():
    import kdlab as kd

    return kd.data.as_tensors(kd.data.load("mnist5k", "train"))
