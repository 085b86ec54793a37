import itertools

import pytest
import torch
import torch.nn.functional as F

import kdlab as kd
from kdlab.models import Discriminator, GatedPixelCNN, Generator, PixelCNN


@pytest.mark.parametrize("img_size,channels,depth", [(28, 1, 1), (32, 3, 1), (28, 1, 2), (32, 1, 3)])
def test_generator_and_discriminator_shapes(img_size, channels, depth):
    g = Generator(z_dim=16, width=4, img_size=img_size, channels=channels, depth=depth)
    d = Discriminator(width=4, img_size=img_size, channels=channels, depth=depth)
    x = g(torch.randn(5, 16))
    assert x.shape == (5, channels, img_size, img_size)
    assert x.abs().max() < 1  # tanh output
    assert d(x).shape == (5,)


def test_parameter_count_grows_with_width_and_depth():
    counts = [kd.count_parameters(Generator(width=w)) for w in (2, 4, 8, 16, 32)]
    assert counts == sorted(counts) and len(set(counts)) == 5
    assert kd.count_parameters(Generator(width=8, depth=2)) > kd.count_parameters(Generator(width=8))
    # closed form for width=1, z_dim=2, 28x28, one channel:
    # stem convT 2*4*7*7 + BN 2*4; up1 convT 4*2*4*4 + BN 2*2; up2 convT 2*1*4*4 + BN 2*1; head conv 1*1*3*3 + 1
    assert kd.count_parameters(Generator(z_dim=2, width=1)) == 392 + 8 + 128 + 4 + 32 + 2 + 10
    # stem 64*2*7*7 (no bias) + BN 2*2, up1 2*2*4*4 + BN 2*2, up2 2*1*4*4 + BN 2, head 1*1*3*3 + 1
    tiny = Generator(width=1, stem_channels=2)
    assert kd.count_parameters(tiny) == 6272 + 4 + 64 + 4 + 32 + 2 + 10
    assert kd.count_parameters(Generator()) / kd.count_parameters(tiny) > 50  # a student 50x+ smaller than the teacher
    assert tiny(torch.randn(3, 64)).shape == (3, 1, 28, 28) and "stem_channels" not in Generator().config
    with pytest.raises(ValueError, match="stem_channels"):
        Generator(stem_channels=0)


def test_bad_model_arguments_raise():
    with pytest.raises(ValueError, match="img_size=64"):
        Generator(img_size=64)
    with pytest.raises(ValueError, match="width=0"):
        Discriminator(width=0)
    with pytest.raises(ValueError, match=r"shape \[N, 64\]"):
        Generator()(torch.randn(3, 10))
    with pytest.raises(ValueError, match="levels=1"):
        PixelCNN(levels=1)


def test_named_blocks_are_stable():
    names = kd.taps.layer_names(Generator())
    for n in ("stem", "blocks.up1", "blocks.up2", "head"):
        assert n in names
    assert "blocks.up3" in kd.taps.layer_names(Generator(img_size=32))
    assert {"input", "blocks.res1", "head"} <= set(kd.taps.layer_names(PixelCNN(n_blocks=2)))


def _small(cls, levels, hidden, depth, img_size):
    return (PixelCNN(levels=levels, hidden=hidden, n_blocks=depth, img_size=img_size) if cls is PixelCNN
            else GatedPixelCNN(levels=levels, hidden=hidden, n_layers=depth, img_size=img_size))


@pytest.mark.parametrize("cls", [PixelCNN, GatedPixelCNN])
def test_pixelcnn_causality_by_gradients(cls):
    """The logits at pixel i must not depend on input pixels >= i (raster order)."""
    torch.manual_seed(0)
    model = _small(cls, 8, 16, 3, 10)
    for p in model.parameters():  # make every weight matter
        torch.nn.init.normal_(p, std=0.3)
    h = w = 10
    for r, c in [(0, 0), (0, 5), (3, 0), (4, 7), (9, 9)]:
        inp = torch.randn(1, 1, h, w, requires_grad=True)
        model.logits_from_input(inp)[0, :, r, c].sum().backward()
        grad = inp.grad[0, 0].abs()
        order = torch.arange(h * w).view(h, w)
        i = r * w + c
        assert grad[order >= i].max() == 0, f"pixel ({r},{c}) sees the future"
        if c > 0:
            assert grad[r, c - 1] > 0  # it does see its left neighbour...
        if r > 0:
            assert grad[r - 1, c] > 0  # ...and the pixel above


