"""Pipeline.set_precision: half-precision UNet + first stage, float32 in and out, close to the float32 result."""
import pytest
import torch

from ldmkit.nn import UNetConfig, UNetModel
from ldmkit.nn.inference import inference_dtype, prepare_inference
from ldmkit.pipeline import Pipeline
from test_pipeline_sampling import randomize, tiny_config


def test_prepare_inference_casts_and_uses_channels_last_for_half_on_cpu():
    net = UNetModel(UNetConfig(in_channels=3, out_channels=3, model_channels=16, channel_mult=(1, 2),
                               num_res_blocks=1, attention_resolutions=(2,), num_heads=2))
    conv = net.input_blocks[0][0].weight
    assert conv.is_contiguous()
    prepare_inference(net, torch.bfloat16)
    conv = net.input_blocks[0][0].weight
    assert conv.dtype == torch.bfloat16 and conv.is_contiguous(memory_format=torch.channels_last)
    assert not net.training
    prepare_inference(net, torch.float32)  # float32 keeps whatever layout it has; only the dtype changes
    assert net.input_blocks[0][0].weight.dtype == torch.float32
    with pytest.raises(ValueError, match="precision: expected one of fp32, bf16, fp16, got 'int8'"):
        inference_dtype("int8")


def test_bf16_pipeline_samples_float32_close_to_fp32():
    pipe = randomize(Pipeline(tiny_config()))
    kwargs = dict(num_images=2, num_inference_steps=4, guidance_scale=2.0, seeds=[0, 1], output_type="pt")
    ref = pipe(**pipe_inputs(pipe), **kwargs)
    ref = ref if isinstance(ref, torch.Tensor) else ref[0]
    pipe.set_precision("bf16")
    assert pipe.dtype == torch.bfloat16
    out = pipe(**pipe_inputs(pipe), **kwargs)
    out = out if isinstance(out, torch.Tensor) else out[0]
    assert out.dtype == torch.float32 and out.shape == ref.shape
    assert (out - ref).abs().mean() < 0.05  # bf16 rounding through 4 steps, not a different image
    z = pipe.encode_latents(ref, sample=False)
    assert z.dtype == torch.float32
    pipe.set_precision("fp32")  # back to float32 compute; the weights keep their bf16 rounding
    assert pipe.dtype == torch.float32


def pipe_inputs(pipe):
    kind = pipe.cfg.conditioner.kind
    return {"class_labels": [0, 1]} if kind == "class" else {}


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_sampling_reuses_cross_attention_keys_with_the_same_result(precision, monkeypatch):
    """The pipeline's sampler loop projects the (guided) context once per layer, not once per step, and gives
    bitwise the samples of the per-step projections."""
    import contextlib

    import ldmkit.pipeline as pipeline_module
    from ldmkit.nn import CrossAttention

    pipe = randomize(Pipeline(tiny_config()))
    pipe.set_precision(precision)
    calls = []
    for m in pipe.unet.modules():
        if isinstance(m, CrossAttention):
            m.to_k.register_forward_hook(lambda *a: calls.append(1))
    kwargs = dict(num_images=2, num_inference_steps=5, guidance_scale=2.0, seeds=[0, 1], output_type="latent")
    out = pipe(**pipe_inputs(pipe), **kwargs)
    cached_calls = len(calls)
    calls.clear()
    monkeypatch.setattr(pipeline_module, "reuse_context_kv", lambda module: contextlib.nullcontext())
    ref = pipe(**pipe_inputs(pipe), **kwargs)
    layers = sum(isinstance(m, CrossAttention) for m in pipe.unet.modules()) // 2
    assert len(calls) == 5 * 2 * layers  # per step: self- and cross-attention keys of each layer
    assert cached_calls == 5 * layers + layers  # cross-attention keys in the first step only
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


def test_first_stage_runs_channels_last_in_float32_on_cpu_with_the_same_output():
    pipe = randomize(Pipeline(tiny_config()))
    z = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = pipe.decode_latents(z)
    pipe.set_precision("fp32")
    enc_conv = pipe.autoencoder.encoder.conv_in.weight
    assert enc_conv.dtype == torch.float32 and enc_conv.is_contiguous(memory_format=torch.channels_last)
    assert pipe.unet.input_blocks[0][0].weight.is_contiguous()  # the UNet keeps NCHW in float32
    with torch.no_grad():
        out = pipe.decode_latents(z)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
