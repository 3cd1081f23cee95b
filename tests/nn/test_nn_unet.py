import pytest
import torch

from ldmkit.config import ConfigError, from_dict
from ldmkit.nn import UNetConfig, UNetModel
from ldmkit.nn.blocks import _num_groups

# Tiny: 16 base channels (GroupNorm falls back to 16 groups), 2-3 levels, one ResBlock per level.
TINY = dict(in_channels=3, out_channels=2, model_channels=16, channel_mult=(1, 2, 2), num_res_blocks=1,
            attention_resolutions=(2, 4), num_heads=2)


def tiny(**overrides) -> UNetModel:
    torch.manual_seed(0)
    return UNetModel(UNetConfig(**{**TINY, **overrides}))


def randomize_zero_layers(model: UNetModel) -> UNetModel:
    """Give the zero-initialised layers random weights so outputs depend on every path."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if torch.all(p == 0):
                p.normal_(0, 0.1)
    return model


def inputs(model: UNetModel, b: int = 2, h: int = 8, w: int = 8):
    c = model.cfg
    x = torch.randn(b, c.in_channels, h, w)
    t = torch.randint(0, 1000, (b,))
    ctx = torch.randn(b, 3, c.context_dim) if c.context_dim else None
    y = torch.randint(0, c.num_classes, (b,)) if c.num_classes else None
    return x, t, ctx, y


@pytest.mark.parametrize("size", [(8, 8), (7, 7), (9, 13)])
@pytest.mark.parametrize("variant", [
    dict(),                                                     # self-attention SpatialTransformer
    dict(context_dim=6),                                        # cross-attention
    dict(num_classes=5, context_dim=6),                         # + ADM label embedding
    dict(use_spatial_transformer=False, num_head_channels=8),   # plain AttentionBlock
    dict(resblock_updown=True, use_scale_shift_norm=True, use_spatial_transformer=False),
    dict(conv_resample=False),                                  # avg-pool down, conv-free up
])
def test_output_shape_square_and_odd_sizes(size, variant):
    model = randomize_zero_layers(tiny(**variant))
    x, t, ctx, y = inputs(model, 2, *size)
    with torch.no_grad():
        out = model(x, t, context=ctx, y=y)
    assert out.shape == (2, 2, *size) and torch.isfinite(out).all()


def test_output_is_exactly_zero_at_init():
    model = tiny(context_dim=6)
    x, t, ctx, _ = inputs(model)
    with torch.no_grad():
        assert torch.equal(model(x, t, ctx), torch.zeros(2, 2, 8, 8))
    assert torch.all(model.out[2].weight == 0) and torch.all(model.input_blocks[1][0].out_layers[3].weight == 0)
    assert torch.all(model.input_blocks[3][1].proj_out.weight == 0)


def test_float_and_scalar_timesteps():
    model = randomize_zero_layers(tiny())
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        a = model(x, torch.tensor([10, 10]))
        torch.testing.assert_close(model(x, torch.tensor([10.0, 10.0])), a)
        torch.testing.assert_close(model(x, torch.tensor(10)), a)


def test_batch_independence():
    model = randomize_zero_layers(tiny(context_dim=6, num_classes=5)).eval()
    x, t, ctx, y = inputs(model, 3, 7, 9)
    with torch.no_grad():
        full = model(x, t, ctx, y)
        single = torch.cat([model(x[i:i + 1], t[i:i + 1], ctx[i:i + 1], y[i:i + 1]) for i in range(3)])
    torch.testing.assert_close(full, single, atol=1e-5, rtol=0)


def test_adamw_steps_reduce_loss():
    model = tiny(context_dim=6)
    x, t, ctx, _ = inputs(model)
    target = torch.randn(2, 2, 8, 8)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(8):
        loss = torch.nn.functional.mse_loss(model(x, t, ctx), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_activation_checkpointing_gives_same_gradients():
    # the checkpointed run keeps the attention kernels' outputs (selective checkpointing) and recomputes the rest
    grads = []
    for use_checkpoint in (False, True):
        model = randomize_zero_layers(tiny(context_dim=6, use_checkpoint=use_checkpoint)).train()
        x, t, ctx, _ = inputs(model, 1, 5, 5)
        model(x, t, ctx).square().mean().backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 20
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], msg=name)


def test_sd_v1_key_layout_on_meta_device():
    cfg = UNetConfig(in_channels=4, out_channels=4, model_channels=320, channel_mult=(1, 2, 4, 4), num_res_blocks=2,
                     attention_resolutions=(4, 2, 1), num_heads=8, context_dim=768, use_spatial_transformer=True,
                     transformer_depth=1, legacy=False)
    with torch.device("meta"):
        sd = UNetModel(cfg).state_dict()
    assert len(sd) == 686
    assert sd["input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"].shape == (320, 768)
    assert sd["output_blocks.2.1.conv.weight"].shape == (1280, 1280, 3, 3)
    assert sd["output_blocks.5.2.conv.weight"].shape == (1280, 1280, 3, 3)
    assert sd["input_blocks.3.0.op.weight"].shape == (320, 320, 3, 3)
    assert sd["middle_block.1.proj_in.weight"].shape == (1280, 1280, 1, 1)
    assert sd["time_embed.0.weight"].shape == (1280, 320) and sd["out.2.weight"].shape == (4, 320, 3, 3)
    assert "input_blocks.1.1.transformer_blocks.0.attn1.to_q.bias" not in sd
    skips = sorted(k.split(".0.skip")[0] for k in sd if k.endswith("skip_connection.weight"))
    assert skips == sorted(["input_blocks.4", "input_blocks.7"] + [f"output_blocks.{i}" for i in range(12)])
    assert sum(v.numel() for v in sd.values()) == 859_520_964  # "859.52M" in the original config table


def test_label_emb_and_attention_block_keys():
    sd = tiny(num_classes=5).state_dict()
    assert sd["label_emb.weight"].shape == (5, 64)
    assert "label_emb.weight" not in tiny().state_dict()
    sd = tiny(use_spatial_transformer=False).state_dict()
    assert sd["input_blocks.3.1.qkv.weight"].shape == (96, 32, 1)  # Conv1d, 3-D weight
    assert sd["middle_block.1.proj_out.weight"].shape == (32, 32, 1)


def test_config_validation_messages():
    UNetConfig()  # the defaults are valid
    with pytest.raises(ConfigError, match=r"^num_head_channels: 48 does not divide 64$"):
        UNetConfig(model_channels=64, channel_mult=(1,), num_head_channels=48)
    with pytest.raises(ConfigError, match=r"^unet\.num_head_channels: 48 does not divide 64$"):
        from_dict(UNetConfig, {"model_channels": 64, "channel_mult": [1], "num_head_channels": 48}, prefix="unet")
    with pytest.raises(ConfigError, match="num_heads: 3 does not divide"):
        UNetConfig(num_heads=3)
    with pytest.raises(ConfigError, match="context_dim"):
        UNetConfig(context_dim=8, use_spatial_transformer=False)
    with pytest.raises(ConfigError, match="channel_mult"):
        UNetConfig(channel_mult=())


def test_forward_input_errors():
    model = tiny(context_dim=6)
    x, t, ctx, _ = inputs(model)
    with pytest.raises(ValueError, match="context"):
        model(x, t)
    with pytest.raises(ValueError, match="num_classes"):
        model(x, t, ctx, y=torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="expected x"):
        model(x[:, :2], t, ctx)


def test_group_norm_fallback():
    assert [_num_groups(c) for c in (320, 64, 16, 48, 7)] == [32, 32, 16, 24, 7]


def test_attention_position_option_validated_and_refused_by_exports():
    from ldmkit.convert.diffusers_config import unet_config_to_diffusers

    with pytest.raises(ConfigError, match="attention_position"):
        UNetConfig(model_channels=32, channel_mult=(1,), num_head_channels=16, attention_position="learned")
    cfg = UNetConfig(model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(1, 2),
                     num_head_channels=16, context_dim=8, attention_position="sincos")
    plain = UNetModel(UNetConfig(**{**cfg.__dict__, "attention_position": "none"}))
    model = UNetModel(cfg)
    assert model.state_dict().keys() == plain.state_dict().keys()
    with pytest.raises(ConfigError, match="attention_position.*diffusers"):
        unet_config_to_diffusers(cfg, 8)
