"""Attribute classifiers H_X(image) -> P(X): ResNet-18/50 with the input mapping of the generator.

The ResNets reproduce torchvision's structure and state-dict key names exactly (`conv1.weight`,
`bn1.running_mean`, `layer1.0.conv1.weight`, `layer1.0.downsample.0.weight`, ..., `fc.weight`), so
torchvision weights and the official IALS classifiers (torchvision children under other names) map
onto them key by key. `AttributeClassifier` holds the ResNet in its submodule `net`, so its own state
dict is torchvision's with the prefix `net.`, and `classifier.net.state_dict()` is torchvision's as is.
Only the base width and the number of classes are free; the zero-init and dilation options of
torchvision are left out.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from models.misc import assert_shape, conv_layout, record_init_kwargs

__all__ = ["ARCHS", "AttributeClassifier", "BasicBlock", "Bottleneck", "ResNet", "resnet18", "resnet50"]


# ----------------------------------------------------------------------------
# ResNet, with torchvision's module names.


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)


def _conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (ResNet-18/34)."""

    expansion = 1

    def __init__(
        self,
        in_channels: int,                       # Input channels.
        channels: int,                          # Inner channels; the output has channels * expansion.
        stride: int = 1,                        # Stride of the first convolution.
        downsample: nn.Module | None = None,    # Projection of the shortcut, None for the identity.
    ) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_channels, channels, stride)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(channels, channels)
        self.bn2 = nn.BatchNorm2d(channels)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out: torch.Tensor = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = self.relu(out + identity)
        return out


class Bottleneck(nn.Module):
    """1x1, 3x3, 1x1 convolutions with a residual connection (ResNet-50 v1.5: the stride is in conv2)."""

    expansion = 4

    def __init__(
        self,
        in_channels: int,                       # Input channels.
        channels: int,                          # Inner channels; the output has channels * expansion.
        stride: int = 1,                        # Stride of the 3x3 convolution.
        downsample: nn.Module | None = None,    # Projection of the shortcut, None for the identity.
    ) -> None:
        super().__init__()
        self.conv1 = _conv1x1(in_channels, channels)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = _conv3x3(channels, channels, stride)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv3 = _conv1x1(channels, channels * self.expansion)
        self.bn3 = nn.BatchNorm2d(channels * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out: torch.Tensor = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out = self.relu(out + identity)
        return out


class ResNet(nn.Module):
    """torchvision's ResNet: 7x7 stride-2 stem, max-pool, four stages, global average pool, linear head."""

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],  # Residual block type.
        layers: Sequence[int],                  # Number of blocks in each of the four stages.
        width: int = 64,                        # Base channels; stage i has width * 2**i inner channels.
        num_classes: int = 1000,                # Outputs of the linear head.
        img_channels: int = 3,                  # Input channels.
    ) -> None:
        super().__init__()
        if len(layers) != 4:
            raise ValueError(f"ResNet needs 4 stages, got layers={list(layers)}")
        self.in_channels = width

        # Stem.
        self.conv1 = nn.Conv2d(img_channels, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

        # Stages.
        self.layer1 = self._make_layer(block, width, layers[0])
        self.layer2 = self._make_layer(block, width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(block, width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(block, width * 8, layers[3], stride=2)

        # Head.
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(width * 8 * block.expansion, num_classes)

        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def _make_layer(
        self, block: type[BasicBlock] | type[Bottleneck], channels: int, num_blocks: int, stride: int = 1
    ) -> nn.Sequential:
        out_channels = channels * block.expansion
        downsample = None
        if stride != 1 or self.in_channels != out_channels:
            downsample = nn.Sequential(
                _conv1x1(self.in_channels, out_channels, stride), nn.BatchNorm2d(out_channels)
            )
        blocks: list[nn.Module] = [block(self.in_channels, channels, stride, downsample)]
        self.in_channels = out_channels
        blocks += [block(out_channels, channels) for _ in range(1, num_blocks)]
        return nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Stem.
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))

        # Stages.
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))

        # Head.
        x = torch.flatten(self.avgpool(x), 1)  # [N, C]
        x = self.fc(x)  # [N, num_classes]
        return x


def resnet18(*, width: int = 64, num_classes: int = 1000) -> ResNet:
    """ResNet-18 (BasicBlock, [2, 2, 2, 2]); with width 64 it matches `torchvision.models.resnet18`."""
    return ResNet(BasicBlock, [2, 2, 2, 2], width=width, num_classes=num_classes)


def resnet34(*, width: int = 64, num_classes: int = 1000) -> ResNet:
    """ResNet-34 (BasicBlock, [3, 4, 6, 3]); with width 64 it matches `torchvision.models.resnet34`."""
    return ResNet(BasicBlock, [3, 4, 6, 3], width=width, num_classes=num_classes)


def resnet50(*, width: int = 64, num_classes: int = 1000) -> ResNet:
    """ResNet-50 v1.5 (Bottleneck, [3, 4, 6, 3]); with width 64 it matches `torchvision.models.resnet50`."""
    return ResNet(Bottleneck, [3, 4, 6, 3], width=width, num_classes=num_classes)


