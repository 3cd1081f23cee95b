import pytest
import torch

from ldmkit.data.config import DataConfig
from ldmkit.data.shapes import Shapes
from ldmkit.nn import LayoutConditioner

PAD_ROW = [-1.0] * 5


def make(**kw):
    torch.manual_seed(0)
    args = dict(num_classes=18, coord_bins=16, max_objects=2, embed_dim=16, n_layer=1, n_head=2) | kw
    return LayoutConditioner(**args).eval()


def test_token_layout_closed_form():
    cond = make()
    bins2 = 16 * 16
    assert (cond.class_offset, cond.start_token, cond.pad_token) == (bins2, bins2 + 19, bins2 + 20)
    # x = 0.2 -> round(0.2 * 15) = 3, y = 0.6 -> 9: token 9 * 16 + 3 = 147; (1, 1) -> bins^2 - 1
    boxes = torch.tensor([[[5, 0.0, 0.0, 1.0, 1.0], PAD_ROW], [[18, 0.2, 0.6, 0.2, 0.6], [1, 0.0, 1.0, 1.0, 0.0]]])
    ids, mask = cond.tokens(boxes)
    start, pad = cond.start_token, cond.pad_token
    assert ids.tolist() == [[start, bins2 + 5, 0, bins2 - 1, pad, pad, pad],
                            [start, bins2 + 18, 147, 147, bins2 + 1, 15 * 16, 15]]
    assert mask.tolist() == [[True] * 4 + [False] * 3, [True] * 7]
    # out-of-range coordinates clamp to the grid's edge
    assert cond.corner_token(torch.tensor([-0.5, 1.5]), torch.tensor([2.0, -1.0])).tolist() == [bins2 - 16, 15]


def test_output_shape_null_and_padding():
    cond = make()
    assert cond.input_key == "boxes"
    boxes = torch.tensor([[[3, 0.1, 0.1, 0.4, 0.5], [7, 0.5, 0.5, 0.9, 0.9]], [[2, 0.2, 0.2, 0.6, 0.6], PAD_ROW]])
    out = cond(boxes)
    assert out.shape == (2, 7, 16) and out.dtype == torch.float32
    null = cond.null(3, "cpu")
    assert null.shape == (3, 2, 5) and torch.all(null == -1)
    assert torch.isfinite(cond(null)).all()  # start token: a fully padded layout still has a key to attend to
    # fewer rows than max_objects are padded, and a padded row's coordinates are ignored
    torch.testing.assert_close(cond(boxes[1:, :1]), out[1:])
    junk = boxes[1:].clone()
    junk[0, 1, 1:] = torch.tensor([0.3, 0.1, 0.9, 0.7])
    torch.testing.assert_close(cond(junk), out[1:])
    out.sum().backward()
    assert cond.transformer.token_emb.weight.grad.abs().sum() > 0


def test_drop_layouts():
    cond = make()
    boxes = torch.rand(300, 2, 5)
    boxes[..., 0] = 4.0
    assert torch.equal(cond.drop(boxes, 0.0), boxes)
    assert torch.equal(cond.drop(boxes, 1.0), cond.null(300))
    dropped = cond.drop(boxes, 0.5, torch.Generator().manual_seed(1))
    expected = torch.rand(300, generator=torch.Generator().manual_seed(1)) < 0.5
    is_null = (dropped == -1).all(dim=(1, 2))
    assert torch.equal(is_null, expected) and torch.equal(dropped[~is_null], boxes[~is_null])
    assert cond.drop(boxes[:, :1], 1.0).shape == (300, 2, 5)  # padded to max_objects first


def test_errors():
    cond = make()
    with pytest.raises(ValueError, match="max_objects 2"):
        cond(torch.zeros(1, 3, 5))
    with pytest.raises(ValueError, match="num_classes 18"):
        cond(torch.tensor([[[19, 0, 0, 1, 1.0]]]))
    with pytest.raises(ValueError, match=r"\(B, N, 5\)"):
        cond(torch.zeros(2, 5))


def test_reads_shapes_boxes():
    data = Shapes(DataConfig(name="shapes", image_size=16, shapes_size=4, max_objects=3))
    boxes = torch.stack([data[i]["boxes"] for i in range(4)])  # (4, 3, 5), 1-based ids, -1 rows
    cond = make(max_objects=3)
    ids, mask = cond.tokens(boxes)
    n_obj = (boxes[:, :, 0] > 0).sum(1)
    assert torch.equal(mask.sum(1), 1 + 3 * n_obj)
    assert torch.equal(ids[:, 1::3][mask[:, 1::3]] - cond.class_offset, boxes[:, :, 0][boxes[:, :, 0] > 0].long())
    assert cond(boxes).shape == (4, 10, 16)


def test_sincos_corner_code_is_smooth_and_only_on_corner_tokens():
    import torch

    from ldmkit.nn.layout import LayoutConditioner, corner_sincos

    code = corner_sincos(8, 16)  # (64, 16): cell iy * 8 + ix
    assert code.shape == (64, 16)
    near, far = (code[9] - code[10]).norm(), (code[9] - code[63]).norm()
    assert near < far  # neighbouring cells are closer than opposite corners
    assert torch.equal(code[1 * 8 + 2, :8], code[5 * 8 + 2, :8])  # the x half depends on ix only
    torch.manual_seed(0)
    learned = LayoutConditioner(num_classes=4, coord_bins=8, embed_dim=16, n_layer=1, n_head=2)
    torch.manual_seed(0)
    sincos = LayoutConditioner(num_classes=4, coord_bins=8, embed_dim=16, n_layer=1, n_head=2, coord_embedding="sincos")
    assert learned.state_dict().keys() == sincos.state_dict().keys()  # the code is a fixed, unsaved buffer
    boxes = torch.tensor([[[1, 0.1, 0.1, 0.5, 0.5], [-1, -1, -1, -1, -1]]])
    assert not torch.allclose(learned(boxes), sincos(boxes))
    empty = learned.null(1)  # no corner tokens: the code changes nothing
    torch.testing.assert_close(learned(empty), sincos(empty))


def test_object_tokens_one_token_per_box_with_closed_form_box_code():
    from ldmkit.nn.embeddings import sincos_2d

    cond = make(tokens="object")
    boxes = torch.tensor([[[3.0, 0.25, 0.5, 0.75, 1.0], PAD_ROW], [[-1.0] * 5, PAD_ROW]])
    ids, mask = cond.tokens(boxes)
    assert ids.tolist() == [[cond.start_token, cond.class_offset + 3, cond.pad_token],
                            [cond.start_token, cond.pad_token, cond.pad_token]]
    assert mask.tolist() == [[True, True, False], [True, False, False]]
    code = cond.box_code(cond.pad(boxes))[0, 0]  # centre (0.5, 0.75), size (0.5, 0.5)
    torch.testing.assert_close(code[:8], sincos_2d(torch.tensor(0.5), torch.tensor(0.75), 8, 8))
    torch.testing.assert_close(code[8:], sincos_2d(torch.tensor(0.5), torch.tensor(0.5), 8, 8))
    out = cond(boxes)
    assert out.shape == (2, 3, 16) and torch.isfinite(out).all()
    # the position reaches the context: the same class elsewhere gives another object token
    moved = boxes.clone()
    moved[0, 0, 1:] = torch.tensor([0.0, 0.0, 0.5, 0.5])
    assert (cond(moved)[0, 1] - out[0, 1]).abs().max() > 1e-3
    with pytest.raises(ValueError, match="tokens must be triple or object"):
        make(tokens="pairs")
