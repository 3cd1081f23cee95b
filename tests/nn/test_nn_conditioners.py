import pytest
import torch

from ldmkit.config import ConfigError, from_dict
from ldmkit.nn import ClassEmbedder, ConditionerConfig, build_conditioner


def test_class_embedder_null_row_and_shape():
    emb = ClassEmbedder(10, 8)
    assert emb.null_class == 10 and emb.embedding.weight.shape == (11, 8)
    assert list(emb.state_dict()) == ["embedding.weight"]
    out = emb(torch.tensor([0, 3, 10]))
    assert out.shape == (3, 1, 8)
    torch.testing.assert_close(out[2, 0], emb.embedding.weight[10])
    uc = emb.unconditional(4, "cpu")
    assert uc.dtype == torch.long and uc.tolist() == [10] * 4


def test_drop_probability_extremes_and_rate():
    emb = ClassEmbedder(10, 4)
    labels = torch.arange(10).repeat(50)
    assert torch.equal(emb.drop(labels, 0.0), labels)
    assert torch.all(emb.drop(labels, 1.0) == 10)
    dropped = emb.drop(labels, 0.3, generator=torch.Generator().manual_seed(0))
    changed = dropped == 10
    assert 0.2 < changed.float().mean() < 0.4
    assert torch.equal(dropped[~changed], labels[~changed])
    with pytest.raises(ValueError):
        emb.drop(labels, 1.5)


def test_build_conditioner():
    assert build_conditioner(ConditionerConfig()) is None
    emb = build_conditioner(ConditionerConfig(kind="class", num_classes=5, embed_dim=16))
    assert isinstance(emb, ClassEmbedder) and emb.embedding.weight.shape == (6, 16)
    with pytest.raises(ConfigError, match="cond.kind"):
        from_dict(ConditionerConfig, {"kind": "text"}, prefix="cond")
