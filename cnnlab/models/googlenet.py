"""GoogLeNet, Inception v1 (Szegedy et al. 2015), key for key as torchvision builds it.

Nine Inception modules, each four parallel branches concatenated along channels: a 1x1 convolution;
1x1 reduce then 3x3; 1x1 reduce then "5x5"; 3x3 max-pool then 1x1 projection. Their widths are the
paper's Table 1, kept below as data (`INCEPTION_CFG`).

Where torchvision differs from the paper, and what we do:
- Third branch: torchvision uses a 3x3 convolution where the paper has 5x5 (pytorch/vision#906); its
  published weights depend on it, so 3x3 is our default too. `paper_5x5=True` builds the paper's 5x5
  (16 * reduce * out more weights per module, 380,928 in all; torchvision's weights then do not load).
- Every convolution is followed by batch norm (eps 1e-3), as in the weights torchvision ported; the
  paper (which predates batch norm) had local response normalisation in the stem instead.
- The max-pool before inception5a is 2x2/2 rather than the paper's 3x3/2 (same output size, no weights).
- `transform_input=True` re-maps images normalised with the ImageNet mean/std to the [-1, 1] scaling
  the ported weights were trained with; torchvision turns it on when it loads those weights, so pass it
  when you load them. Default False, as torchvision's untrained model.
- The two auxiliary classifiers are off by default (`aux_logits=False`: 6,624,904 parameters at 1000
  classes). With `aux_logits=True` they exist under torchvision's names (`aux1`, `aux2`), so the full
  published checkpoint loads with `strict=True` (without them, drop its `aux1.*`/`aux2.*` keys first,
  as torchvision does), and in training mode `forward` returns
  `GoogLeNetOutputs(logits, aux_logits2, aux_logits1)` like torchvision (add 0.3 x each aux loss, as
  in the paper); in eval mode it returns the logits alone.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.errors import CnnlabError, positive_int
from cnnlab.models._base import ConvNet
from cnnlab.models._registry import check_options, register_model

__all__ = ["INCEPTION_CFG", "BasicConv2d", "GoogLeNet", "GoogLeNetOutputs", "Inception", "InceptionAux",
           "googlenet"]

# Table 1 of the paper: #1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj.
INCEPTION_CFG: dict[str, tuple[int, int, int, int, int, int]] = {
    "inception3a": (64, 96, 128, 16, 32, 32),
    "inception3b": (128, 128, 192, 32, 96, 64),
    "inception4a": (192, 96, 208, 16, 48, 64),
    "inception4b": (160, 112, 224, 24, 64, 64),
    "inception4c": (128, 128, 256, 24, 64, 64),
    "inception4d": (112, 144, 288, 32, 64, 64),
    "inception4e": (256, 160, 320, 32, 128, 128),
    "inception5a": (256, 160, 320, 32, 128, 128),
    "inception5b": (384, 192, 384, 48, 128, 128),
}


class GoogLeNetOutputs(NamedTuple):
    """What `forward` returns in training mode when the auxiliary classifiers are on."""

    logits: torch.Tensor
    aux_logits2: torch.Tensor
    aux_logits1: torch.Tensor


class BasicConv2d(nn.Module):
    """Convolution (no bias), batch norm, ReLU. `**kwargs` go to `nn.Conv2d` (kernel_size, stride, padding)."""

    def __init__(self, in_channels: int, out_channels: int, **kwargs) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **kwargs)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)  # the ported TensorFlow weights used 1e-3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        x = self.bn(x)
        return F.relu(x, inplace=True)


class Inception(nn.Module):
    """`(N, in_channels, H, W)` -> `(N, ch1x1 + ch3x3 + ch5x5 + pool_proj, H, W)`: four branches, concatenated.

    `branch3_kernel` is the kernel of the third branch's second convolution: 3 as torchvision, 5 as the paper.
    """

    def __init__(
        self,
        in_channels: int,
        ch1x1: int,
        ch3x3red: int,
        ch3x3: int,
        ch5x5red: int,
        ch5x5: int,
        pool_proj: int,
        branch3_kernel: int = 3,
    ) -> None:
        super().__init__()
        if branch3_kernel not in (3, 5):
            raise CnnlabError(f"Inception: branch3_kernel must be 3 (torchvision) or 5 (paper), got {branch3_kernel!r}")
        self.out_channels = ch1x1 + ch3x3 + ch5x5 + pool_proj
        self.branch1 = BasicConv2d(in_channels, ch1x1, kernel_size=1)
        self.branch2 = nn.Sequential(
            BasicConv2d(in_channels, ch3x3red, kernel_size=1),
            BasicConv2d(ch3x3red, ch3x3, kernel_size=3, padding=1),
        )
        self.branch3 = nn.Sequential(
            BasicConv2d(in_channels, ch5x5red, kernel_size=1),
            BasicConv2d(ch5x5red, ch5x5, kernel_size=branch3_kernel, padding=branch3_kernel // 2),
        )
        self.branch4 = nn.Sequential(
            nn.MaxPool2d(kernel_size=3, stride=1, padding=1, ceil_mode=True),
            BasicConv2d(in_channels, pool_proj, kernel_size=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1(x)  # (N, ch1x1, H, W)
        b2 = self.branch2(x)  # (N, ch3x3, H, W)
        b3 = self.branch3(x)  # (N, ch5x5, H, W)
        b4 = self.branch4(x)  # (N, pool_proj, H, W)
        return torch.cat([b1, b2, b3, b4], 1)


class InceptionAux(nn.Module):
    """Auxiliary classifier: `(N, C, H, W)` -> `(N, num_classes)` via 4x4 avg-pool, 1x1 conv, two fc layers."""

    def __init__(self, in_channels: int, num_classes: int, dropout: float = 0.7) -> None:
        super().__init__()
        self.conv = BasicConv2d(in_channels, 128, kernel_size=1)
        self.fc1 = nn.Linear(128 * 4 * 4, 1024)
        self.fc2 = nn.Linear(1024, num_classes)
        self.dropout = nn.Dropout(p=dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(x, (4, 4))  # (N, C, 4, 4); the paper's 5x5/3 pool at 14x14
        x = self.conv(x)  # (N, 128, 4, 4)
        x = torch.flatten(x, 1)  # (N, 2048)
        x = F.relu(self.fc1(x), inplace=True)  # (N, 1024)
        x = self.dropout(x)
        return self.fc2(x)  # (N, num_classes)


class GoogLeNet(ConvNet):
    """Stem (7x7/2 conv, pool, 1x1, 3x3, pool), nine Inception modules with two pools between, avg-pool, fc.

    Args:
        num_classes: outputs of the fc layer (and of the auxiliary classifiers).
        in_channels: channels of the input images; only the first convolution depends on it.
        transform_input: re-map ImageNet-normalised RGB input to [-1, 1] scaling (for the ported weights).
        paper_5x5: use the paper's 5x5 convolution in the third Inception branch instead of torchvision's 3x3.
        aux_logits: add the two auxiliary classifiers (after inception4a and inception4d).
        dropout: drop probability before the fc layer (the paper's 40% was 0.4; torchvision uses 0.2).
    """

    def __init__(
        self,
        num_classes: int = 1000,
        in_channels: int = 3,
        transform_input: bool = False,
        paper_5x5: bool = False,
        aux_logits: bool = False,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        for label, value in (("transform_input", transform_input), ("paper_5x5", paper_5x5),
                             ("aux_logits", aux_logits)):
            if not isinstance(value, bool):
                raise CnnlabError(f"googlenet: {label} must be True or False, got {value!r}")
        if transform_input and in_channels != 3:
            raise CnnlabError(
                f"googlenet: transform_input=True re-maps RGB input and needs in_channels=3, got {in_channels}"
            )
        if not 0.0 <= dropout < 1.0:
            raise CnnlabError(f"googlenet: dropout must be in [0, 1), got {dropout!r}; torchvision uses 0.2")
        self.num_classes = num_classes
        self.num_features = 1024  # width of the vector fc reads
        self.transform_input = transform_input
        self.aux_logits = aux_logits
        k = 5 if paper_5x5 else 3
        cfg = INCEPTION_CFG

        self.conv1 = BasicConv2d(in_channels, 64, kernel_size=7, stride=2, padding=3)
        self.maxpool1 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.conv2 = BasicConv2d(64, 64, kernel_size=1)
        self.conv3 = BasicConv2d(64, 192, kernel_size=3, padding=1)
        self.maxpool2 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.inception3a = Inception(192, *cfg["inception3a"], branch3_kernel=k)
        self.inception3b = Inception(self.inception3a.out_channels, *cfg["inception3b"], branch3_kernel=k)
        self.maxpool3 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.inception4a = Inception(self.inception3b.out_channels, *cfg["inception4a"], branch3_kernel=k)
        self.inception4b = Inception(self.inception4a.out_channels, *cfg["inception4b"], branch3_kernel=k)
        self.inception4c = Inception(self.inception4b.out_channels, *cfg["inception4c"], branch3_kernel=k)
        self.inception4d = Inception(self.inception4c.out_channels, *cfg["inception4d"], branch3_kernel=k)
        self.inception4e = Inception(self.inception4d.out_channels, *cfg["inception4e"], branch3_kernel=k)
        self.maxpool4 = nn.MaxPool2d(2, stride=2, ceil_mode=True)
        self.inception5a = Inception(self.inception4e.out_channels, *cfg["inception5a"], branch3_kernel=k)
        self.inception5b = Inception(self.inception5a.out_channels, *cfg["inception5b"], branch3_kernel=k)
        if aux_logits:
            self.aux1 = InceptionAux(self.inception4a.out_channels, num_classes)
            self.aux2 = InceptionAux(self.inception4d.out_channels, num_classes)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(self.inception5b.out_channels, num_classes)
        # Stage outputs just before each spatial reduction (ceil-mode pools: exact for sizes divisible by 32).
        self.feature_info = [
            {"name": "conv1", "channels": 64, "stride": 2},
            {"name": "conv3", "channels": 192, "stride": 4},
            {"name": "inception3b", "channels": self.inception3b.out_channels, "stride": 8},
            {"name": "inception4e", "channels": self.inception4e.out_channels, "stride": 16},
            {"name": "inception5b", "channels": self.inception5b.out_channels, "stride": 32},
        ]
        self.apply(_init_weights)

    def _transform_input(self, x: torch.Tensor) -> torch.Tensor:
        """Undo ImageNet mean/std normalisation and redo it as (x - 0.5) / 0.5, per channel."""
        if not self.transform_input:
            return x
        mean = x.new_tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        std = x.new_tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        return x * (std / 0.5) + (mean - 0.5) / 0.5

    def _features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """The feature map, and the two auxiliary logits when they are on and the model is training."""
        aux = self.aux_logits and self.training
        x = self._transform_input(x)
        x = self.conv1(x)  # (N, 64, H/2, W/2)
        x = self.maxpool1(x)  # (N, 64, H/4, W/4)
        x = self.conv2(x)  # (N, 64, H/4, W/4)
        x = self.conv3(x)  # (N, 192, H/4, W/4)
        x = self.maxpool2(x)  # (N, 192, H/8, W/8)
        x = self.inception3a(x)  # (N, 256, H/8, W/8)
        x = self.inception3b(x)  # (N, 480, H/8, W/8)
        x = self.maxpool3(x)  # (N, 480, H/16, W/16)
        x = self.inception4a(x)  # (N, 512, H/16, W/16)
        aux1 = self.aux1(x) if aux else None
        x = self.inception4b(x)  # (N, 512, H/16, W/16)
        x = self.inception4c(x)  # (N, 512, H/16, W/16)
        x = self.inception4d(x)  # (N, 528, H/16, W/16)
        aux2 = self.aux2(x) if aux else None
        x = self.inception4e(x)  # (N, 832, H/16, W/16)
        x = self.maxpool4(x)  # (N, 832, H/32, W/32)
        x = self.inception5a(x)  # (N, 832, H/32, W/32)
        x = self.inception5b(x)  # (N, 1024, H/32, W/32)
        return x, aux1, aux2

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """`(N, C, H, W)` images -> `(N, 1024, H/32, W/32)`, the output of inception5b."""
        return self._features(x)[0]

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """`(N, 1024, H', W')` -> `(N, num_classes)` logits, or the pooled `(N, 1024)` vector fc reads."""
        x = self.avgpool(x)  # (N, 1024, 1, 1)
        x = torch.flatten(x, 1)  # (N, 1024)
        x = self.dropout(x)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor | GoogLeNetOutputs:
        """`(N, C, H, W)` -> `(N, num_classes)` logits; `GoogLeNetOutputs` when training with aux heads."""
        x, aux1, aux2 = self._features(x)
        logits = self.forward_head(x)
        if aux1 is None:
            return logits
        return GoogLeNetOutputs(logits, aux2, aux1)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int) -> None:
        """Replace fc (and the auxiliary classifiers' fc2) with fresh layers of `num_classes` outputs."""
        positive_int("num_classes", num_classes)
        self.fc = nn.Linear(self.num_features, num_classes)
        _init_weights(self.fc)
        if self.aux_logits:
            for head in (self.aux1, self.aux2):
                head.fc2 = nn.Linear(head.fc2.in_features, num_classes)
                _init_weights(head.fc2)
        self.num_classes = num_classes


def _init_weights(m: nn.Module) -> None:
    """torchvision's GoogLeNet initialisation: weights ~ N(0, 0.01) truncated to [-2, 2]; biases as PyTorch's."""
    if isinstance(m, (nn.Conv2d, nn.Linear)):
        nn.init.trunc_normal_(m.weight, mean=0.0, std=0.01, a=-2, b=2)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


_OPTIONS = ("num_classes", "in_channels", "transform_input", "paper_5x5", "aux_logits", "dropout")


def _create_googlenet(variant: str, **kwargs) -> GoogLeNet:
    check_options(variant, kwargs, _OPTIONS)
    return GoogLeNet(**kwargs)


@register_model(
    paper="Szegedy et al. 2015, Going Deeper with Convolutions",
    input_size=(3, 224, 224),
    num_classes=1000,
)
def googlenet(**kwargs) -> GoogLeNet:
    """GoogLeNet (Inception v1) as in torchvision, without auxiliary classifiers by default (6.6 M parameters)."""
    return _create_googlenet("googlenet", **kwargs)
