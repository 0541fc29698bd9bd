"""VGG (Simonyan & Zisserman 2015), configurations A, B, D, E, with or without batch norm.

The architecture is data: a list such as `[64, "M", 128, "M", ...]` (a number is a 3x3 convolution
with that many filters, padding 1, followed by ReLU; "M" is a 2x2 max-pool of stride 2) turned into
layers by `make_layers`. Module names and `state_dict` keys equal torchvision's, so its published
weights load with `strict=True`; at 1000 classes VGG-16 has 138,357,544 parameters and VGG-19
143,667,240.

Two classic transfer-learning cut points (VGG-16, 224x224 input):
- the last max-pool, `features.30` (`features.43` in `vgg16_bn`): a `(N, 512, 7, 7)` map, i.e.
  25,088 features once flattened. `model.forward_features(x)` returns it; for other input sizes
  `torch.flatten(model.avgpool(model.forward_features(x)), 1)` is always `(N, 25088)`.
- the output of the first fully-connected layer and its ReLU, `classifier.1`: a `(N, 4096)` vector,
  `model.classifier[:2](torch.flatten(model.avgpool(model.forward_features(x)), 1))`.
  (`model.forward_head(f, pre_logits=True)` gives the second one, after `classifier.4`, fc7.)
"""

from __future__ import annotations

import torch
from torch import nn

from cnnlab.errors import CnnlabError, positive_int
from cnnlab.models._base import ConvNet
from cnnlab.models._registry import check_options, register_model

__all__ = ["CFGS", "VGG", "make_layers", "vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn",
           "vgg19", "vgg19_bn"]

# Table 1 of the paper; the letters are its column names.
CFGS: dict[str, list[int | str]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],  # A
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],  # B
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],  # D
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
              512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],  # E
}


def make_layers(
    cfg: list[int | str], batch_norm: bool = False, in_channels: int = 3
) -> tuple[nn.Sequential, list[dict]]:
    """Turn a VGG config into `(features, feature_info)`.

    Each number becomes conv3x3 (padding 1, keeps H and W) [+ BatchNorm] + ReLU; each "M" a 2x2/2
    max-pool that halves H and W. `feature_info` has one entry per max-pool, named by its index in
    `features` (e.g. `features.30` is VGG-16's last pool), with its channels and stride.
    """
    layers: list[nn.Module] = []
    info: list[dict] = []
    channels = in_channels
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            info.append({"name": f"features.{len(layers) - 1}", "channels": channels, "stride": 2 ** (len(info) + 1)})
        elif isinstance(v, int) and not isinstance(v, bool) and v > 0:
            layers.append(nn.Conv2d(channels, v, kernel_size=3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(v))
            layers.append(nn.ReLU(inplace=True))
            channels = v
        else:
            raise CnnlabError(f"VGG config entries must be positive ints or 'M', got {v!r}")
    return nn.Sequential(*layers), info


class VGG(ConvNet):
    """Convolutions from a config, an adaptive 7x7 average pool, then fc6-fc7-fc8.

    Args:
        cfg: layer config, e.g. `CFGS["vgg16"]`; the last conv must have 512 filters (fc6 reads 512*7*7).
        batch_norm: insert BatchNorm2d after every convolution (the `_bn` variants).
        num_classes: outputs of fc8.
        in_channels: channels of the input images; only the first convolution depends on it.
        dropout: drop probability after fc6 and after fc7.
    """

    def __init__(
        self,
        cfg: list[int | str],
        batch_norm: bool = False,
        num_classes: int = 1000,
        in_channels: int = 3,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise CnnlabError(f"vgg: dropout must be in [0, 1), got {dropout!r}; the paper uses 0.5")
        self.num_classes = num_classes
        self.num_features = 4096  # width of the vector fc8 reads
        widths = [v for v in cfg if v != "M"]
        if widths and widths[-1] != 512:
            raise CnnlabError(f"vgg: the last convolution must have 512 filters (fc6 reads 512*7*7), got {cfg!r}")
        self.features, self.feature_info = make_layers(cfg, batch_norm=batch_norm, in_channels=in_channels)
        # Any input of 32x32 or more works: the pool turns the last map into 7x7 (the identity at 224).
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.flatten = nn.Flatten(1)  # a module, so cnnlab.fuse can give it a layout-keeping gradient
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096),  # 0: fc6
            nn.ReLU(inplace=True),  # 1: the classic 4,096-feature cut point
            nn.Dropout(p=dropout),
            nn.Linear(4096, 4096),  # 3: fc7
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(4096, num_classes),  # 6: fc8, the classifier
        )
        self.apply(_init_weights)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """`(N, C, H, W)` images -> `(N, 512, H/32, W/32)`, the output of the last max-pool."""
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """`(N, 512, H', W')` -> `(N, num_classes)` logits, or the `(N, 4096)` vector fc8 reads."""
        x = self.avgpool(x)  # (N, 512, 7, 7)
        x = self.flatten(x)  # (N, 25088)
        for layer in list(self.classifier)[:-1]:  # (N, 4096): fc6, relu, dropout, fc7, relu, dropout
            x = layer(x)  # each layer itself, not a sliced Sequential, so torch.fx can trace the head
        return x if pre_logits else self.classifier[-1](x)

    def get_classifier(self) -> nn.Module:
        return self.classifier[-1]

    def reset_classifier(self, num_classes: int) -> None:
        """Replace fc8 with a fresh Linear of `num_classes` outputs (key `classifier.6`)."""
        positive_int("num_classes", num_classes)
        self.classifier[-1] = nn.Linear(self.num_features, num_classes)
        _init_weights(self.classifier[-1])
        self.num_classes = num_classes


