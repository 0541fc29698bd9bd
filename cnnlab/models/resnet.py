"""ResNet-18/34/50/101/152 for ImageNet (He et al. 2016), key for key as torchvision builds them.

Two blocks, drawn as in the paper's Figure 5: `BasicBlock` (two 3x3 convolutions, used by ResNet-18/34)
and `Bottleneck` (1x1 reduce, 3x3, 1x1 expand by 4, used by ResNet-50/101/152). The shortcut is the
identity, or a 1x1 convolution + batch norm (the paper's option B) where the shape changes.

Like torchvision (and unlike the paper), the bottleneck's stride sits on its 3x3 convolution rather
than on the first 1x1, the variant known as "ResNet v1.5": same parameters, slightly more accurate.
`state_dict` keys equal torchvision's, so its published weights load with `strict=True`; at 1000 classes
ResNet-50 has 25,557,032 parameters and ResNet-152 60,192,808.
"""

from __future__ import annotations

import torch
from torch import nn

from cnnlab.errors import CnnlabError, positive_int
from cnnlab.models._base import ConvNet
from cnnlab.models._registry import check_options, register_model

__all__ = ["BasicBlock", "Bottleneck", "ResNet", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution, padding 1; no bias because batch norm follows."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """1x1 convolution; no bias because batch norm follows."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """`(N, in_planes, H, W)` -> `(N, planes, H/stride, W/stride)`: relu(F(x) + x), F = two 3x3 convs."""

    expansion = 1  # output channels = planes * expansion

    def __init__(self, in_planes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample  # projection shortcut where the shape changes, else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu(out)
        out = self.conv2(out)
        out = self.bn2(out)
        if self.downsample is not None:
            identity = self.downsample(x)
        out = out + identity
        out = self.relu(out)
        return out


class Bottleneck(nn.Module):
    """`(N, in_planes, H, W)` -> `(N, 4*planes, H/stride, W/stride)`: 1x1 reduce, 3x3, 1x1 expand, + x."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = conv1x1(in_planes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)  # stride here: ResNet v1.5 (the paper strides conv1)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu(out)
        out = self.conv2(out)
        out = self.bn2(out)
        out = self.relu(out)
        out = self.conv3(out)
        out = self.bn3(out)
        if self.downsample is not None:
            identity = self.downsample(x)
        out = out + identity
        out = self.relu(out)
        return out


def _make_stage(
    block: type[BasicBlock | Bottleneck], in_planes: int, planes: int, blocks: int, stride: int
) -> nn.Sequential:
    """`blocks` blocks; the first may change stride and width, so it gets the 1x1 projection shortcut."""
    out_planes = planes * block.expansion
    downsample = None
    if stride != 1 or in_planes != out_planes:
        downsample = nn.Sequential(conv1x1(in_planes, out_planes, stride), nn.BatchNorm2d(out_planes))
    layers = [block(in_planes, planes, stride, downsample)]
    layers += [block(out_planes, planes) for _ in range(1, blocks)]
    return nn.Sequential(*layers)


class ResNet(ConvNet):
    """7x7/2 stem + 3x3/2 max-pool, four stages of blocks (widths 64-512, strides 4-32), avg-pool, fc.

    Args:
        block: `BasicBlock` or `Bottleneck`.
        layers: number of blocks in each of the four stages, e.g. `(3, 4, 6, 3)` for ResNet-50.
        num_classes: outputs of the fc layer.
        in_channels: channels of the input images; only the stem convolution depends on it.
        zero_init_residual: start the last batch norm of every block at zero, so that each block is the
            identity at initialisation (Goyal et al. 2017); improves large-batch training a little.
    """

    def __init__(
        self,
        block: type[BasicBlock | Bottleneck],
        layers: tuple[int, int, int, int],
        num_classes: int = 1000,
        in_channels: int = 3,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        if block not in (BasicBlock, Bottleneck):
            raise CnnlabError(f"resnet: block must be BasicBlock or Bottleneck, got {block!r}")
        if not isinstance(zero_init_residual, bool):
            raise CnnlabError(f"resnet: zero_init_residual must be True or False, got {zero_init_residual!r}")
        if len(layers) != 4:
            raise CnnlabError(f"resnet: layers must give 4 stage depths, got {tuple(layers)!r}")
        self.num_classes = num_classes
        self.num_features = 512 * block.expansion  # width of the vector fc reads
        self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        widths = (64, 128, 256, 512)
        in_planes = 64
        for i, (planes, blocks) in enumerate(zip(widths, layers, strict=True)):
            stride = 1 if i == 0 else 2  # the stem already reduced by 4 before layer1
            self.add_module(f"layer{i + 1}", _make_stage(block, in_planes, planes, blocks, stride))
            in_planes = planes * block.expansion
        self.feature_info = [
            {"name": f"layer{i + 1}", "channels": w * block.expansion, "stride": 4 * 2**i}
            for i, w in enumerate(widths)
        ]
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(self.num_features, num_classes)

        # torchvision's initialisation; the fc layer keeps PyTorch's default.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)
                elif isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """`(N, C, H, W)` images -> `(N, 512*expansion, H/32, W/32)`, the output of layer4."""
        x = self.conv1(x)  # (N, 64, H/2, W/2)
        x = self.bn1(x)
        x = self.relu(x)
        x = self.maxpool(x)  # (N, 64, H/4, W/4)
        x = self.layer1(x)  # (N, 64e, H/4, W/4), e = expansion
        x = self.layer2(x)  # (N, 128e, H/8, W/8)
        x = self.layer3(x)  # (N, 256e, H/16, W/16)
        x = self.layer4(x)  # (N, 512e, H/32, W/32)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """`(N, 512e, H', W')` -> `(N, num_classes)` logits, or the pooled `(N, 512e)` vector."""
        x = self.avgpool(x)  # (N, 512e, 1, 1)
        x = torch.flatten(x, 1)  # (N, 512e)
        return x if pre_logits else self.fc(x)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int) -> None:
        """Replace fc with a fresh Linear of `num_classes` outputs (key `fc`)."""
        positive_int("num_classes", num_classes)
        self.fc = nn.Linear(self.num_features, num_classes)
        self.num_classes = num_classes


_OPTIONS = ("num_classes", "in_channels", "zero_init_residual")


def _create_resnet(
    variant: str, block: type[BasicBlock | Bottleneck], layers: tuple[int, int, int, int], **kwargs
) -> ResNet:
    check_options(variant, kwargs, _OPTIONS)
    return ResNet(block, layers, **kwargs)


_PAPER = "He et al. 2016, Deep Residual Learning for Image Recognition"
_IMAGENET = {"input_size": (3, 224, 224), "num_classes": 1000}


@register_model(paper=_PAPER, **_IMAGENET)
def resnet18(**kwargs) -> ResNet:
    """ResNet-18: basic blocks (2, 2, 2, 2)."""
    return _create_resnet("resnet18", BasicBlock, (2, 2, 2, 2), **kwargs)


@register_model(paper=_PAPER, **_IMAGENET)
def resnet34(**kwargs) -> ResNet:
    """ResNet-34: basic blocks (3, 4, 6, 3)."""
    return _create_resnet("resnet34", BasicBlock, (3, 4, 6, 3), **kwargs)


@register_model(paper=_PAPER, **_IMAGENET)
def resnet50(**kwargs) -> ResNet:
    """ResNet-50: bottlenecks (3, 4, 6, 3) (25.6 M parameters at 1000 classes)."""
    return _create_resnet("resnet50", Bottleneck, (3, 4, 6, 3), **kwargs)


@register_model(paper=_PAPER, **_IMAGENET)
def resnet101(**kwargs) -> ResNet:
    """ResNet-101: bottlenecks (3, 4, 23, 3)."""
    return _create_resnet("resnet101", Bottleneck, (3, 4, 23, 3), **kwargs)


@register_model(paper=_PAPER, **_IMAGENET)
def resnet152(**kwargs) -> ResNet:
    """ResNet-152: bottlenecks (3, 8, 36, 3) (60.2 M parameters at 1000 classes)."""
    return _create_resnet("resnet152", Bottleneck, (3, 8, 36, 3), **kwargs)
