"""Per-sample random streams: every draw of a training step is invariant to how the global batch is split."""
import torch

from ldmkit.autoencoder.regularizers import DiagonalGaussian
from ldmkit.config import load_config
from ldmkit.diffusion import noise as noise_lib
from ldmkit.nn import ClassEmbedder
from ldmkit.pipeline_inputs import batch_conditioning
from ldmkit.training.ldm_loop import LDMRunConfig
from ldmkit.training.seeding import sample_generators, sample_seed
from ldmkit.training.stream import split_batch


def gens(step, start, count):
    return sample_generators(7, step, start, count)


def test_seeds_are_deterministic_and_distinct():
    assert sample_seed(7, 3, 5) == sample_seed(7, 3, 5)
    seeds = {sample_seed(s, t, p) for s in range(3) for t in range(20) for p in range(64)}
    assert len(seeds) == 3 * 20 * 64 and all(0 <= s < 2**63 for s in seeds)


def test_draws_do_not_depend_on_the_split():
    whole = noise_lib.randn((4, 3, 2, 2), gens(1, 0, 4))
    halves = torch.cat([noise_lib.randn((2, 3, 2, 2), gens(1, 0, 2)), noise_lib.randn((2, 3, 2, 2), gens(1, 2, 2))])
    assert torch.equal(whole, halves)
    assert not torch.equal(whole, noise_lib.randn((4, 3, 2, 2), gens(2, 0, 4)))  # another step, other noise

    moments = torch.randn(4, 6, 2, 2)
    post = DiagonalGaussian(moments)
    parts = [DiagonalGaussian(moments[i:i + 2]).sample(gens(1, i, 2)) for i in (0, 2)]
    assert torch.equal(post.sample(gens(1, 0, 4)), torch.cat(parts))

    emb = ClassEmbedder(10, 8)
    labels = torch.arange(8)
    dropped = emb.drop(labels, 0.5, gens(1, 0, 8))
    assert torch.equal(dropped, torch.cat([emb.drop(labels[:4], 0.5, gens(1, 0, 4)),
                                           emb.drop(labels[4:], 0.5, gens(1, 4, 4))]))
    assert 0 < int((dropped == 10).sum()) < 8  # the null class (row num_classes) replaced some


def test_training_pairs_do_not_depend_on_the_split():
    images = torch.rand(4, 3, 16, 16) * 2 - 1
    for preset, extra in (("tiny/ldm-sr", ["concat.degradation=bsr"]), ("tiny/ldm-inpaint", [])):
        cfg = load_config(LDMRunConfig, preset, ["first_stage=unused.safetensors", *extra])
        batch = {"image": images, "index": torch.arange(4)}
        whole = batch_conditioning(cfg, batch, gens(0, 0, 4))
        parts = [batch_conditioning(cfg, half, gens(0, 2 * i, 2)) for i, half in enumerate(split_batch(batch, 2))]
        key = "low_res" if "sr" in preset else "mask"
        assert torch.equal(whole[key], torch.cat([p[key] for p in parts])), preset
        assert not torch.equal(whole[key][0], whole[key][1])  # each sample its own degradation / mask
