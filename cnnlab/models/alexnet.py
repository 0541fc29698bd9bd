"""AlexNet, layer for layer and key for key as torchvision builds it.

torchvision's AlexNet is the single-tower network of Krizhevsky 2014 ("One weird trick for
parallelizing CNNs": 64-192-384-256-256 filters, no local response normalisation), not the two-GPU
network of the 2012 paper (96-256-384-384-256 filters split in two groups). Its `state_dict` keys
(`features.0.weight`, ..., `classifier.6.bias`) equal torchvision's, so torchvision's published
weights load with `strict=True`; at 1000 classes it has 61,100,840 parameters.

An adaptive average pool to 6x6 sits between the convolutions and the classifier, so any input of at
least 63x63 works (the paper's 224x224 gives a 6x6 map already, and the pool is then the identity).
"""

from __future__ import annotations

import torch
from torch import nn

from cnnlab.errors import CnnlabError, positive_int
from cnnlab.models._base import ConvNet
from cnnlab.models._registry import check_options, register_model

__all__ = ["AlexNet", "alexnet"]


class AlexNet(ConvNet):
    """Five convolutions (with three max-pools) then three fully-connected layers.

    Args:
        num_classes: outputs of the last layer.
        in_channels: channels of the input images; only the first convolution depends on it.
        dropout: drop probability before each of the two hidden fully-connected layers.
    """

    def __init__(self, num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise CnnlabError(f"alexnet: dropout must be in [0, 1), got {dropout!r}; the paper uses 0.5")
        self.num_classes = num_classes
        self.num_features = 4096  # width of the vector the last Linear reads
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 64, kernel_size=11, stride=4, padding=2),  # 0
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),  # 2: overlapping pooling, as in the paper
            nn.Conv2d(64, 192, kernel_size=5, padding=2),  # 3
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),  # 5
            nn.Conv2d(192, 384, kernel_size=3, padding=1),  # 6
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1),  # 8
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, kernel_size=3, padding=1),  # 10
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),  # 12
        )
        # Nominal strides: conv1 4, each pool 2. The unpadded 3x3/2 pools round down, so the real
        # ratio input/output is a little above these (224 -> 27 -> 13 -> 6).
        self.feature_info = [
            {"name": "features.2", "channels": 64, "stride": 8},
            {"name": "features.5", "channels": 192, "stride": 16},
            {"name": "features.12", "channels": 256, "stride": 32},
        ]
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.flatten = nn.Flatten(1)  # a module, so cnnlab.fuse can give it a layout-keeping gradient
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout),
            nn.Linear(256 * 6 * 6, 4096),  # 1: fc6
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(4096, 4096),  # 4: fc7
            nn.ReLU(inplace=True),
            nn.Linear(4096, num_classes),  # 6: fc8, the classifier
        )
        # torchvision keeps PyTorch's default initialisation for AlexNet; so do we.

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """`(N, C, H, W)` images -> `(N, 256, H', W')`, the output of the last max-pool (6x6 at 224)."""
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """`(N, 256, H', W')` -> `(N, num_classes)` logits, or the `(N, 4096)` fc7 output."""
        x = self.avgpool(x)  # (N, 256, 6, 6)
        x = self.flatten(x)  # (N, 9216)
        for layer in list(self.classifier)[:-1]:  # (N, 4096): dropout, fc6, relu, dropout, fc7, relu
            x = layer(x)  # each layer itself, not a sliced Sequential, so torch.fx can trace the head
        return x if pre_logits else self.classifier[-1](x)

    def get_classifier(self) -> nn.Module:
        return self.classifier[-1]

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the last Linear with a fresh one of `num_classes` outputs (key `classifier.6`)."""
        positive_int("num_classes", num_classes)
        self.classifier[-1] = nn.Linear(self.num_features, num_classes)
        self.num_classes = num_classes


_OPTIONS = ("num_classes", "in_channels", "dropout")


def _create_alexnet(variant: str, **kwargs) -> AlexNet:
    check_options(variant, kwargs, _OPTIONS)
    return AlexNet(**kwargs)


@register_model(
    paper="Krizhevsky et al. 2012, ImageNet Classification with Deep CNNs (1-GPU variant)",
    input_size=(3, 224, 224),
    num_classes=1000,
)
def alexnet(**kwargs) -> AlexNet:
    """AlexNet as in torchvision (61.1 M parameters at 1000 classes)."""
    return _create_alexnet("alexnet", **kwargs)
