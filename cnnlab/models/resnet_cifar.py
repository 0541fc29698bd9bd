"""ResNets and plain nets for CIFAR-10 (He, Zhang, Ren, Sun 2016, "Deep Residual Learning", section 4.2).

32x32x3 -> conv3x3 16 -> three stages of n basic blocks (16, 32, 64 channels; maps 32x32, 16x16, 8x8, the
first block of stages 2 and 3 has stride 2) -> global average pool -> fc 10. 6n+2 weighted layers:
resnet20/32/44/56/110 (n = 3, 5, 7, 9, 18) have 0.27M, 0.46M, 0.66M, 0.85M, 1.7M parameters (the paper's
Table 6). Shortcuts are identities; where the shape changes they use option A (subsample, zero-pad the
new channels), which has no parameters, so `plain<depth>` (the same stack without any shortcut, the
paper's plain baseline) has exactly as many parameters.

Knobs for the vanishing/exploding-gradient experiments: `skip`, `batch_norm` (without it the convs get
biases, as usual), `activation` ("relu", "tanh", "sigmoid", ...), `init_scale`, which multiplies the
standard deviation of the Kaiming-normal init (fan_out, with the activation's gain; as torchvision), and
`preact`: pre-activation blocks (He, Zhang, Ren, Sun 2016, "Identity Mappings in Deep Residual Networks"):
bn - act - conv3x3 - bn - act - conv3x3, plus the shortcut, with nothing after the addition; the stem is
the conv alone and a final bn - act comes before the pooling. In the original (post-activation) block the
activation follows the addition, so the shortcut path too crosses one activation per block: with a
saturating activation (sigmoid, whose slope is at most 1/4) the gradient through 27 blocks shrinks as
much along the shortcuts as through the plain stack. Pre-activation leaves the shortcut path a pure
identity from the last block to the first, which is the skip connection the lecture's argument is about.
Any input size works (global pooling), e.g. 1x28x28 with `in_channels=1`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from cnnlab.errors import CnnlabError, positive_int
from cnnlab.layers.activations import activation_gain, check_activation, make_activation
from cnnlab.layers.shortcut import ShortcutA
from cnnlab.models._base import ConvNet
from cnnlab.models._registry import register_model


class BasicBlock(nn.Module):
    """conv3x3 - bn - act - conv3x3 - bn, plus the shortcut, then act. `(N, C_in, H, W)` -> `(N, C_out, H/s, W/s)`."""

    expansion = 1

    def __init__(self, in_channels: int, channels: int, stride: int = 1, skip: bool = True,
                 batch_norm: bool = True, activation: str = "relu"):
        super().__init__()
        self.skip = skip
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, 1, bias=not batch_norm)
        self.bn1 = nn.BatchNorm2d(channels) if batch_norm else nn.Identity()
        self.act1 = make_activation(activation)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=not batch_norm)
        self.bn2 = nn.BatchNorm2d(channels) if batch_norm else nn.Identity()
        self.act2 = make_activation(activation)
        reshape = stride != 1 or in_channels != channels
        self.downsample = ShortcutA(in_channels, channels, stride) if skip and reshape else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.skip:
            identity = x if self.downsample is None else self.downsample(x)
            out = out + identity
        return self.act2(out)


class PreActBlock(nn.Module):
    """bn - act - conv3x3 - bn - act - conv3x3, plus the shortcut, nothing after the addition (He et al. 2016,
    Identity Mappings). `(N, C_in, H, W)` -> `(N, C_out, H/s, W/s)`. The shortcut takes the block's input as it
    is (option A where the shape changes), so a stack of these has a pure identity path end to end."""

    expansion = 1

    def __init__(self, in_channels: int, channels: int, stride: int = 1, skip: bool = True,
                 batch_norm: bool = True, activation: str = "relu"):
        super().__init__()
        self.skip = skip
        self.bn1 = nn.BatchNorm2d(in_channels) if batch_norm else nn.Identity()
        self.act1 = make_activation(activation)
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, 1, bias=not batch_norm)
        self.bn2 = nn.BatchNorm2d(channels) if batch_norm else nn.Identity()
        self.act2 = make_activation(activation)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=not batch_norm)
        reshape = stride != 1 or in_channels != channels
        self.downsample = ShortcutA(in_channels, channels, stride) if skip and reshape else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.act1(self.bn1(x)))
        out = self.conv2(self.act2(self.bn2(out)))
        if self.skip:
            out = out + (x if self.downsample is None else self.downsample(x))
        return out


class ResNetCifar(ConvNet):
    """The CIFAR ResNet of depth 6n+2. `(N, C, H, W)` -> `(N, num_classes)` logits.

    Names as timm's: `conv1`, `bn1`, `act1`, `layer1.0.conv1`, ..., `layer3.<n-1>.bn2`, `global_pool`, `fc`.
    """

    def __init__(
        self,
        depth: int = 20,
        num_classes: int = 10,
        in_channels: int = 3,
        skip: bool = True,
        batch_norm: bool = True,
        activation: str = "relu",
        init_scale: float = 1.0,
        widths: tuple[int, int, int] = (16, 32, 64),
        preact: bool = False,
    ):
        super().__init__()
        if not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
            raise CnnlabError(f"a CIFAR ResNet has depth 6n+2 (20, 32, 44, 56, 110, ...), got {depth!r}")
        if not isinstance(init_scale, (int, float)) or init_scale <= 0:
            raise CnnlabError(f"init_scale must be a positive number (1.0 = Kaiming init), got {init_scale!r}")
        if not isinstance(preact, bool):
            raise CnnlabError(f"preact must be true or false, got {preact!r}")
        activation = check_activation(activation)
        n = (depth - 2) // 6
        self.depth, self.num_classes, self.skip, self.preact = depth, num_classes, skip, preact
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=not batch_norm)
        # pre-activation: the stem is the conv alone (the first block starts with bn - act)
        self.bn1 = nn.BatchNorm2d(widths[0]) if batch_norm and not preact else nn.Identity()
        self.act1 = nn.Identity() if preact else make_activation(activation)
        block = PreActBlock if preact else BasicBlock
        c_in = widths[0]
        for i, c in enumerate(widths):
            blocks = []
            for j in range(n):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(block(c_in, c, stride, skip, batch_norm, activation))
                c_in = c
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        if preact:  # the last block's sum is normalised and activated once, before the pooling
            self.bn_final = nn.BatchNorm2d(widths[-1]) if batch_norm else nn.Identity()
            self.act_final = make_activation(activation)
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[-1], num_classes)
        self.feature_info = [
            {"name": f"layer{i + 1}", "channels": c, "stride": 2**i} for i, c in enumerate(widths)
        ]
        self._init_weights(activation, init_scale)

    def _init_weights(self, activation: str, init_scale: float) -> None:
        # Kaiming normal, fan_out mode (torchvision's choice), with the gain of the activation in use.
        gain = activation_gain(activation) * init_scale
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.out_channels * m.kernel_size[0] * m.kernel_size[1]
                nn.init.normal_(m.weight, 0.0, gain / math.sqrt(fan_out))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.conv1(x)))  # (N, 16, H, W)
        x = self.layer1(x)  # (N, 16, H, W)
        x = self.layer2(x)  # (N, 32, H/2, W/2)
        x = self.layer3(x)  # (N, 64, H/4, W/4)
        return self.act_final(self.bn_final(x)) if self.preact else x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x).flatten(1)  # (N, 64)
        return x if pre_logits else self.fc(x)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int) -> None:
        positive_int("num_classes", num_classes)
        self.fc = nn.Linear(self.fc.in_features, num_classes)
        self.num_classes = num_classes


def _create_resnet_cifar(name: str, depth: int, plain: bool = False, **kwargs) -> ResNetCifar:
    if plain and "skip" in kwargs:
        raise CnnlabError(f"{name} is the plain net and has no skip option; use resnet{depth} (skip=True/False)")
    if plain:
        kwargs["skip"] = False
    return ResNetCifar(depth=depth, **kwargs)


_PAPER = "He et al. 2016, Deep Residual Learning (CIFAR-10, sec. 4.2)"
_PLAIN = "He et al. 2016, plain baseline of Deep Residual Learning (CIFAR-10, sec. 4.2)"


@register_model(paper=_PAPER, input_size=(3, 32, 32), num_classes=10)
def resnet20(**kwargs) -> ResNetCifar:
    return _create_resnet_cifar("resnet20", 20, **kwargs)


@register_model(paper=_PAPER, input_size=(3, 32, 32), num_classes=10)
def resnet32(**kwargs) -> ResNetCifar:
    return _create_resnet_cifar("resnet32", 32, **kwargs)


@register_model(paper=_PAPER, input_size=(3, 32, 32), num_classes=10)
def resnet44(**kwargs) -> ResNetCifar:
    return _create_resnet_cifar("resnet44", 44, **kwargs)


@register_model(paper=_PAPER, input_size=(3, 32, 32), num_classes=10)
def resnet56(**kwargs) -> ResNetCifar:
    return _create_resnet_cifar("resnet56", 56, **kwargs)


@register_model(paper=_PAPER, input_size=(3, 32, 32), num_classes=10)
def resnet110(**kwargs) -> ResNetCifar:
    return _create_resnet_cifar("resnet110", 110, **kwargs)


@register_model(paper=_PLAIN, input_size=(3, 32, 32), num_classes=10)
def plain20(**kwargs) -> ResNetCifar:
    return _create_resnet_cifar("plain20", 20, plain=True, **kwargs)


@register_model(paper=_PLAIN, input_size=(3, 32, 32), num_classes=10)
def plain32(**kwargs) -> ResNetCifar:
    return _create_resnet_cifar("plain32", 32, plain=True, **kwargs)


@register_model(paper=_PLAIN, input_size=(3, 32, 32), num_classes=10)
def plain44(**kwargs) -> ResNetCifar:
    return _create_resnet_cifar("plain44", 44, plain=True, **kwargs)


@register_model(paper=_PLAIN, input_size=(3, 32, 32), num_classes=10)
def plain56(**kwargs) -> ResNetCifar:
    return _create_resnet_cifar("plain56", 56, plain=True, **kwargs)


@register_model(paper=_PLAIN, input_size=(3, 32, 32), num_classes=10)
def plain110(**kwargs) -> ResNetCifar:
    return _create_resnet_cifar("plain110", 110, plain=True, **kwargs)
