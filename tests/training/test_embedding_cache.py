"""`ldmkit cache-latents --embeddings`: frozen text-encoder outputs on disk, keyed by encoder, vocabulary,
max_length and data; train-ldm reads them instead of running the encoder, with the same losses."""
import json
import shutil
import string

import pytest
import torch
from safetensors.torch import load_file

pytest.importorskip("transformers")

from ldmkit.cli.main import main  # noqa: E402
from ldmkit.config import ConfigError, load_config  # noqa: E402
from ldmkit.data import build_dataset  # noqa: E402
from ldmkit.nn import FrozenTextConditioner  # noqa: E402
from ldmkit.training.autoencoder_loop import AutoencoderRunConfig, train_autoencoder  # noqa: E402
from ldmkit.training.embeddings import (EmbeddingStore, dataset_captions, embedding_cache_dir,  # noqa: E402
                                        embedding_key)
from ldmkit.training.ldm_loop import LDMRunConfig, train_ldm  # noqa: E402

torch.set_num_threads(1)


def make_encoder(path, seed=0, hidden=24):
    """A tiny BERT (1 layer, hidden 24) with a character-level WordPiece vocabulary, saved as a local HF folder."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    path.mkdir(parents=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *string.ascii_lowercase,
             *(f"##{c}" for c in string.ascii_lowercase)]
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab_file=str(path / "vocab.txt")).save_pretrained(path)
    torch.manual_seed(seed)
    BertModel(BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=32)).eval().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_ae(tmp_path_factory):
    out = tmp_path_factory.mktemp("ae")
    return train_autoencoder(load_config(AutoencoderRunConfig, "tiny/autoencoder",
                                         [f"train.out_dir={out}", "train.steps=2", "scale_samples=8"]))


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    return make_encoder(tmp_path_factory.mktemp("enc") / "tiny-bert")


def overrides(ae, encoder, *extra):
    return [f"first_stage={ae}", "conditioner.kind=text_frozen", f"conditioner.encoder_path={encoder}",
            "conditioner.max_length=8", "data.shapes_size=24", *extra]


def own_copy(ae, tmp_path):
    """Caches live beside the first stage: each test gets its own autoencoder file."""
    dst = tmp_path / "ae" / "autoencoder.safetensors"
    dst.parent.mkdir()
    shutil.copy(ae, dst)
    return dst


def losses(run):
    return [json.loads(line)["loss"] for line in (run / "events.jsonl").read_text().splitlines()]


def test_cached_and_uncached_training_give_the_same_losses(tmp_path, tiny_ae, encoder, monkeypatch):
    ae = own_copy(tiny_ae, tmp_path)
    run = lambda name: load_config(LDMRunConfig, "tiny/ldm-text", overrides(
        ae, encoder, f"train.out_dir={tmp_path / name}", "train.steps=3", "train.sample_every=1000",
        "train.sample_steps=1", "train.cache_latents=false"))
    uncached = train_ldm(run("uncached"))

    assert main(["cache-latents", "tiny/ldm-text", *overrides(ae, encoder), "--embeddings"]) == 0
    cfg = load_config(LDMRunConfig, "tiny/ldm-text", overrides(ae, encoder))
    frozen = FrozenTextConditioner(str(encoder), max_length=8, embed_dim=16)
    path = embedding_cache_dir(ae, cfg.data, embedding_key(frozen, cfg.data))
    store = EmbeddingStore.open(path, embedding_key(frozen, cfg.data))
    captions = sorted(set(dataset_captions(build_dataset(cfg.data, "train"))) | {""})
    assert json.loads((path / "index.json").read_text())["captions"] == captions and len(store) == len(captions)
    rows = store.lookup(captions)
    torch.testing.assert_close(torch.stack([rows[c] for c in captions]), frozen.encode(captions), rtol=0, atol=1e-6)
    lazy = EmbeddingStore.open(path, embedding_key(frozen, cfg.data), max_bytes=0)  # rows read from the shards
    assert lazy.table is None and all(torch.equal(lazy.lookup([c])[c], rows[c]) for c in captions[:5])

    def no_encoder(self, captions):
        raise AssertionError(f"the encoder ran on {captions}")

    monkeypatch.setattr(FrozenTextConditioner, "encode", no_encoder)
    cached = train_ldm(run("cached"))  # every caption (and the dropped-out "") comes from the cache
    assert len(losses(tmp_path / "cached")) == 3
    torch.testing.assert_close(losses(tmp_path / "cached"), losses(tmp_path / "uncached"), rtol=0, atol=1e-6)
    a, b = load_file(str(uncached)), load_file(str(cached))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)
    assert any((ae.parent / "latent_cache").iterdir())  # cache-latents --embeddings also encoded the latents


def test_a_changed_encoder_or_length_gets_another_cache(tmp_path, tiny_ae, encoder, monkeypatch, capsys):
    ae = own_copy(tiny_ae, tmp_path)
    assert main(["cache-latents", "tiny/ldm-text", *overrides(ae, encoder), "--embeddings"]) == 0
    cfg = load_config(LDMRunConfig, "tiny/ldm-text", overrides(ae, encoder))
    key = embedding_key(FrozenTextConditioner(str(encoder), max_length=8, embed_dim=16), cfg.data)
    path = embedding_cache_dir(ae, cfg.data, key)
    assert EmbeddingStore.open(path, key) is not None
    # other max_length, other weights, other vocabulary, other captions: other keys
    other = make_encoder(tmp_path / "other", seed=1)
    vocab = make_encoder(tmp_path / "vocab")
    (vocab / "vocab.txt").write_text((vocab / "vocab.txt").read_text() + "circle\n")
    (vocab / "tokenizer.json").unlink()  # rebuilt from the longer vocab.txt
    keys = {embedding_key(FrozenTextConditioner(str(encoder), max_length=12, embed_dim=16), cfg.data),
            embedding_key(FrozenTextConditioner(str(other), max_length=8, embed_dim=16), cfg.data),
            embedding_key(FrozenTextConditioner(str(vocab), max_length=8, embed_dim=16), cfg.data),
            embedding_key(FrozenTextConditioner(str(encoder), max_length=8, embed_dim=16),
                          load_config(LDMRunConfig, "tiny/ldm-text", overrides(ae, encoder, "data.seed=1")).data)}
    assert len(keys) == 4 and key not in keys

    # train-ldm with a changed max_length finds no cache and runs the encoder; cache-latents builds a new one
    longer = overrides(ae, encoder, "conditioner.max_length=12")
    calls = []
    encode = FrozenTextConditioner.encode
    monkeypatch.setattr(FrozenTextConditioner, "encode", lambda self, c: calls.append(len(c)) or encode(self, c))
    train_ldm(load_config(LDMRunConfig, "tiny/ldm-text", [*longer, f"train.out_dir={tmp_path / 'run'}",
                                                          "train.steps=1", "train.sample_every=1000",
                                                          "train.sample_steps=1"]))
    assert calls
    assert main(["cache-latents", "tiny/ldm-text", *longer, "--embeddings"]) == 0
    assert sorted(p.name for p in path.parent.iterdir()) == sorted([path.name, path.name.replace(
        key, embedding_key(FrozenTextConditioner(str(encoder), max_length=12, embed_dim=16), cfg.data))])

    # a cache moved under another key is refused, naming what to do
    moved = embedding_cache_dir(ae, cfg.data, "0123456789abcdef")
    shutil.copytree(path, moved)
    with pytest.raises(ConfigError, match="embedding cache of another encoder.*ldmkit cache-latents PRESET --embeddings"):
        EmbeddingStore.open(moved, "0123456789abcdef")
    # --embeddings on a preset without a frozen text encoder: one line
    capsys.readouterr()
    assert main(["cache-latents", "tiny/ldm", f"first_stage={ae}", "--embeddings"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "ldmkit: error: conditioner.kind: --embeddings caches text_frozen encoders' outputs, this preset's is class "
        "(the other conditioners train with the UNet)"]