def test_gated_pixelcnn_has_no_blind_spot():
    """Every pixel before i inside the receptive field reaches the logits at i; the masked
    PixelCNN of the same depth misses pixels above and to the right (its blind spot)."""
    torch.manual_seed(0)
    r, c, size = 10, 8, 16
    seen = {}
    for cls in (PixelCNN, GatedPixelCNN):
        model = _small(cls, 4, 8, 4, size)
        for p in model.parameters():
            torch.nn.init.normal_(p, std=0.3)
        inp = torch.randn(1, 1, size, size, requires_grad=True)
        model.logits_from_input(inp)[0, :, r, c].sum().backward()
        seen[cls] = inp.grad[0, 0] != 0
    # gated: the 7-wide first layer plus one more column per later layer, every row above within reach
    gated = seen[GatedPixelCNN]
    assert gated[r - 1, c - 6:c + 7].all() and gated[r, c - 6:c].all() and gated[r - 4:r, c + 5].all()
    # masked: each 3x3 mask B adds one column to the right per row up, so the row just above stops at
    # c + 4 (the 7x7 mask A's 3 plus 1): (r - 1, c + 5) precedes pixel i yet is never seen
    masked = seen[PixelCNN]
    assert not masked[r - 1, c + 5] and gated[r - 1, c + 5]


@pytest.mark.parametrize("cls", [PixelCNN, GatedPixelCNN])
def test_pixelcnn_log_prob_is_normalised(cls):
    """Sum over every image of a 2x2, K=3 model of exp(log p(x)) is 1 (81 images, float64)."""
    torch.manual_seed(1)
    model = _small(cls, 3, 8, 2, 2).double()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.5)
    images = torch.tensor(list(itertools.product(range(3), repeat=4))).view(-1, 1, 2, 2)
    total = model.log_prob(images).exp().sum().item()
    assert abs(total - 1.0) < 1e-10


def test_pixelcnn_bits_per_dim_matches_cross_entropy():
    model = PixelCNN(levels=16, hidden=8, n_blocks=1)
    x = torch.randint(0, 16, (3, 1, 28, 28))
    ce = F.cross_entropy(model(x).double(), x[:, 0], reduction="none").sum((1, 2))  # nats per image
    assert torch.allclose(model.bits_per_dim(x).double(), ce / (784 * torch.log(torch.tensor(2.0, dtype=torch.float64))),
                          rtol=1e-5)


def test_pixelcnn_sample_shape_range_determinism():
    model = PixelCNN(levels=4, hidden=8, n_blocks=1, img_size=6)
    a = model.sample(3, torch.Generator().manual_seed(0))
    b = model.sample(3, torch.Generator().manual_seed(0))
    assert a.shape == (3, 1, 6, 6) and a.dtype == torch.int64
    assert a.min() >= 0 and a.max() <= 3 and torch.equal(a, b)
    with pytest.raises(ValueError, match="temperature"):
        model.sample(1, temperature=0)


def test_pixelcnn_sampler_follows_its_conditionals():
    """A model with zero weights except the last bias samples every pixel from softmax(bias)."""
    model = PixelCNN(levels=4, hidden=8, n_blocks=1, img_size=4)
    for p in model.parameters():
        torch.nn.init.zeros_(p)
    bias = torch.tensor([0.0, 1.0, 2.0, -1.0])
    model.head[-1].bias.data.copy_(bias)
    x = model.sample(2000, torch.Generator().manual_seed(0))
    freq = torch.bincount(x.flatten(), minlength=4).double() / x.numel()
    assert torch.allclose(freq, torch.softmax(bias.double(), 0), atol=0.01)


