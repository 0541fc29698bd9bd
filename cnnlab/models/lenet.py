"""LeNet-5 (LeCun, Bottou, Bengio, Haffner 1998, "Gradient-based learning applied to document recognition").

As usually taught: 32x32x1 -> C1 conv5x5, 6 maps (28x28) -> S2 2x2 average pool (14x14) -> C3 conv5x5, 16 maps
(10x10) -> S4 pool (5x5) -> C5 120 units -> F6 84 units -> output 10, tanh throughout:
156 + 2,416 + 48,120 + 10,164 + 850 = 61,706 parameters.

How this differs from the 1998 paper:
- C3 there connects each of its 16 maps to a subset of S2's 6 maps (the paper's Table I), 1,516 parameters
  instead of 2,416, to break symmetry and save compute; here every map sees all 6.
- S2 and S4 there are trainable: the 2x2 sum is multiplied by a learned coefficient, a learned bias is
  added, and a sigmoid follows (12 and 32 parameters); here they are plain average pools.
- The activation there is the scaled tanh 1.7159 * tanh(2a/3); here plain tanh.
- The output there is 10 Euclidean RBF units comparing F6 with fixed 7x12 bitmaps; here an fc layer
  whose logits go to cross-entropy.
- C5 is a 5x5 convolution on a 5x5 map, i.e. fully connected to S4: here it is written as `Linear(400, 120)`
  (same 48,120 parameters, and the classic 32x32 geometry is kept).

Options: `activation="relu", pool="max"` gives the modern variant; `input_size=28` takes MNIST's 28x28
digits by padding C1 by 2 ("same"), so every later size and the parameter count are unchanged.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from cnnlab.errors import CnnlabError, positive_int
from cnnlab.layers.activations import check_activation, make_activation
from cnnlab.models._base import ConvNet
from cnnlab.models._registry import register_model


class LeNet5(ConvNet):
    """`(N, C, 32, 32)` (or `(N, C, 28, 28)` with `input_size=28`) -> `(N, num_classes)` logits.

    Modules carry the paper's names: `features.c1`, `features.s2`, `features.c3`, `features.s4`,
    `classifier.c5`, `classifier.f6`, `classifier.output`.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        input_size: int | tuple[int, int] = 32,
        activation: str = "tanh",
        pool: str = "avg",
    ):
        super().__init__()
        if isinstance(input_size, (tuple, list)) and len(input_size) == 2 and input_size[0] == input_size[1]:
            input_size = input_size[0]  # (H, W), as the trainer passes it
        if input_size not in (28, 32):
            raise CnnlabError(
                f"lenet5 takes 32x32 images (the paper) or 28x28 (MNIST, C1 padded by 2), got input_size={input_size!r}"
            )
        if pool not in ("avg", "max"):
            raise CnnlabError(f"pool must be 'avg' (the paper's subsampling) or 'max' (the modern variant), got {pool!r}")
        act = check_activation(activation)
        pool_layer = nn.AvgPool2d if pool == "avg" else nn.MaxPool2d
        self.num_classes, self.input_size = num_classes, (in_channels, input_size, input_size)
        self._activation, self._pool = act, pool
        self.features = nn.Sequential(OrderedDict([
            ("c1", nn.Conv2d(in_channels, 6, 5, padding=(32 - input_size) // 2)),  # (N, 6, 28, 28)
            ("act1", make_activation(act)),
            ("s2", pool_layer(2)),  # (N, 6, 14, 14)
            ("c3", nn.Conv2d(6, 16, 5)),  # (N, 16, 10, 10)
            ("act3", make_activation(act)),
            ("s4", pool_layer(2)),  # (N, 16, 5, 5)
        ]))
        self.classifier = nn.Sequential(OrderedDict([
            ("flatten", nn.Flatten()),  # (N, 400)
            ("c5", nn.Linear(16 * 5 * 5, 120)),
            ("act5", make_activation(act)),
            ("f6", nn.Linear(120, 84)),
            ("act6", make_activation(act)),
            ("output", nn.Linear(84, num_classes)),
        ]))
        self.feature_info = [
            {"name": "features.s2", "channels": 6, "stride": 2},
            {"name": "features.s4", "channels": 16, "stride": 4},
        ]

    @property
    def spec(self) -> str:
        """The same architecture in the lecture's notation (`build_spec(model.spec)` rebuilds it)."""
        act = "" if self._activation == "relu" else f"{self._activation} "
        c1 = "conv5x5-6" if self.input_size[1] == 28 else "conv5x5-6/valid"  # 28x28: "same" = padding 2
        return f"{act}{c1} {self._pool}pool2 conv5x5-16/valid {self._pool}pool2 fc120 fc84 fc{self.num_classes}"

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)  # (N, 16, 5, 5)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        for module in list(self.classifier)[:-1]:
            x = module(x)  # ends as (N, 84), F6's output
        return x if pre_logits else self.classifier.output(x)

    def get_classifier(self) -> nn.Module:
        return self.classifier.output

    def reset_classifier(self, num_classes: int) -> None:
        positive_int("num_classes", num_classes)
        self.classifier.output = nn.Linear(84, num_classes)
        self.num_classes = num_classes


@register_model(paper="LeCun et al. 1998, Gradient-Based Learning Applied to Document Recognition",
                input_size=(1, 32, 32), num_classes=10)
def lenet5(
    num_classes: int = 10,
    in_channels: int = 1,
    input_size: int | tuple[int, int] = 32,
    activation: str = "tanh",
    pool: str = "avg",
) -> LeNet5:
    return LeNet5(num_classes, in_channels, input_size, activation, pool)