ARCHS = {"resnet18": resnet18, "resnet34": resnet34, "resnet50": resnet50}


# ----------------------------------------------------------------------------
# Attribute classifier.


@record_init_kwargs
class AttributeClassifier(nn.Module):
    """A classifier of one attribute, fed generator images in [-1, 1] at any resolution.

    `preprocess` maps a generator image to the network input: the value range [-1, 1] is mapped
    linearly onto `value_range`, the image is resized to `input_resolution` (area averaging when
    shrinking, which equals the official `F.avg_pool2d(img, 4, 4)` for 1024 -> 256, bilinear when
    enlarging), then normalised by `mean` and `std` if given. The official IALS classifiers use
    `value_range=(0, 1)` and no normalisation. Use it in eval mode (BatchNorm running statistics).
    """

    init_kwargs: dict[str, Any]  # Constructor arguments, recorded by record_init_kwargs.
    mean: torch.Tensor
    std: torch.Tensor

    def __init__(
        self,
        arch: str = "resnet18",                 # Network: 'resnet18' or 'resnet50'.
        width: int = 64,                        # Base channels of the ResNet (64 as torchvision).
        num_classes: int = 2,                   # Outputs; class 1 is "has the attribute".
        input_resolution: int = 256,            # Side of the square network input.
        value_range: Sequence[float] = (0.0, 1.0),  # Value range of the network input.
        mean: Sequence[float] | None = None,    # Per-channel mean subtracted after the mapping, or None.
        std: Sequence[float] | None = None,     # Per-channel std divided by after the mapping, or None.
    ) -> None:
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"Unknown classifier arch {arch!r}; expected one of {sorted(ARCHS)}")
        if width < 1 or num_classes < 2 or input_resolution < 1:
            raise ValueError(
                f"Need width >= 1, num_classes >= 2 and input_resolution >= 1, got width={width}, "
                f"num_classes={num_classes}, input_resolution={input_resolution}"
            )
        if len(value_range) != 2 or not value_range[0] < value_range[1]:
            raise ValueError(f"value_range must be (low, high) with low < high, got {value_range}")
        if (mean is None) != (std is None):
            raise ValueError("mean and std must be given together")
        self.arch = arch
        self.num_classes = num_classes
        self.input_resolution = input_resolution
        self.img_channels = 3
        self.value_range = (float(value_range[0]), float(value_range[1]))
        self.use_normalization = mean is not None and std is not None

        # Normalisation, as buffers that follow the module's device but stay out of the state dict.
        if mean is not None and std is not None:
            if len(mean) != self.img_channels or len(std) != self.img_channels or min(std) <= 0:
                raise ValueError(f"mean and std need {self.img_channels} values, std > 0; got {mean}, {std}")
        shape = [1, self.img_channels, 1, 1]
        mean_t = torch.tensor(mean if mean is not None else [0.0] * 3, dtype=torch.float32).reshape(shape)
        std_t = torch.tensor(std if std is not None else [1.0] * 3, dtype=torch.float32).reshape(shape)
        self.register_buffer("mean", mean_t, persistent=False)
        self.register_buffer("std", std_t, persistent=False)

        self.net = ARCHS[arch](width=width, num_classes=num_classes)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Map generator images to the network input.

        Args:
            images: Generator output in [-1, 1], `[N, 3, H, W]` (or `[N, 1, H, W]` greyscale, repeated
                to 3 channels), any resolution.

        Returns:
            The network input, `[N, 3, input_resolution, input_resolution]` (in `conv_layout`).
        """
        if images.ndim == 4 and images.shape[1] == 1:
            images = images.expand(-1, self.img_channels, -1, -1)  # [N, 3, H, W]
        assert_shape(images, [None, self.img_channels, None, None])
        low, high = self.value_range
        x = (images + 1) * ((high - low) / 2) + low  # [N, 3, H, W]

        # Resize.
        size = (self.input_resolution, self.input_resolution)
        height, width = images.shape[2:]
        if (height, width) != size:
            if height >= size[0] and width >= size[1]:
                x = F.interpolate(x, size=size, mode="area")
            else:
                x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=False)

        if self.use_normalization:
            x = (x - self.mean) / self.std
        return conv_layout(x)  # [N, 3, R, R]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Classify preprocessed images.

        Args:
            x: Network input from `preprocess`, `[N, 3, input_resolution, input_resolution]`.

        Returns:
            Logits, `[N, num_classes]`.
        """
        assert_shape(x, [None, self.img_channels, self.input_resolution, self.input_resolution])
        logits: torch.Tensor = self.net(x)  # [N, num_classes]
        return logits

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Classify generator images.

        Args:
            images: Generator output in [-1, 1], `[N, 3, H, W]`.

        Returns:
            Logits, `[N, num_classes]`.
        """
        return self.forward(self.preprocess(images))

    def probability(self, images: torch.Tensor) -> torch.Tensor:
        """The probability H_X(image) that the attribute is present (softmax of class 1).

        Args:
            images: Generator output in [-1, 1], `[N, 3, H, W]`.

        Returns:
            Probabilities in [0, 1], `[N]`.
        """
        return torch.softmax(self.logits(images), dim=1)[:, 1]
