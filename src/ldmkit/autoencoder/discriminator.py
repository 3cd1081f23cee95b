"""PatchGAN discriminator (pix2pix / taming ``NLayerDiscriminator``), key names ``main.{i}.*``."""
from __future__ import annotations

import torch
from torch import nn


def weights_init(module: nn.Module) -> None:
    """DCGAN init as taming: conv weights N(0, 0.02); BatchNorm weight N(1, 0.02), bias 0."""
    if isinstance(module, nn.Conv2d):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class NLayerDiscriminator(nn.Module):
    """Outputs a map of real/fake logits, one per overlapping patch: (B, 1, h, w).

    ``n_layers`` stride-2 convs (the first without BatchNorm), one stride-1 conv, then a 1-channel
    conv. Convs followed by BatchNorm have no bias, as BatchNorm would cancel it.
    """

    def __init__(self, in_channels: int = 3, ndf: int = 64, n_layers: int = 3) -> None:
        super().__init__()
        kw, pad = 4, 1
        layers: list[nn.Module] = [nn.Conv2d(in_channels, ndf, kw, stride=2, padding=pad), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < n_layers else 1  # the last of these keeps the resolution
            layers += [
                nn.Conv2d(ndf * prev, ndf * mult, kw, stride=stride, padding=pad, bias=False),
                nn.BatchNorm2d(ndf * mult),
                nn.LeakyReLU(0.2, True),
            ]
        layers.append(nn.Conv2d(ndf * mult, 1, kw, stride=1, padding=pad))
        self.main = nn.Sequential(*layers)
        self.apply(weights_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x)  # (B, 1, ~H/2^n_layers - 2, ...)
