"""Web-UI prompt syntax: the grammar (examples, errors with columns, generated prompts), the weighted encoding
in closed form, long prompts in chunks, on every text conditioner and through the pipeline."""
from __future__ import annotations

import random

import pytest
import torch

from ldmkit.nn.prompt_weights import ROUND, SQUARE, PromptSyntaxError, chunk_count, encode_weighted, parse_prompt

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("text, expected", [
    ("a (red:1.3) cube, [blurry]", [("a ", 1.0), ("red", 1.3), (" cube, ", 1.0), ("blurry", SQUARE)]),
    ("((cat))", [("cat", ROUND * ROUND)]),
    ("(a [b] c)", [("a ", ROUND), ("b", ROUND * SQUARE), (" c", ROUND)]),
    ("(a (b:2) c:0.5)", [("a ", 0.5), ("b", 1.0), (" c", 0.5)]),
    (r"\(not weighted\) \[x\] back\\slash", [(r"(not weighted) [x] back\slash", 1.0)]),
    ("time: 5 pm (a:b)", [("time: 5 pm ", 1.0), ("a:b", ROUND)]),
    ("(x: 1.5 )", [("x", 1.5)]),
    ("(x:.5)", [("x", 0.5)]),
    ("", [("", 1.0)]),
    ("()", [("", 1.0)]),
    ("a lone \\ stays", [("a lone \\ stays", 1.0)]),
])
def test_grammar_examples(text, expected):
    got = parse_prompt(text)
    assert [s for s, _ in got] == [s for s, _ in expected]
    assert [w for _, w in got] == pytest.approx([w for _, w in expected], rel=1e-12)


@pytest.mark.parametrize("text, column, what", [
    ("a (b", 3, "'(' is never closed"),
    ("a b)", 4, "')' without a matching '('"),
    ("]", 1, "']' without a matching '['"),
    ("([a)", 4, "')' closes the '[' of column 2"),
    ("(a [b]", 1, "'(' is never closed"),
    ("a [b (c] d)", 8, "']' closes the '(' of column 6"),
    ("x:2)", 4, "')' without a matching '('"),
])
def test_unbalanced_brackets_name_the_column(text, column, what):
    with pytest.raises(PromptSyntaxError) as err:
        parse_prompt(text)
    msg = str(err.value)
    assert msg == f"prompt: column {column}: {what}" and "\n" not in msg


def generated(rng: random.Random, depth: int = 0) -> tuple[str, list[tuple[str, float]]]:
    """A random prompt of nested groups and escapes, with the (text, weight) list it must parse to."""
    source, parts = "", []
    for _ in range(rng.randint(1, 4)):
        kind = rng.choice(["word", "word", "escape", "round", "square", "weight"] if depth < 3 else ["word", "escape"])
        if kind == "word":
            w = rng.choice(["cat", "a red cube", "sky, ", "x: y", "émoji 🐱 ", "UPPER"])
            source, parts = source + w, parts + [(w, 1.0)]
        elif kind == "escape":
            ch = rng.choice("()[]\\")
            source, parts = source + "\\" + ch, parts + [(ch, 1.0)]
        else:
            inner_src, inner = generated(rng, depth + 1)
            if kind == "weight":
                weight = round(rng.uniform(0.1, 2.0), 2)
                source += f"({inner_src}:{weight})"
            else:
                weight = ROUND if kind == "round" else SQUARE
                source += f"({inner_src})" if kind == "round" else f"[{inner_src}]"
            parts += [(s, w * weight) for s, w in inner]
    return source, parts


def test_generated_prompts_parse_to_their_weights_and_broken_ones_fail_cleanly():
    rng = random.Random(0)
    for _ in range(500):
        source, parts = generated(rng)
        got = parse_prompt(source)
        assert "".join(s for s, _ in got) == "".join(s for s, _ in parts), source
        # per character: the weight the generator gave it
        want = [w for s, w in parts for _ in s]
        have = [w for s, w in got for _ in s]
        assert have == pytest.approx(want, rel=1e-9), source
        # remove one unescaped bracket: a one-line error naming a column, or (rarely) a still-valid prompt
        spots = [i for i, c in enumerate(source) if c in "()[]" and (i == 0 or source[i - 1] != "\\")]
        if spots:
            i = rng.choice(spots)
            try:
                parse_prompt(source[:i] + source[i + 1:])
            except PromptSyntaxError as e:
                assert str(e).startswith("prompt: column ") and "\n" not in str(e)
    for _ in range(500):  # arbitrary character soup: parses or fails with the one error type
        soup = "".join(rng.choice("ab ():[]\\1.5") for _ in range(rng.randint(0, 30)))
        try:
            parse_prompt(soup)
        except PromptSyntaxError:
            pass


class FakeEncoder:
    """ChunkEncoder with deterministic states: a token's state depends on its id and position."""

    max_length = 6

    def content_ids(self, text):
        return [ord(c) for c in text if c != " "]

    def encode_chunks(self, contents):
        out = torch.zeros(len(contents), self.max_length, 3)
        for i, content in enumerate(contents):
            row = [1, *content, 2] + [0] * (self.max_length - len(content) - 2)
            ids = torch.tensor(row, dtype=torch.float32)
            out[i] = torch.stack([ids / 100 + 0.1, torch.arange(6.0) / 10, torch.ones(6)], dim=1)
        return out

    def project(self, states):
        return states


