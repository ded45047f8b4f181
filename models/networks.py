"""Network definitions (PyTorch). Imported by training and export only: serving runs ONNX.

The paper's "SCNN" is a depthwise-separable CNN (depthwise KxK per channel, then pointwise 1x1).
Ours is fully convolutional: it produces a per-pixel logit map at 1/8 of the input resolution and
pools it over the cell mask into one well-level probability, so that background (empty plate)
does not dilute the call and the map doubles as an overlay.

Inputs:  ``features`` (N, B, H, W) float32 from :func:`models.pipeline.prepare`,
         ``mask``     (N, 1, H, W) float32 in [0, 1] (1 = cell).
Outputs: ``logit_map`` (N, 1, H/8, W/8) float32, ``probability`` (N,) float32 = P(high).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812  (the conventional alias)

# Small uniform weight added to the pooled mask so an image with no detected cells still gets
# a (global-mean) call instead of a division by zero.
_MASK_FLOOR = 1e-3


class DepthwiseSeparableConv(nn.Module):
    """Depthwise KxK conv per channel, then a pointwise 1x1 conv (timm's block, typed).

    Args:
        in_chs: input channels.
        out_chs: output channels.
        kernel_size: depthwise kernel size (odd).
        stride: depthwise stride.
        act_layer: activation factory.
        norm_layer: normalisation factory, or None for no normalisation.
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int = 3,
        stride: int = 1,
        act_layer: Callable[[], nn.Module] = nn.ReLU,
        norm_layer: Callable[[int], nn.Module] | None = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        self.conv_dw = nn.Conv2d(
            in_chs,
            in_chs,
            kernel_size,
            stride=stride,
            padding=kernel_size // 2,
            groups=in_chs,
            bias=norm_layer is None,
        )
        self.bn1 = norm_layer(in_chs) if norm_layer else nn.Identity()
        self.act1 = act_layer()
        self.conv_pw = nn.Conv2d(in_chs, out_chs, 1, bias=norm_layer is None)
        self.bn2 = norm_layer(out_chs) if norm_layer else nn.Identity()
        self.act2 = act_layer()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.conv_dw(x)))
        return self.act2(self.bn2(self.conv_pw(x)))


def downsample_mask(mask: torch.Tensor, halvings: int) -> torch.Tensor:
    """Average-pool ``mask`` (N, 1, H, W) by 2 ``halvings`` times, rounding sizes up.

    A stride-2, padding-1, 3x3 convolution maps a size n to ceil(n / 2), so this lands exactly
    on the logit map's grid. (Adaptive pooling would too, but the ONNX exporter cannot export it
    with a size known only at run time.)
    """
    for _ in range(halvings):
        mask = F.avg_pool2d(mask, kernel_size=2, stride=2, ceil_mode=True)
    return mask


def masked_mean(logit_map: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Mean of ``logit_map`` (N, 1, h, w) weighted by a mask ``weights`` (N, 1, h, w) in [0, 1].

    Returns (N,) pooled logits. A small floor keeps an empty mask from dividing by zero.
    """
    weights = weights + _MASK_FLOOR
    return (logit_map * weights).sum(dim=(1, 2, 3)) / weights.sum(dim=(1, 2, 3))


class MaskedClassifier(nn.Module):
    """A network that maps (features, mask) to a logit map and a mask-pooled logit.

    Subclasses implement :meth:`forward_logits`; :meth:`forward` (what ONNX exports) adds the
    sigmoid. Training uses the pooled logit directly (BCE-with-logits is numerically safer).
    """

    def forward_logits(
        self, features: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def forward(
        self, features: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        logit_map, pooled = self.forward_logits(features, mask)
        return logit_map, torch.sigmoid(pooled)


@dataclass
class SCNNConfig:
    """Architecture of :class:`SCNN`; saved in checkpoints and model cards."""

    in_bands: int = 6
    stem_width: int = 24
    # (out_channels, stride) of each separable block; three stride-2 stages => 1/8 resolution.
    # Strides must be 1 or 2 (the mask is pooled by 2 once per stride-2 layer).
    blocks: list[tuple[int, int]] = field(
        default_factory=lambda: [(32, 2), (32, 1), (64, 2), (64, 1), (96, 1)]
    )
    kernel_size: int = 3
    dropout: float = 0.1


class SCNN(MaskedClassifier):
    """Fully convolutional depthwise-separable CNN with masked pooling (see module docstring)."""

    def __init__(self, config: SCNNConfig) -> None:
        super().__init__()
        self.config = config
        self.stem = nn.Sequential(
            nn.Conv2d(config.in_bands, config.stem_width, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(config.stem_width),
            nn.ReLU(),
        )
        layers: list[nn.Module] = []
        width = config.stem_width
        for out_chs, stride in config.blocks:
            layers.append(DepthwiseSeparableConv(width, out_chs, config.kernel_size, stride))
            width = out_chs
        self.blocks = nn.Sequential(*layers)
        self.dropout = nn.Dropout2d(config.dropout) if config.dropout > 0 else nn.Identity()
        self.head = nn.Conv2d(width, 1, 1)
        self.halvings = 1 + sum(1 for _, stride in config.blocks if stride == 2)

    def forward_logits(
        self, features: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(logit_map (N, 1, h, w), pooled logit (N,)); training uses the logit directly."""
        x = self.blocks(self.stem(features))
        logit_map = self.head(self.dropout(x))
        return logit_map, masked_mean(logit_map, downsample_mask(mask, self.halvings))


_REGISTRY: dict[str, Callable[..., MaskedClassifier]] = {}


def register(
    name: str,
) -> Callable[[Callable[..., MaskedClassifier]], Callable[..., MaskedClassifier]]:
    """Decorator adding a model factory to the registry under ``name``."""

    def wrap(factory: Callable[..., MaskedClassifier]) -> Callable[..., MaskedClassifier]:
        _REGISTRY[name] = factory
        return factory

    return wrap


@register("scnn")
def scnn(in_bands: int = 6, **overrides: Any) -> SCNN:
    """The paper's separable CNN, sized for 220 x 300 inputs."""
    return SCNN(SCNNConfig(in_bands=in_bands, **overrides))


def create_model(name: str, **kwargs: Any) -> MaskedClassifier:
    """Build a registered network by name, e.g. ``create_model("scnn", in_bands=6)``."""
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(sorted(_REGISTRY))}") from None
    return factory(**kwargs)


def architecture_of(model: nn.Module) -> dict[str, Any]:
    """The config that rebuilds ``model`` (for checkpoints and model cards)."""
    config = getattr(model, "config", None)
    return asdict(config) if config is not None else {}


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
