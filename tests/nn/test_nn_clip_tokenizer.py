import copy
import json
import random
import shutil
import sys
from importlib import metadata

import pytest
import torch

from ldmkit.config import ConfigError
from ldmkit.nn import clip_tokenizer
from ldmkit.nn.clip_tokenizer import ClipTokenizer, find_clip_vocab

BPE_FILE = clip_tokenizer._open_clip_vocab()
if BPE_FILE is None:
    pytest.skip("open-clip-torch (the CLIP BPE vocabulary file) is not installed", allow_module_level=True)

CLIPTokenizer = pytest.importorskip("transformers").CLIPTokenizer
CAT = [49406, 320, 1125, 539, 320, 2368, 49407]  # "a photo of a cat" in the OpenAI CLIP vocabulary
HF_KW = dict(padding="max_length", truncation=True, max_length=77)

WORDS = ["a", "photo", "of", "cat", "dog", "astronaut", "riding", "horse", "Mars", "OIL", "Painting", "by",
         "greg", "rutkowski", "trending", "artstation", "8k", "hyperrealistic", "ultra-detailed", "sci-fi"]
ACCENTED = ["café", "naïve", "Ørsted", "São", "façade", "Über", "cafe\u0301", "ñandú", "Ελλάδα", "Москва", "ǅ"]
CJK = ["猫", "東京タワー", "한국어", "中文提示词", "ｆｕｌｌｗｉｄｔｈ"]
EMOJI = ["😀", "👍🏽", "👨‍👩‍👧‍👦", "🏳️‍🌈", "❤️", "🧑🏿‍🚀", "👩🏻‍❤️‍💋‍👨🏼", "🐱"]
PUNCT = ["!", "!!", "!!!", "?!", "...", "---", "(((", ")))", "[", "]", ",", ":", ";", "#", "@", "&amp;", "<|endoftext|>"]
DIGITS = ["1", "42", "1234567", "3.14", "1920x1080", "2023"]
APOS = ["it's", "don't", "we're", "I'LL", "they've", "she'd", "I'm", "cat's", "it’s"]
SPACES = [" ", "  ", "\t", "\n", " \n\t ", "   "]


def _prompts(n: int = 1000) -> list[str]:
    rng = random.Random(0)
    pools = [WORDS] * 4 + [ACCENTED, CJK, EMOJI, PUNCT, DIGITS, APOS]
    out = ["", " ", "\n", "!", "a photo of a cat"]
    while len(out) < n:
        k = rng.choice([1, 3, 8, 20, 60, 150, 300])  # up to far past 77 tokens
        parts = []
        for _ in range(k):
            word = rng.choice(rng.choice(pools))
            parts.append(word.upper() if rng.random() < 0.1 else word)
            parts.append(rng.choice(SPACES) if rng.random() < 0.2 else ("" if rng.random() < 0.1 else " "))
        text = "".join(parts)
        out.append(rng.choice(["", " ", "\t", "\n "]) + text + rng.choice(["", " ", "  \n"]))
    return out


PROMPTS = _prompts()


@pytest.fixture(scope="module")
def tok():
    return ClipTokenizer(BPE_FILE)


@pytest.fixture(scope="module")
def tok_sd2():
    return ClipTokenizer(BPE_FILE, pad_token="!")


def test_known_ids_and_special_tokens(tok, tok_sd2, monkeypatch):
    ids = tok("a photo of a cat")
    assert ids.shape == (1, 77) and ids.dtype == torch.long
    assert ids[0].tolist() == CAT + [49407] * 70
    assert tok_sd2(["a photo of a cat"])[0].tolist() == CAT + [0] * 70
    assert (tok.vocab_size, tok.bos_id, tok.eos_id, tok.pad_id, tok.pad_token) == (49408, 49406, 49407, 49407,
                                                                                    "<|endoftext|>")
    assert (tok_sd2.pad_id, tok_sd2.pad_token, tok.source) == (0, "!", str(BPE_FILE))
    monkeypatch.delenv("LDMKIT_CLIP_VOCAB", raising=False)
    assert find_clip_vocab() == BPE_FILE and BPE_FILE.name == "bpe_simple_vocab_16e6.txt.gz"
    assert ClipTokenizer().source == str(BPE_FILE)
    assert "open_clip" not in sys.modules  # located through package metadata, never imported (needs torchvision)


@pytest.mark.parametrize("pad", [None, "!"])
def test_save_round_trips_through_from_pretrained(tmp_path, pad):
    ours = ClipTokenizer(BPE_FILE, pad_token=pad)
    folder = ours.save(tmp_path / "tokenizer")
    assert {"vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"} <= {
        p.name for p in folder.iterdir()}
    assert (folder / "merges.txt").read_text(encoding="utf-8").startswith("#version: 0.2\n")
    assert [p.name for p in tmp_path.iterdir()] == ["tokenizer"]  # no temporary folder left behind
    # The folder as saved, and as diffusers ships one (vocab.json + merges.txt + configs, no tokenizer.json).
    legacy = shutil.copytree(folder, tmp_path / "legacy", ignore=shutil.ignore_patterns("tokenizer.json"))
    expected = ours(PROMPTS)
    assert expected.shape == (len(PROMPTS), 77)
    for path in (folder, legacy):
        ref = CLIPTokenizer.from_pretrained(path)
        assert ref.pad_token == ours.pad_token and ref.pad_token_id == ours.pad_id
        assert torch.equal(ref(PROMPTS, return_tensors="pt", **HF_KW).input_ids, expected)
    # And the in-memory reference: transformers' own CLIPTokenizer over the same vocabulary.
    ref = CLIPTokenizer(vocab=ours._vocab, merges=ours._merges, pad_token=ours.pad_token)
    assert ref(PROMPTS, **HF_KW).input_ids == expected.tolist()
    assert ClipTokenizer(folder).pad_token == ours.pad_token  # the saved configs carry the pad token


