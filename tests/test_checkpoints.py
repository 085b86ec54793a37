import json
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import kdlab as kd
from kdlab.checkpoints import CheckpointError


@pytest.fixture()
def saved(tmp_path):
    torch.manual_seed(0)
    g = kd.models.Generator(z_dim=8, width=3, depth=2).eval()
    path = kd.checkpoints.save(g, tmp_path / "g.safetensors", dataset="mnist5k", steps=7, seed=3,
                               metrics={"fid": 12.5})
    return g, path


def test_round_trip_rebuilds_model_from_metadata(saved):
    g, path = saved
    loaded = kd.checkpoints.load(path)
    assert type(loaded) is kd.models.Generator and loaded.config == g.config
    z = torch.randn(4, 8)
    with torch.no_grad():
        assert torch.equal(loaded(z), g(z))
    meta = loaded.checkpoint_metadata
    assert meta["steps"] == 7 and meta["seed"] == 3 and meta["metrics"] == {"fid": 12.5}
    assert meta["dataset"] == "mnist5k" and meta["kdlab_version"] == kd.__version__
    assert len(meta["checksum"]["value"]) == 64
    assert [p.name for p in path.parent.iterdir()] == ["g.safetensors"]  # no temporary file left behind


def test_metadata_is_plain_json_in_safetensors_header(saved):
    _, path = saved
    raw = path.read_bytes()
    header = json.loads(raw[8:8 + int.from_bytes(raw[:8], "little")])
    assert json.loads(header["__metadata__"]["kdlab"])["architecture"]["class"] == "Generator"


def test_truncated_file_names_the_file(saved):
    _, path = saved
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="truncated or corrupted") as e:
        kd.checkpoints.load(path)
    assert str(path) in str(e.value)


def test_corrupted_weights_fail_the_checksum(saved):
    _, path = saved
    raw = bytearray(path.read_bytes())
    raw[-5] ^= 0xFF  # flip bits inside the last tensor's data
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        kd.checkpoints.load(path)


def test_mismatched_model_is_refused(saved):
    _, path = saved
    with pytest.raises(CheckpointError, match="shape mismatch|missing tensors") as e:
        kd.checkpoints.load(path, model=kd.models.Generator(z_dim=8, width=4, depth=2))
    assert str(path) in str(e.value)
    with pytest.raises(CheckpointError, match="unexpected tensors"):
        kd.checkpoints.load(path, model=kd.models.Generator(z_dim=8, width=3, depth=1))


def test_foreign_and_missing_files(tmp_path):
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(CheckpointError, match="not a readable kdlab"):
        kd.checkpoints.load(foreign)
    with pytest.raises(CheckpointError, match="file not found"):
        kd.checkpoints.load(tmp_path / "nope.safetensors")
    text = tmp_path / "text.safetensors"
    text.write_text("hello")
    with pytest.raises(CheckpointError):
        kd.checkpoints.load(text)


def test_unknown_architecture_is_refused(tmp_path):
    path = kd.checkpoints.save_tensors(tmp_path / "x.safetensors", {"w": torch.zeros(1)},
                                       {"architecture": {"class": "Transformer", "config": {}}})
    with pytest.raises(CheckpointError, match="Transformer"):
        kd.checkpoints.load(path)


def test_no_pickle_anywhere_in_the_package():
    root = Path(kd.__file__).parent
    # the package, and the tooling and data scripts that moved out of it
    places = [str(root), str(root.parent / "tools"), *map(str, sorted((root.parent / "data").glob("*.py")))]
    out = subprocess.run(["grep", "-rnE", r"torch\.load\(|import pickle|pickle\.load", *places],
                         capture_output=True, text=True).stdout
    assert out == "", out


def test_shipped_checkpoints_verify_and_fit_the_size_budget():
    folder = Path(kd.checkpoints.shipped("gan_teacher")).parent
    files = sorted(folder.glob("*.safetensors"))
    assert {p.stem for p in files} >= {"gan_teacher", "gan_discriminator", "pixelcnn_teacher", "mnist_classifier",
                                       "mnist5k_fid_stats", "texture_teacher"}
    for path in files:
        kd.checkpoints.load_tensors(path)  # checksum and format verified
    assert sum(p.stat().st_size for p in files) < 25e6  # the data/README budget