@pytest.mark.parametrize("cls", [PixelCNN, GatedPixelCNN])
def test_pixelcnn_samples_follow_the_model_distribution(cls):
    """Empirical frequencies of sampled 2x2 binary images match exp(log_prob) (conditioning on
    earlier pixels included)."""
    torch.manual_seed(2)
    model = _small(cls, 2, 8, 2, 2)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.8)
    images = torch.tensor(list(itertools.product(range(2), repeat=4))).view(-1, 1, 2, 2)
    probs = model.log_prob(images).exp().double()  # (16,)
    x = model.sample(8000, torch.Generator().manual_seed(0))
    codes = (x.view(-1, 4) * torch.tensor([8, 4, 2, 1])).sum(1)
    freq = torch.bincount(codes, minlength=16).double() / 8000
    assert (freq - probs).abs().max() < 4 * (probs * (1 - probs) / 8000).sqrt().max() + 1e-3


@pytest.mark.parametrize("cls", [PixelCNN, GatedPixelCNN])
def test_pixelcnn_rows_below_do_not_change_logits(cls):
    """The sampler feeds rows 0..r only; the logits of row r must equal those from the full image."""
    model = _small(cls, 8, 8, 2, 9)
    x = torch.randint(0, 8, (2, 1, 9, 9))
    full = model(x)
    for r in (0, 4, 8):
        assert torch.allclose(model(x[:, :, : r + 1])[:, :, r], full[:, :, r], atol=1e-6)


def test_pixelcnn_rejects_out_of_range_levels():
    with pytest.raises(ValueError, match=r"0\.\.15"):
        PixelCNN(levels=16, hidden=4, n_blocks=1)(torch.full((1, 1, 4, 4), 16))


def test_feature_tap_returns_block_outputs_and_removes_hooks():
    g = Generator(width=4).eval()
    z = torch.randn(2, 64)
    out, feats = kd.taps.features(g, ["stem", "blocks.up1"], z)
    assert feats["stem"].shape == (2, 16, 7, 7) and feats["blocks.up1"].shape == (2, 8, 14, 14)
    assert torch.allclose(feats["blocks.up1"], g.blocks.up1(g.stem(z[:, :, None, None])))
    assert torch.allclose(out, g(z))
    assert all(not m._forward_hooks for m in g.modules())
    with pytest.raises(ValueError, match="valid names"):
        kd.taps.FeatureTap(g, ["blocks.up9"])


def test_feature_tap_keeps_gradients():
    g = Generator(width=4)
    with kd.taps.FeatureTap(g, ["blocks.up2"]) as tap:
        g(torch.randn(2, 64))
    tap.features["blocks.up2"].pow(2).mean().backward()
    assert g.stem[0].weight.grad is not None and g.stem[0].weight.grad.abs().sum() > 0


def test_generator_with_small_stem_survives_a_checkpoint(tmp_path):
    g = Generator(width=1, stem_channels=3)
    path = kd.checkpoints.save(g, tmp_path / "tiny.safetensors")
    loaded = kd.checkpoints.load(path)
    assert loaded.config == g.config and loaded.stem[0].out_channels == 3
    assert all(torch.equal(a, b) for a, b in zip(g.state_dict().values(), loaded.state_dict().values()))


def test_registry_rebuilds_every_model_from_its_architecture():
    assert {"Generator", "Discriminator", "PixelCNN", "UNet", "Classifier"} <= set(kd.models.MODELS)
    for model in (Generator(width=2), Discriminator(width=2), PixelCNN(levels=4, hidden=4, n_blocks=1),
                  kd.models.UNet(widths=(8, 8, 8), emb_dim=8), kd.models.Classifier(width=4, feature_dim=8)):
        arch = kd.models.architecture(model)
        assert arch == {"class": type(model).__name__, "config": model.config}
        rebuilt = kd.models.build(arch)
        assert type(rebuilt) is type(model) and rebuilt.config == model.config
        assert kd.count_parameters(rebuilt) == kd.count_parameters(model)
    with pytest.raises(ValueError, match="model class 'Transformer' is unknown; known classes: Classifier"):
        kd.models.build({"class": "Transformer"})
    with pytest.raises(TypeError, match="Linear is not a registered kdlab model"):
        kd.models.architecture(torch.nn.Linear(2, 2))


def test_count_parameters_trainable_only():
    g = Generator(width=1)
    total = kd.count_parameters(g)
    for p in g.stem.parameters():
        p.requires_grad_(False)
    frozen = sum(p.numel() for p in g.stem.parameters())
    assert kd.count_parameters(g) == total and kd.count_parameters(g, trainable_only=True) == total - frozen
