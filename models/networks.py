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
    # Capacity: every width (stem and blocks) times width_multiplier (rounded, >= 1), and each
    # block followed by depth - 1 stride-1 blocks of its width; still depthwise-separable
    # throughout. 1.0 and 1 are the paper-sized 18 k-parameter net.
    width_multiplier: float = 1.0
    depth: int = 1

    def layout(self) -> tuple[int, list[tuple[int, int]]]:
        """(stem width, [(out_channels, stride), ...]) after width_multiplier and depth."""
        if self.width_multiplier <= 0 or self.depth < 1:
            raise ValueError(
                f"SCNN width_multiplier must be > 0 and depth >= 1, got "
                f"{self.width_multiplier} and {self.depth}"
            )

        def scaled(width: int) -> int:
            return max(1, round(width * self.width_multiplier))

        blocks: list[tuple[int, int]] = []
        for out_chs, stride in self.blocks:
            blocks.append((scaled(out_chs), stride))
            blocks += [(scaled(out_chs), 1)] * (self.depth - 1)
        return scaled(self.stem_width), blocks


class SCNN(MaskedClassifier):
    """Fully convolutional depthwise-separable CNN with masked pooling (see module docstring)."""

    def __init__(self, config: SCNNConfig) -> None:
        super().__init__()
        self.config = config
        stem_width, blocks = config.layout()
        self.stem = nn.Sequential(
            nn.Conv2d(config.in_bands, stem_width, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(stem_width),
            nn.ReLU(),
        )
        layers: list[nn.Module] = []
        width = stem_width
        for out_chs, stride in blocks:
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


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 convs with a residual; ``downsample`` matches the shortcut.

    Args:
        in_chs: input channels.
        out_chs: output channels.
        stride: stride of ``conv1`` (1 or 2); a 1x1 stride-``stride`` conv + BN projects the
            shortcut when the stride or width changes, otherwise ``downsample`` is the identity.
    """

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chs, out_chs, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_chs)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_chs, out_chs, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_chs)
        self.act2 = nn.ReLU()
        self.downsample: nn.Module = (
            nn.Sequential(
                nn.Conv2d(in_chs, out_chs, 1, stride=stride, bias=False), nn.BatchNorm2d(out_chs)
            )
            if stride != 1 or in_chs != out_chs
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.downsample(x)
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.bn2(self.conv2(x))
        return self.act2(x + shortcut)


@dataclass
class ResNetConfig:
    """Architecture of :class:`ResNet` (ResNet-18 layout by default, narrow for CPU)."""

    in_bands: int = 6
    base_width: int = 16  # torchvision's resnet18 uses 64; 16 keeps it ~0.7 M parameters
    layers: tuple[int, ...] = (2, 2, 2, 2)  # basic blocks per stage; stage i has width base*2**i
    dropout: float = 0.1


class ResNet(MaskedClassifier):
    """ResNet-18-style trunk, fully convolutional, with a 1x1 head and masked pooling.

    Every downsampling (7x7 stem conv, 3x3 max-pool, 3x3 / 1x1 stride-2 convs) maps a size n to
    ceil(n / 2), so :func:`downsample_mask` lands on the logit map's grid (1/32 of the input
    for the default four stages).
    """

    def __init__(self, config: ResNetConfig) -> None:
        super().__init__()
        self.config = config
        width = config.base_width
        self.conv1 = nn.Conv2d(config.in_bands, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.act1 = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        stages: list[nn.Module] = []
        for index, depth in enumerate(config.layers):
            out_chs = config.base_width * 2**index
            blocks: list[nn.Module] = []
            for block in range(depth):
                stride = 2 if index > 0 and block == 0 else 1
                blocks.append(BasicBlock(width, out_chs, stride))
                width = out_chs
            stages.append(nn.Sequential(*blocks))
        self.layers = nn.Sequential(*stages)
        self.dropout = nn.Dropout2d(config.dropout) if config.dropout > 0 else nn.Identity()
        self.head = nn.Conv2d(width, 1, 1)
        self.halvings = 2 + max(len(config.layers) - 1, 0)

    def forward_logits(
        self, features: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(logit_map (N, 1, H/32, W/32), pooled logit (N,)) for the default four stages."""
        x = self.maxpool(self.act1(self.bn1(self.conv1(features))))
        logit_map = self.head(self.dropout(self.layers(x)))
        return logit_map, masked_mean(logit_map, downsample_mask(mask, self.halvings))


class ConvBnAct(nn.Module):
    """3x3 conv (stride 1), optional BatchNorm, activation: one VGG layer."""

    def __init__(self, in_chs: int, out_chs: int, batch_norm: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, 3, padding=1, bias=not batch_norm)
        self.bn = nn.BatchNorm2d(out_chs) if batch_norm else nn.Identity()
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


