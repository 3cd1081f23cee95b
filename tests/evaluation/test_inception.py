import hashlib
import math

import pytest
import torch

from ldmkit.config import ConfigError
from ldmkit.evaluation.inception import FID_WEIGHTS_URL, BlockA, BlockE, InceptionV3, resize_images

# Entries of pytorch-fid's pt_inception-2015-12-05-6726825d.pth (names and shapes of the TF-ported graph).
KNOWN = {
    "Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3),
    "Conv2d_1a_3x3.bn.weight": (32,),
    "Conv2d_1a_3x3.bn.bias": (32,),
    "Conv2d_1a_3x3.bn.running_mean": (32,),
    "Conv2d_1a_3x3.bn.running_var": (32,),
    "Conv2d_2a_3x3.conv.weight": (32, 32, 3, 3),
    "Conv2d_2b_3x3.conv.weight": (64, 32, 3, 3),
    "Conv2d_3b_1x1.conv.weight": (80, 64, 1, 1),
    "Conv2d_4a_3x3.conv.weight": (192, 80, 3, 3),
    "Mixed_5b.branch1x1.conv.weight": (64, 192, 1, 1),
    "Mixed_5b.branch5x5_2.conv.weight": (64, 48, 5, 5),
    "Mixed_5b.branch_pool.conv.weight": (32, 192, 1, 1),
    "Mixed_5c.branch_pool.conv.weight": (64, 256, 1, 1),
    "Mixed_5d.branch3x3dbl_3.conv.weight": (96, 96, 3, 3),
    "Mixed_6a.branch3x3.conv.weight": (384, 288, 3, 3),
    "Mixed_6b.branch7x7_2.conv.weight": (128, 128, 1, 7),
    "Mixed_6b.branch7x7dbl_5.conv.weight": (192, 128, 1, 7),
    "Mixed_6e.branch7x7_1.conv.weight": (192, 768, 1, 1),
    "Mixed_7a.branch3x3_2.conv.weight": (320, 192, 3, 3),
    "Mixed_7a.branch7x7x3_4.conv.weight": (192, 192, 3, 3),
    "Mixed_7b.branch3x3dbl_1.conv.weight": (448, 1280, 1, 1),
    "Mixed_7b.branch3x3_2a.conv.weight": (384, 384, 1, 3),
    "Mixed_7c.branch3x3dbl_3b.conv.weight": (384, 384, 3, 1),
    "Mixed_7c.branch1x1.bn.running_var": (320,),
    "Mixed_7c.branch_pool.conv.weight": (192, 2048, 1, 1),
    "fc.weight": (1008, 2048),
    "fc.bias": (1008,),
}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return InceptionV3()