def test_prompts_exercise_truncation_and_unicode(tok):
    ids = tok(PROMPTS)
    lengths = (ids != tok.pad_id).sum(1)  # pad == eos here: counts up to the last real token
    assert (lengths == 76).sum() > 100 and (lengths < 20).sum() > 100
    assert ids[0].tolist()[:2] == [49406, 49407]  # the empty string
    assert (ids[:, 0] == tok.bos_id).all()


def test_truncation_keeps_start_and_end(tok):
    ids = tok(" ".join(["astronaut"] * 200))[0].tolist()
    assert len(ids) == 77 and ids[0] == tok.bos_id and ids[76] == tok.eos_id
    assert tok.eos_id not in ids[1:76]
    short = ClipTokenizer(BPE_FILE, max_length=8)(["a photo of a cat riding a horse on mars"])
    assert short.shape == (1, 8) and short[0, :6].tolist() == CAT[:6] and short[0, 7] == tok.eos_id


def test_folder_sources(tmp_path, tok, monkeypatch):
    folder = tok.save(tmp_path / "pipe" / "tokenizer")
    (tmp_path / "pipe" / "model_index.json").write_text("{}")
    from_folder, from_pipe = ClipTokenizer(folder), ClipTokenizer(tmp_path / "pipe")
    assert from_folder.source == from_pipe.source == str(folder)
    assert from_folder._vocab == tok._vocab and from_folder._merges == tok._merges
    sample = PROMPTS[:300]
    assert torch.equal(from_folder(sample), tok(sample)) and torch.equal(from_pipe(sample), tok(sample))
    # The pad token comes from the folder's tokenizer_config.json (SD 2.x ships "!").
    (folder / "special_tokens_map.json").unlink()
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "pad_token": {"content": "!"}}))
    sd2 = ClipTokenizer(folder)
    assert (sd2.pad_token, sd2.pad_id) == ("!", 0) and sd2("a photo of a cat")[0, 7:].eq(0).all()
    assert ClipTokenizer(folder, pad_token="<|endoftext|>").pad_id == 49407  # an explicit pad_token wins
    monkeypatch.setenv("LDMKIT_CLIP_VOCAB", str(tmp_path / "pipe"))
    assert ClipTokenizer().source == str(folder)


def _one_line_error(fn, *needles):
    with pytest.raises(ConfigError) as err:
        fn()
    msg = str(err.value)
    assert "\n" not in msg and all(n in msg for n in needles), msg


def test_errors(tmp_path, monkeypatch):
    folder = tmp_path / "tokenizer"
    folder.mkdir()
    (folder / "vocab.json").write_text("{}")
    _one_line_error(lambda: ClipTokenizer(folder), str(folder / "merges.txt"), "vocab.json and merges.txt")
    _one_line_error(lambda: find_clip_vocab(tmp_path / "nope"), str(tmp_path / "nope"), "not found")
    monkeypatch.setenv("LDMKIT_CLIP_VOCAB", str(tmp_path / "gone.txt.gz"))
    _one_line_error(lambda: ClipTokenizer(), "$LDMKIT_CLIP_VOCAB", str(tmp_path / "gone.txt.gz"))
    _one_line_error(lambda: ClipTokenizer(BPE_FILE, pad_token="<|pad|>"), "<|pad|>")
    _one_line_error(lambda: ClipTokenizer(BPE_FILE, max_length=1), "max_length")

    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.delenv("LDMKIT_CLIP_VOCAB")
    monkeypatch.setattr(clip_tokenizer.metadata, "distribution", missing)
    _one_line_error(find_clip_vocab, "open-clip-torch", "tokenizer/")


def test_type_errors_decode_and_deepcopy(tok, tok_sd2):
    with pytest.raises(TypeError, match="bytes"):
        tok(["a cat", b"a dog"])
    assert tok([]).shape == (0, 77)
    text = "a photo of an astronaut riding a horse on mars"
    assert tok.decode(tok(text)[0]) == text and tok_sd2.decode(tok_sd2(text)[0].tolist()) == text
    # "!" is SD 2.x's pad token, yet kept inside the text (transformers' skip_special_tokens would drop it).
    loud = "wow!! a cat!!!"
    assert tok_sd2.decode(tok_sd2(loud)[0]).replace(" ", "") == tok.decode(tok(loud)[0]).replace(" ", "") == "wow!!acat!!!"
    assert copy.deepcopy(tok) is tok


def test_interrupted_save_leaves_no_folder(tmp_path, tok, monkeypatch):
    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(clip_tokenizer.json, "dumps", crash)
    with pytest.raises(OSError, match="disk full"):
        tok.save(tmp_path / "tokenizer")
    assert list(tmp_path.iterdir()) == []