@dataclass
class VGGConfig:
    """Architecture of :class:`VGG` (VGG-11 layout "A" with BatchNorm by default, narrow)."""

    in_bands: int = 6
    base_width: int = 16  # VGG-11 uses 64; widths are base * (1, 2, 4, 8, 8)
    # Conv layers per stage; each stage ends in a 2x2 max-pool (ceil mode).
    stages: tuple[int, ...] = (1, 1, 2, 2, 2)
    batch_norm: bool = True
    dropout: float = 0.1


class VGG(MaskedClassifier):
    """VGG-11-style trunk; the fully connected classifier becomes a 1x1 head + masked pooling.

    The max-pools use ``ceil_mode`` so that odd sizes round up like :func:`downsample_mask`.
    """

    def __init__(self, config: VGGConfig) -> None:
        super().__init__()
        self.config = config
        multipliers = (1, 2, 4, 8, 8, 8, 8)
        layers: list[nn.Module] = []
        width = config.in_bands
        for index, depth in enumerate(config.stages):
            out_chs = config.base_width * multipliers[min(index, len(multipliers) - 1)]
            for _ in range(depth):
                layers.append(ConvBnAct(width, out_chs, config.batch_norm))
                width = out_chs
            layers.append(nn.MaxPool2d(2, stride=2, ceil_mode=True))
        self.features = nn.Sequential(*layers)
        self.dropout = nn.Dropout2d(config.dropout) if config.dropout > 0 else nn.Identity()
        self.head = nn.Conv2d(width, 1, 1)
        self.halvings = len(config.stages)

    def forward_logits(
        self, features: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(logit_map (N, 1, H/32, W/32), pooled logit (N,)) for the default five stages."""
        logit_map = self.head(self.dropout(self.features(features)))
        return logit_map, masked_mean(logit_map, downsample_mask(mask, self.halvings))


@dataclass
class PlainCNNConfig:
    """Architecture of :class:`PlainCNN`: the issue-13 reference, a 3-block VGG-style CNN."""

    in_bands: int = 1
    widths: tuple[int, ...] = (32, 64, 128)  # one block per width, each ends in a 2x2 max-pool
    convs_per_block: int = 2
    dropout: float = 0.1


class PlainCNN(MaskedClassifier):
    """The plain reference CNN: per block (3x3 conv, BatchNorm, ReLU) x ``convs_per_block`` and
    a 2x2 max-pool (ceil mode), then the 1x1 head and masked pooling of the other networks, so
    it trains, exports to ONNX and serves like them. Logit map at 1/2**len(widths)."""

    def __init__(self, config: PlainCNNConfig) -> None:
        super().__init__()
        if not config.widths or config.convs_per_block < 1:
            raise ValueError("PlainCNN needs at least one block and one conv per block")
        self.config = config
        layers: list[nn.Module] = []
        width = config.in_bands
        for out_chs in config.widths:
            for _ in range(config.convs_per_block):
                layers.append(ConvBnAct(width, out_chs))
                width = out_chs
            layers.append(nn.MaxPool2d(2, stride=2, ceil_mode=True))
        self.features = nn.Sequential(*layers)
        self.dropout = nn.Dropout2d(config.dropout) if config.dropout > 0 else nn.Identity()
        self.head = nn.Conv2d(width, 1, 1)
        self.halvings = len(config.widths)

    def forward_logits(
        self, features: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(logit_map (N, 1, H/8, W/8), pooled logit (N,)) for the default three blocks."""
        logit_map = self.head(self.dropout(self.features(features)))
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
    """The paper's separable CNN, sized for 220 x 300 inputs; ``width_multiplier`` / ``depth``
    widen and deepen it (see :class:`SCNNConfig`)."""
    if "blocks" in overrides:  # from a JSON model card: lists, not tuples
        overrides["blocks"] = [tuple(block) for block in overrides["blocks"]]
    return SCNN(SCNNConfig(in_bands=in_bands, **overrides))


@register("plaincnn")
def plaincnn(in_bands: int = 1, **overrides: Any) -> PlainCNN:
    """The issue-13 reference: 3 VGG-style blocks of 32-64-128 filters with BatchNorm."""
    if "widths" in overrides:
        overrides["widths"] = tuple(overrides["widths"])
    return PlainCNN(PlainCNNConfig(in_bands=in_bands, **overrides))


@register("resnet18")
def resnet18(in_bands: int = 6, base_width: int = 16, **overrides: Any) -> ResNet:
    """ResNet-18 layout (2-2-2-2 basic blocks), ``base_width`` 16-64 (64 = torchvision's)."""
    return ResNet(ResNetConfig(in_bands=in_bands, base_width=base_width, **overrides))


@register("vgg11")
def vgg11(in_bands: int = 6, base_width: int = 16, **overrides: Any) -> VGG:
    """VGG-11 (configuration "A") with BatchNorm, ``base_width`` 16-64 (64 = the original)."""
    return VGG(VGGConfig(in_bands=in_bands, base_width=base_width, **overrides))


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


def registered_models() -> list[str]:
    """Names accepted by :func:`create_model`."""
    return sorted(_REGISTRY)


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
