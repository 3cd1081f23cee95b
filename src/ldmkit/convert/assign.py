"""Full-size loading without a second copy: modules built on the meta device, their tensors assigned from the file.

Building an 860M-parameter UNet the ordinary way allocates and randomly initialises 3.4 GB that the checkpoint
then overwrites. Here no parameter exists until the loader hands over the tensor it read (already cast to the
run dtype), which becomes the parameter itself (``load_state_dict(assign=True)``): the weights are held once.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn

from ..autoencoder import build_autoencoder
from ..config import ConfigError
from ..nn import UNetModel, build_conditioner
from ..pipeline import Pipeline, PipelineConfig

META_CONDITIONERS = ("clip", "openclip")  # built empty: Stable Diffusion's 123M / 340M-parameter text towers


def empty_pipeline(cfg: PipelineConfig) -> Pipeline:
    """A Pipeline whose networks hold meta tensors (no memory) until :func:`assign_weights` fills them."""
    with torch.device("meta"):
        parts = dict(autoencoder=build_autoencoder(cfg.autoencoder), unet=UNetModel(cfg.unet))
        if cfg.conditioner.kind in META_CONDITIONERS:
            parts["conditioner"] = build_conditioner(cfg.conditioner)
    # the other conditioners are small, and some read files or fill buffers while they are built
    return Pipeline(cfg, **parts)  # the noise schedule is built here, off the meta device


def cast(t: Tensor, dtype: torch.dtype | None) -> Tensor:
    """Floating tensors in ``dtype`` (others as they are), as their own contiguous storage."""
    if dtype is not None and t.is_floating_point() and t.dtype != dtype:
        return t.to(dtype).contiguous()
    return t.contiguous()


def assign_buffers(module: nn.Module, where: str) -> None:
    """Non-persistent buffers are not in any file: rebuild the ones ldmkit knows (CLIP's position ids)."""
    for name, buf in list(module.named_buffers()):
        if not buf.is_meta:
            continue
        owner_name, _, leaf = name.rpartition(".")
        owner = module.get_submodule(owner_name) if owner_name else module
        if leaf != "position_ids":
            raise ConfigError(f"{where}: buffer {name} is not in the checkpoint and cannot be rebuilt")
        owner._buffers[leaf] = torch.arange(buf.shape[-1]).expand(buf.shape).clone()


def assign_weights(module: nn.Module, names: list[str], fetch: Callable[[str], Tensor], where: str) -> None:
    """Fill a meta-built ``module``: ``fetch(name)`` gives each state_dict entry (read, cast), assigned as is."""
    module.load_state_dict({name: fetch(name) for name in names}, strict=True, assign=True)
    assign_buffers(module, where)


def fill_pipeline(pipe: Pipeline, parts: Mapping[str, Callable[[str], Tensor]], where: str) -> Pipeline:
    """:func:`assign_weights` for every network of ``pipe`` named in ``parts`` ({attribute: fetch})."""
    for attr, fetch in parts.items():
        module = getattr(pipe, attr)
        if module is not None:
            assign_weights(module, list(module.state_dict()), fetch, f"{where} ({attr})")
    return pipe.eval()