def test_weighting_is_scale_then_restore_the_mean():
    enc = FakeEncoder()
    plain = encode_weighted(enc, ["abc"])
    weighted = encode_weighted(enc, ["a(b:1.5)c"])
    w = torch.tensor([1, 1, 1.5, 1, 1, 1.0])[None, :, None]
    expected = plain * w * (plain.mean() / (plain * w).mean())
    torch.testing.assert_close(weighted, expected, rtol=1e-6, atol=0)
    assert weighted.mean().item() == pytest.approx(plain.mean().item(), rel=1e-6)


def test_long_prompts_are_chunked_and_padded_to_the_same_count():
    enc = FakeEncoder()  # 4 content tokens per chunk
    out = encode_weighted(enc, ["abcdefghij", "ab"])  # 10 tokens: 3 chunks; the short one padded to 3
    assert out.shape == (2, 18, 3)
    empty = enc.encode_chunks([[]])[0]
    torch.testing.assert_close(out[1, 6:12], empty)
    torch.testing.assert_close(out[1, 12:], empty)
    torch.testing.assert_close(out[0, 6:12], enc.encode_chunks([list(map(ord, "efgh"))])[0])
    assert chunk_count(enc, "abcdefghij") == 3 and chunk_count(enc, "") == 1
    with pytest.raises(ValueError, match="chunks: 1 is fewer than the longest prompt needs"):
        encode_weighted(enc, ["abcdefghij"], chunks=1)


def test_clip_conditioner_plain_prompts_unchanged_weighted_closed_form_and_200_tokens(tiny_sd):
    pipe = tiny_sd("1")
    cond = pipe.conditioner
    prompts = ["a photo of a cat", "an astronaut riding a horse"]
    with torch.no_grad():
        plain = cond(prompts)
        torch.testing.assert_close(encode_weighted(cond, prompts), plain, rtol=0, atol=0)
        weighted = encode_weighted(cond, ["a photo of a (cat:1.5)"])
    n = len(cond.content_ids("a photo of a"))
    w = torch.ones(77)
    w[1 + n] = 1.5  # "cat" is one token, after the start token
    z = plain[:1] * w[None, :, None]
    torch.testing.assert_close(weighted, z * (plain[:1].mean() / z.mean()), rtol=1e-5, atol=1e-6)
    long = " ".join(["a red cube on a blue sphere"] * 29)  # 7 tokens x 29 = 203 tokens
    assert len(cond.content_ids(long)) > 150
    with torch.no_grad():
        out = encode_weighted(cond, [long])
    assert chunk_count(cond, long) == 3 and out.shape == (1, 3 * 77, 64)


def test_pipeline_prompt_weighting_pairs_long_prompts_with_their_negatives(tiny_sd):
    pipe = tiny_sd("1")
    long = " ".join(["a red cube on a blue sphere"] * 29)
    ctx, neg = pipe.weighted_contexts([long, "a (cat:1.2)"], ["blurry", "[ugly]"])
    assert ctx.shape == neg.shape == (2, 3 * 77, 64)
    kw = dict(seeds=[1, 2], num_inference_steps=2, guidance_scale=5.0, output_type="latent", height=64, width=64)
    plain = pipe(prompt=["a cat", "a dog"], **kw)
    same = pipe(prompt=["a cat", "a dog"], prompt_weighting=True, **kw)
    torch.testing.assert_close(same, plain, rtol=0, atol=0)  # no syntax, one chunk: unchanged
    out = pipe(prompt=[long, "a (cat:1.3)"], negative_prompt="(blurry:1.2)", prompt_weighting=True, **kw)
    assert torch.isfinite(out).all() and (out - plain).abs().max() > 1e-4
    with pytest.raises(PromptSyntaxError, match="column 3"):
        pipe(prompt=["a (cat"], prompt_weighting=True, **kw)


def test_wordpiece_conditioners_take_the_syntax_too(tmp_path):
    from ldmkit.nn.text import TextConditioner

    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "red", "cube", "blue", ","]) + "\n")
    torch.manual_seed(0)
    cond = TextConditioner(vocab, max_length=8, embed_dim=16, n_layer=1, n_head=2).eval()
    with torch.no_grad():
        plain = cond(["a red cube"])
        torch.testing.assert_close(encode_weighted(cond, ["a red cube"]), plain, rtol=0, atol=0)
        weighted = encode_weighted(cond, ["a (red:2) cube"])
        long = encode_weighted(cond, ["a red cube, a blue cube, a red cube"])  # 11 tokens, 6 per chunk
    w = torch.tensor([1, 1, 2.0, 1, 1, 1, 1, 1])[None, :, None]
    z = plain * w
    torch.testing.assert_close(weighted, z * (plain.mean() / z.mean()), rtol=1e-5, atol=1e-6)
    assert long.shape == (1, 16, 16)


def test_cli_prompt_weighting_records_the_setting_and_names_a_broken_bracket(tiny_sd, tmp_path, capsys):
    import json

    from PIL import Image

    from ldmkit.cli.main import main

    path = tmp_path / "sd.safetensors"
    tiny_sd("1").save(path)
    argv = ["sample", str(path), "--n", "1", "--steps", "2", "--size", "64", "--prompt-weighting"]
    assert main([*argv, "--prompt", "a (cat:1.3)", "--out", str(tmp_path / "ok")]) == 0
    meta = json.loads(Image.open(tmp_path / "ok" / "00000_seed0.png").text["ldmkit"])
    assert meta["prompt_weighting"] is True and meta["prompt"] == "a (cat:1.3)"
    capsys.readouterr()
    assert main([*argv, "--prompt", "a (cat", "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and "column 3" in err, err
    assert not list((tmp_path / "bad").glob("*.png"))
