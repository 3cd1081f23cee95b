"""Key layouts of Stable Diffusion's text towers in original checkpoints <-> ldmkit's ClipTextConditioner.

ldmkit keeps the tower as ``transformer.text_model.*`` (transformers' CLIPTextModel names), which is SD 1.x's
``cond_stage_model.transformer.text_model.*`` as is. SD 2.x's FrozenOpenCLIPEmbedder stores open_clip's names
under ``cond_stage_model.model.*``: one fused ``attn.in_proj_weight`` per layer ([q; k; v] rows), ``c_fc`` /
``c_proj`` for the MLP, ``positional_embedding`` as a bare tensor. Its last resblock, ``text_projection`` and
``logit_scale`` are not read by SD 2.x (penultimate layer, no pooling) and are dropped, as diffusers does.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor

TOWER = "transformer.text_model."
POSITION_IDS = TOWER + "embeddings.position_ids"  # a buffer SD 1.x files carry; transformers recomputes it
OPENCLIP_UNUSED = ("text_projection", "logit_scale", "attn_mask")
OPENCLIP_TOP = {"token_embedding.weight": "embeddings.token_embedding.weight",
                "positional_embedding": "embeddings.position_embedding.weight",
                "ln_final.weight": "final_layer_norm.weight", "ln_final.bias": "final_layer_norm.bias"}
OPENCLIP_LAYER = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "attn.out_proj": "self_attn.out_proj",
                  "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}
QKV = ("q_proj", "k_proj", "v_proj")


def openclip_layers(keys) -> int:
    """How many ``transformer.resblocks.N`` an open_clip text state_dict holds."""
    found = {int(k.split(".")[2]) for k in keys if k.startswith("transformer.resblocks.")}
    return max(found) + 1 if found else 0


def openclip_plan(keys, n_layer: int) -> tuple[dict[str, tuple[str, int | None]], list[str], list[str]]:
    """open_clip names (after ``cond_stage_model.model.``) -> {ldmkit name: (open_clip name, q/k/v index or
    None)}; the names deliberately dropped (unused by SD); the names not understood."""
    plan: dict[str, tuple[str, int | None]] = {}
    dropped, unknown = [], []
    for key in keys:
        if key in OPENCLIP_UNUSED:
            dropped.append(key)
        elif key in OPENCLIP_TOP:
            plan[TOWER + OPENCLIP_TOP[key]] = (key, None)
        elif key.startswith("transformer.resblocks."):
            _, _, i, rest = key.split(".", 3)
            if int(i) >= n_layer:
                dropped.append(key)
                continue
            ours = f"{TOWER}encoder.layers.{i}."
            kind = rest.rsplit(".", 1)[-1]  # weight / bias
            if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
                for j, name in enumerate(QKV):
                    plan[f"{ours}self_attn.{name}.{'weight' if rest.endswith('weight') else 'bias'}"] = (key, j)
            elif rest.rsplit(".", 1)[0] in OPENCLIP_LAYER:
                plan[ours + OPENCLIP_LAYER[rest.rsplit(".", 1)[0]] + "." + kind] = (key, None)
            else:
                unknown.append(key)
        else:
            unknown.append(key)
    return plan, dropped, unknown


def openclip_fetch(get: Callable[[str], Tensor], plan: dict[str, tuple[str, int | None]]) -> dict[str, Tensor]:
    """Read every planned tensor once (``get`` reads one open_clip tensor), splitting the fused q/k/v rows."""
    out: dict[str, Tensor] = {}
    fused: dict[str, list[Tensor]] = {}
    for ours, (theirs, j) in plan.items():
        if j is None:
            out[ours] = get(theirs)
        else:
            if theirs not in fused:
                fused[theirs] = list(get(theirs).chunk(3, dim=0))
            out[ours] = fused[theirs][j]
    return out


def ldmkit_to_openclip(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """ClipTextConditioner state_dict -> open_clip names (the inverse of the plan above, q/k/v fused again)."""
    back = {v: k for k, v in OPENCLIP_TOP.items()}
    out: dict[str, Tensor] = {}
    for key, value in sd.items():
        name = key[len(TOWER):]
        if name in back:
            out[back[name]] = value
        elif name.startswith("encoder.layers."):
            _, _, i, rest = name.split(".", 3)
            sub, kind = rest.rsplit(".", 1)
            theirs = f"transformer.resblocks.{i}."
            if sub.startswith("self_attn.") and sub.split(".")[1] in QKV:
                if sub.endswith("q_proj"):  # written once, from the three parts
                    parts = [sd[f"{TOWER}encoder.layers.{i}.self_attn.{p}.{kind}"] for p in QKV]
                    out[theirs + f"attn.in_proj_{kind}"] = torch.cat(parts, dim=0)
            else:
                out[theirs + {v: k for k, v in OPENCLIP_LAYER.items()}[sub] + "." + kind] = value
        else:
            raise KeyError(f"no open_clip name for {key}")
    return out
