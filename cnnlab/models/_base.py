"""The handles every zoo model offers, so that summaries and transfer learning need no special cases.

Conventions (after timm):
- `forward_features(x)`: `(N, C, H, W)` images -> the last feature map `(N, C', H', W')`, before
  global pooling and the classifier.
- `forward_head(x, pre_logits=False)`: that feature map -> `(N, num_classes)` logits, or with
  `pre_logits=True` the vector the classifier reads `(N, D)`.
- `get_classifier()` / `reset_classifier(num_classes)`: the final layer, and a fresh one.
- `feature_info`: one dict per stage, `{"name": module name, "channels": C, "stride": input/output}`.
"""

from __future__ import annotations

import torch
from torch import nn


class ConvNet(nn.Module):
    """Base class of the zoo: `forward = forward_head ∘ forward_features`."""

    feature_info: list[dict]
    num_classes: int

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        raise NotImplementedError

    def get_classifier(self) -> nn.Module:
        raise NotImplementedError

    def reset_classifier(self, num_classes: int) -> None:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`(N, C, H, W)` images -> `(N, num_classes)` logits (no softmax: the loss applies it)."""
        return self.forward_head(self.forward_features(x))