def random_fid_state_dict(model: InceptionV3, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights under the model's keys, scaled so activations stay O(1) through 94 layers."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in model.state_dict().items():
        if k.endswith("conv.weight"):
            fan_in = v[0].numel()
            out[k] = torch.randn(v.shape, generator=g) * math.sqrt(2.0 / fan_in)
        elif k.endswith("running_var"):
            out[k] = torch.rand(v.shape, generator=g) + 0.5
        elif k.endswith("bn.weight"):
            out[k] = torch.rand(v.shape, generator=g) + 0.5
        else:
            out[k] = torch.randn(v.shape, generator=g) * 0.1
    return out


def test_state_dict_has_the_fid_file_layout(model):
    sd = model.state_dict()
    for key, shape in KNOWN.items():
        assert key in sd, key
        assert tuple(sd[key].shape) == shape, key
    # 94 conv layers x (conv weight + 4 batch-norm tensors) + fc weight and bias; no step counters, no aux head
    assert len(sd) == 94 * 5 + 2
    assert not any("num_batches_tracked" in k or "AuxLogits" in k for k in sd)
    # torchvision's inception_v3 has 27,161,264 parameters; without the auxiliary head (3,326,696) and with
    # 1008 instead of 1000 classes (+8 x 2049) that leaves 23,850,960.
    assert sum(p.numel() for p in model.parameters()) == 27_161_264 - 3_326_696 + 8 * 2049
    assert model.Conv2d_1a_3x3.bn.eps == 1e-3
    assert model.Mixed_7c.max_pool and not model.Mixed_7b.max_pool
    assert model.resize == "bilinear" and model.resolution == 299


def test_from_file_round_trip_forward_and_logits(model, tmp_path):
    sd = random_fid_state_dict(model)
    path = tmp_path / "pt_inception.pth"
    torch.save(sd, path)
    loaded = InceptionV3.from_file(path)
    for k, v in sd.items():
        assert torch.equal(loaded.state_dict()[k], v), k
    assert loaded.weights_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert not loaded.official_weights
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1
    gray = x[:1, :1]
    with torch.no_grad():
        # one batch: two RGB images, one grayscale image read as RGB with three equal channels, and that RGB
        f = loaded(torch.cat([x, gray.repeat(1, 3, 1, 1)]))
        assert f.shape == (3, 2048) and f.dtype == torch.float32
        assert torch.isfinite(f).all() and f.abs().sum() > 0
        assert not torch.allclose(f[0], f[1])  # the features depend on the image
        torch.testing.assert_close(loaded(gray), f[2:], rtol=1e-4, atol=1e-5)
        # the head: fc on pool3; by default without the bias, like the original Inception Score code
        logits = loaded.logits(x[:1])
        assert logits.shape == (1, 1008)
        torch.testing.assert_close(logits, f[:1] @ sd["fc.weight"].T, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(loaded.logits(x[:1], bias=True) - logits, sd["fc.bias"][None], rtol=1e-4, atol=1e-4)
    loaded.train()
    assert not loaded.training  # frozen instrument


def test_step_counters_from_a_resaved_copy_are_ignored(model, tmp_path):
    sd = random_fid_state_dict(model, seed=3)
    sd["Conv2d_1a_3x3.bn.num_batches_tracked"] = torch.tensor(0)
    torch.save(sd, tmp_path / "w.pth")
    assert torch.equal(InceptionV3.from_file(tmp_path / "w.pth").fc.bias, sd["fc.bias"])


def test_missing_file_names_the_download(tmp_path):
    with pytest.raises(ConfigError) as e:
        InceptionV3.from_file(tmp_path / "nope.pth")
    msg = str(e.value)
    assert "\n" not in msg
    assert str(tmp_path / "nope.pth") in msg and FID_WEIGHTS_URL in msg and "connected machine" in msg


def test_wrong_keys_and_shapes_are_named(model, tmp_path):
    sd = random_fid_state_dict(model)
    del sd["fc.bias"]
    sd["AuxLogits.conv0.conv.weight"] = torch.zeros(128, 768, 1, 1)  # torchvision's aux head
    torch.save(sd, tmp_path / "keys.pth")
    with pytest.raises(ConfigError, match=r"missing keys fc\.bias; unexpected keys AuxLogits\.conv0\.conv\.weight"):
        InceptionV3.from_file(tmp_path / "keys.pth")
    sd = random_fid_state_dict(model)
    sd["fc.weight"] = torch.zeros(1000, 2048)  # torchvision's 1000-class head
    sd["fc.bias"] = torch.zeros(1000)
    torch.save(sd, tmp_path / "shapes.pth")
    with pytest.raises(ConfigError, match=r"wrong shapes: fc\.weight \(1000, 2048\) \(expected \(1008, 2048\)\)"):
        InceptionV3.from_file(tmp_path / "shapes.pth")


class _Payload:
    def __reduce__(self):
        return (print, ("never run",))


def test_pickle_that_needs_code_is_refused(tmp_path):
    torch.save({"fc.weight": _Payload()}, tmp_path / "evil.pth")
    with pytest.raises(ConfigError, match="refusing to load"):
        InceptionV3.from_file(tmp_path / "evil.pth")


def _identity_pool_branch(block, channels: int) -> None:
    """Pool branch conv = identity on the first ``channels`` inputs; batch norm left at its identity init."""
    w = torch.zeros_like(block.branch_pool.conv.weight)
    w[torch.arange(channels), torch.arange(channels)] = 1.0
    block.branch_pool.conv.weight.data.copy_(w)


def test_average_pool_branches_ignore_the_padding():
    block = BlockA(4, pool_features=4).eval()
    _identity_pool_branch(block, 4)
    x = torch.full((1, 4, 5, 5), 2.0)
    out = block(x)[:, -4:]  # the pool branch is last: (1, 4, 5, 5)
    # TensorFlow averages over valid pixels only: a constant map stays constant, corners included
    # (with the zero padding counted, a corner would be 2 * 4/9).
    torch.testing.assert_close(out, torch.full_like(out, 2.0 / math.sqrt(1.0 + 1e-3)))


def test_mixed_7c_pools_with_max_and_7b_with_average():
    x = torch.zeros(1, 4, 5, 5)
    x[0, 0, 2, 2] = 9.0  # one spike in channel 0
    expected_max = torch.zeros(5, 5)
    expected_max[1:4, 1:4] = 9.0  # a 3x3 max-pool spreads the spike at full height
    expected_avg = expected_max / 9.0  # interior windows have 9 valid pixels
    for max_pool, expected in ((True, expected_max), (False, expected_avg)):
        block = BlockE(4, max_pool=max_pool).eval()
        _identity_pool_branch(block, 4)
        out = block(x)[0, -192]  # first channel of the pool branch (the last 192)
        torch.testing.assert_close(out, expected / math.sqrt(1.0 + 1e-3))


def test_resize_is_pytorch_fid_bilinear_and_selectable():
    x = torch.tensor([[[[0.0, 1.0], [0.0, 1.0]]]])  # (1, 1, 2, 2)
    # align_corners=False: output pixel centres at (i + 0.5) / 2 - 0.5 -> -0.25, 0.25, 0.75, 1.25 (clamped)
    torch.testing.assert_close(resize_images(x, 4, "bilinear")[0, 0, 0], torch.tensor([0.0, 0.25, 0.75, 1.0]))
    torch.testing.assert_close(resize_images(x, 4, "nearest")[0, 0, 0], torch.tensor([0.0, 0.0, 1.0, 1.0]))
    y = torch.rand(1, 3, 299, 299)
    assert resize_images(y, 299, "bicubic-antialias") is y
    assert InceptionV3(resize="bicubic").resize == "bicubic"
    with pytest.raises(ConfigError, match="resize: expected one of"):
        InceptionV3(resize="lanczos")
