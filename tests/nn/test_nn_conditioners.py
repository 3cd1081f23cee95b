import pytest
import torch

from ldmkit.config import ConfigError, from_dict
from ldmkit.nn import (ClassEmbedder, Conditioner, ConditionerConfig, LayoutConditioner, TextConditioner,
                       build_conditioner)


def test_class_embedder_null_row_and_shape():
    emb = ClassEmbedder(10, 8)
    assert isinstance(emb, Conditioner) and emb.input_key == "label" and emb.embed_dim == 8
    assert emb.null_class == 10 and emb.embedding.weight.shape == (11, 8)
    assert list(emb.state_dict()) == ["embedding.weight"]
    out = emb(torch.tensor([0, 3, 10]))
    assert out.shape == (3, 1, 8)
    torch.testing.assert_close(out[2, 0], emb.embedding.weight[10])
    uc = emb.null(4, "cpu")
    assert uc.dtype == torch.long and uc.tolist() == [10] * 4
    assert torch.equal(emb.unconditional(4, "cpu"), uc)  # the old name still works


def test_drop_probability_extremes_and_rate():
    emb = ClassEmbedder(10, 4)
    labels = torch.arange(10).repeat(50)
    assert torch.equal(emb.drop(labels, 0.0), labels)
    assert torch.all(emb.drop(labels, 1.0) == 10)
    dropped = emb.drop(labels, 0.3, generator=torch.Generator().manual_seed(0))
    changed = dropped == 10
    # one uniform per label from the generator, dropped where < p (same stream as before the protocol)
    assert torch.equal(changed, torch.rand(500, generator=torch.Generator().manual_seed(0)) < 0.3)
    assert 0.2 < changed.float().mean() < 0.4
    assert torch.equal(dropped[~changed], labels[~changed]) and dropped.dtype == torch.long
    with pytest.raises(ValueError):
        emb.drop(labels, 1.5)


def test_build_conditioner_each_kind(tmp_path):
    assert build_conditioner(ConditionerConfig()) is None
    emb = build_conditioner(ConditionerConfig(kind="class", num_classes=5, embed_dim=16))
    assert isinstance(emb, ClassEmbedder) and emb.embedding.weight.shape == (6, 16)

    vocab = tmp_path / "vocab.txt"
    vocab.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\nred\n")
    text = build_conditioner(ConditionerConfig(kind="text", vocab=str(vocab), max_length=6, embed_dim=8,
                                               n_layer=1, n_head=2))
    assert isinstance(text, TextConditioner) and len(text.transformer.encoder.layers) == 1
    assert text(["red", ""]).shape == (2, 6, 8)

    layout = build_conditioner(ConditionerConfig(kind="layout", num_classes=18, coord_bins=4, max_objects=3,
                                                 embed_dim=8, n_layer=1, n_head=2))
    assert isinstance(layout, LayoutConditioner) and layout.pad_token == 16 + 19 + 1
    assert layout(layout.null(2)).shape == (2, 10, 8)
    for cond, key in ((emb, "label"), (text, "caption"), (layout, "boxes")):
        assert isinstance(cond, Conditioner) and cond.input_key == key


@pytest.mark.parametrize("data, field", [
    ({"kind": "text_clip"}, "cond.kind"),
    ({"kind": "text", "embed_dim": 10, "n_head": 4}, "cond.n_head"),
    ({"max_length": 1}, "cond.max_length"),
    ({"coord_bins": 1}, "cond.coord_bins"),
    ({"max_objects": 0}, "cond.max_objects"),
    ({"n_layer": 0}, "cond.n_layer"),
    ({"num_classes": 0}, "cond.num_classes"),
])
def test_config_errors_name_the_field(data, field):
    with pytest.raises(ConfigError, match=field):
        from_dict(ConditionerConfig, data, prefix="cond")


def test_text_vocab_error_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match="conditioner.vocab") as e:
        build_conditioner(ConditionerConfig(kind="text", vocab=str(tmp_path / "none.txt")))
    assert "\n" not in str(e.value)
