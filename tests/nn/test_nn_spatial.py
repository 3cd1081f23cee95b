"""SpatialRescaler (the original's semantic-map conditioner) and one-hot maps."""
import pytest
import torch
import torch.nn.functional as F

from ldmkit.nn.spatial import SpatialRescaler, one_hot_map


def test_bilinear_halvings_are_block_averages():
    x = torch.randn(2, 5, 16, 12, generator=torch.Generator().manual_seed(0))
    one = SpatialRescaler(n_stages=1, in_channels=5)
    two = SpatialRescaler(n_stages=2, in_channels=5)
    assert torch.allclose(one(x), F.avg_pool2d(x, 2), atol=1e-6)
    assert torch.allclose(two(x), F.avg_pool2d(x, 4), atol=1e-6)
    nearest = SpatialRescaler(n_stages=1, method="nearest", in_channels=5)
    assert torch.equal(nearest(x), x[..., ::2, ::2])
    assert torch.equal(SpatialRescaler(n_stages=0, in_channels=5)(x), x)


def test_semantic_map_remap_shapes_and_keys():
    # semantic_synthesis256: 182-class one-hot, two bilinear halvings, 1x1 conv to 3 channels, no bias
    seg = torch.randint(0, 182, (2, 32, 32), generator=torch.Generator().manual_seed(1))
    rescaler = SpatialRescaler(n_stages=2, method="bilinear", multiplier=0.5, in_channels=182, out_channels=3)
    out = rescaler.encode(one_hot_map(seg, 182))
    assert out.shape == (2, 3, 8, 8)
    assert list(rescaler.state_dict()) == ["channel_mapper.weight"]
    assert rescaler.channel_mapper.weight.shape == (3, 182, 1, 1)
    with_bias = SpatialRescaler(in_channels=4, out_channels=2, bias=True)
    assert sorted(with_bias.state_dict()) == ["channel_mapper.bias", "channel_mapper.weight"]
    # the 1x1 conv is a per-pixel linear map of the resized map
    x = torch.rand(1, 4, 8, 8)
    expected = torch.einsum("oc,bchw->bohw", with_bias.channel_mapper.weight[:, :, 0, 0], F.avg_pool2d(x, 2))
    expected = expected + with_bias.channel_mapper.bias[None, :, None, None]
    assert torch.allclose(with_bias(x), expected, atol=1e-6)


def test_rescaler_errors():
    with pytest.raises(ValueError, match="method must be one of"):
        SpatialRescaler(method="linear")
    with pytest.raises(ValueError, match="n_stages"):
        SpatialRescaler(n_stages=-1)
    with pytest.raises(ValueError, match="expected 3 channels"):
        SpatialRescaler(in_channels=3)(torch.zeros(1, 4, 8, 8))


def test_one_hot_round_trip():
    seg = torch.randint(0, 7, (3, 9, 11), generator=torch.Generator().manual_seed(2))
    onehot = one_hot_map(seg, 7)
    assert onehot.shape == (3, 7, 9, 11) and onehot.dtype == torch.float32
    assert torch.equal(onehot.argmax(dim=1), seg)
    assert torch.equal(onehot.sum(dim=1), torch.ones(3, 9, 11))
    with pytest.raises(ValueError, match=r"class ids must be in \[0, 7\), got \[0, 7\]"):
        one_hot_map(torch.tensor([[[0, 7]]]), 7)
    with pytest.raises(ValueError, match="integer class map"):
        one_hot_map(seg.float(), 7)


def test_box_map_closed_form_background_and_padding():
    from ldmkit.nn.spatial import box_map

    boxes = torch.tensor([[[2.0, 0.0, 0.0, 0.5, 0.5], [5.0, 0.5, 0.25, 1.0, 1.0]],
                          [[-1.0] * 5, [-1.0] * 5]])
    m = box_map(boxes, 6, 4, 4)  # pixel centres at 0.125, 0.375, 0.625, 0.875
    assert m.shape == (2, 6, 4, 4)
    expected2 = torch.zeros(4, 4)
    expected2[:2, :2] = 1
    expected5 = torch.zeros(4, 4)
    expected5[1:, 2:] = 1
    torch.testing.assert_close(m[0, 2], expected2)
    torch.testing.assert_close(m[0, 5], expected5)
    torch.testing.assert_close(m[0, 0], 1 - expected2 - expected5)
    assert m[0, [1, 3, 4]].abs().sum() == 0
    torch.testing.assert_close(m[1, 0], torch.ones(4, 4))  # padding rows draw nothing
    assert m[1, 1:].abs().sum() == 0
    with pytest.raises(ValueError, match="class ids must be < num_classes 6"):
        box_map(torch.tensor([[[6.0, 0, 0, 1, 1]]]), 6, 4, 4)
    with pytest.raises(ValueError, match=r"\(B, M, 5\)"):
        box_map(torch.zeros(2, 5), 6, 4, 4)