def _init_weights(m: nn.Module) -> None:
    """torchvision's VGG initialisation (He et al. 2015 for convs; N(0, 0.01) for Linear layers)."""
    if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Linear):
        nn.init.normal_(m.weight, 0.0, 0.01)
        nn.init.zeros_(m.bias)


_OPTIONS = ("num_classes", "in_channels", "dropout")


def _create_vgg(variant: str, batch_norm: bool, **kwargs) -> VGG:
    check_options(variant + ("_bn" if batch_norm else ""), kwargs, _OPTIONS)
    return VGG(CFGS[variant], batch_norm=batch_norm, **kwargs)


_PAPER = "Simonyan & Zisserman 2015, Very Deep Convolutional Networks"
_PAPER_BN = _PAPER + " (+ batch norm)"
_IMAGENET = {"input_size": (3, 224, 224), "num_classes": 1000}


@register_model(paper=_PAPER, **_IMAGENET)
def vgg11(**kwargs) -> VGG:
    """VGG-11, config A."""
    return _create_vgg("vgg11", batch_norm=False, **kwargs)


@register_model(paper=_PAPER, **_IMAGENET)
def vgg13(**kwargs) -> VGG:
    """VGG-13, config B."""
    return _create_vgg("vgg13", batch_norm=False, **kwargs)


@register_model(paper=_PAPER, **_IMAGENET)
def vgg16(**kwargs) -> VGG:
    """VGG-16, config D (138.4 M parameters at 1000 classes)."""
    return _create_vgg("vgg16", batch_norm=False, **kwargs)


@register_model(paper=_PAPER, **_IMAGENET)
def vgg19(**kwargs) -> VGG:
    """VGG-19, config E (143.7 M parameters at 1000 classes)."""
    return _create_vgg("vgg19", batch_norm=False, **kwargs)


@register_model(paper=_PAPER_BN, **_IMAGENET)
def vgg11_bn(**kwargs) -> VGG:
    """VGG-11 with batch norm after every convolution."""
    return _create_vgg("vgg11", batch_norm=True, **kwargs)


@register_model(paper=_PAPER_BN, **_IMAGENET)
def vgg13_bn(**kwargs) -> VGG:
    """VGG-13 with batch norm after every convolution."""
    return _create_vgg("vgg13", batch_norm=True, **kwargs)


@register_model(paper=_PAPER_BN, **_IMAGENET)
def vgg16_bn(**kwargs) -> VGG:
    """VGG-16 with batch norm after every convolution."""
    return _create_vgg("vgg16", batch_norm=True, **kwargs)


@register_model(paper=_PAPER_BN, **_IMAGENET)
def vgg19_bn(**kwargs) -> VGG:
    """VGG-19 with batch norm after every convolution."""
    return _create_vgg("vgg19", batch_norm=True, **kwargs)
