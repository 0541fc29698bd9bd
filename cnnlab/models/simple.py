"""The lecture's small CNNs, written in its notation (see `cnnlab.models.spec`).

- `simple_cnn`: the typical CNN, `conv3x3-32 maxpool2 conv3x3-64 maxpool2 fc10` on 1x28x28 (50,186 parameters).
- `vgg_like(n, m, width)`: the pattern `(Conv x n + MaxPool) x m` with channels doubling as height and width
  halve, `(conv3x3-<width>*<n> maxpool2)*<m>/double`, then the head.

Both return a `SpecNet`, so `model.spec` prints the architecture in the notation.
"""

from __future__ import annotations

from cnnlab.errors import CnnlabError, positive_int
from cnnlab.layers.activations import check_activation
from cnnlab.models._registry import register_model
from cnnlab.models.spec import SpecNet, build_spec

LECTURE_CNN = "conv3x3-32 maxpool2 conv3x3-64 maxpool2 fc10"


def _hw(input_size: int | tuple[int, int]) -> tuple[int, int]:
    hw = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    if len(hw) != 2 or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in hw):
        raise CnnlabError(f"input_size must be a positive int or (H, W), such as 28 or (28, 28), got {input_size!r}")
    return hw  # type: ignore[return-value]


def _prefix(activation: str) -> str:
    """The activation token that starts a spec ('' for ReLU, the notation's default)."""
    act = check_activation(activation)
    return "" if act == "relu" else f"{act} "


def vgg_spec(
    n: int = 2,
    m: int = 3,
    width: int = 32,
    num_classes: int = 10,
    batch_norm: bool = False,
    head: str = "flatten",
    hidden: tuple[int, ...] = (),
    dropout: float = 0.0,
    activation: str = "relu",
) -> str:
    """The spec `vgg_like` builds, e.g. `(conv3x3-32*2 maxpool2)*3/double fc10` for the defaults."""
    for name, value in (("n", n), ("m", m), ("width", width), ("num_classes", num_classes)):
        positive_int(name, value)
    if head not in ("flatten", "gap"):
        raise CnnlabError(f"head must be 'flatten' (flatten + fc, as the lecture) or 'gap' (global average pool + fc), got {head!r}")
    if isinstance(hidden, int):
        hidden = (hidden,)
    for units in hidden:
        positive_int("each hidden fc size", units)
    if not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise CnnlabError(f"dropout must be a probability in [0, 1), got {dropout!r}")
    conv = f"conv3x3-{width}" + ("/bn" if batch_norm else "") + (f"*{n}" if n > 1 else "")
    body = f"({conv} maxpool2)*{m}/double" if m > 1 else f"{conv} maxpool2"
    drop = f"dropout{dropout:g} " if dropout else ""
    fcs = " ".join(f"{drop}fc{units}" for units in (*hidden, num_classes))
    # flatten is implied before an fc, but dropout must come after it to stay out of forward_features
    flat = " gap" if head == "gap" else " flatten" if dropout else ""
    return f"{_prefix(activation)}{body}{flat} {fcs}"


# ------------------------------------------------------------------------------------------- builders


@register_model(paper="ConvNets lecture: the typical CNN (conv-pool-conv-pool-fc)", input_size=(1, 28, 28), num_classes=10)
def simple_cnn(
    num_classes: int = 10,
    in_channels: int = 1,
    input_size: int | tuple[int, int] = 28,
    activation: str = "relu",
    batch_norm: bool = False,
) -> SpecNet:
    """The lecture's typical CNN (C x H x W): 1x28x28 -> 32x28x28 -> 32x14x14 -> 64x14x14 -> 64x7x7 -> 10.

    `input_size` is the side (or `(H, W)`) of the images; the fc layer's size depends on it.
    `batch_norm=True` puts batch norm between each conv and its activation.
    """
    bn = "/bn" if batch_norm else ""
    spec = f"{_prefix(activation)}conv3x3-32{bn} maxpool2 conv3x3-64{bn} maxpool2 fc{positive_int('num_classes', num_classes)}"
    return build_spec(spec, (positive_int("in_channels", in_channels), *_hw(input_size)))


@register_model(paper="ConvNets lecture: (Conv x n + MaxPool) x m, channels doubling", input_size=(1, 28, 28), num_classes=10)
def vgg_like(
    n: int = 2,
    m: int = 3,
    width: int = 32,
    num_classes: int = 10,
    in_channels: int = 1,
    input_size: int | tuple[int, int] = 28,
    batch_norm: bool = False,
    head: str = "flatten",
    hidden: tuple[int, ...] = (),
    dropout: float = 0.0,
    activation: str = "relu",
) -> SpecNet:
    """`(Conv x n + MaxPool) x m`: m stages of n 3x3 "same" convs and a 2x2 max-pool; stage i has width*2**i channels.

    Args:
        n: convolutions per stage.
        m: stages; each halves height and width (rounding down), so at most log2(min(H, W)).
        width: channels of the first stage.
        batch_norm: batch norm between each conv and its activation (convs then have no bias).
        head: "flatten" (flatten + fc, the lecture's) or "gap" (global average pool + fc: fewer parameters,
            any input size).
        hidden: sizes of hidden fc layers before the classifier, e.g. (128,).
        dropout: probability of a dropout layer before each fc layer (0: none).
        activation: of every conv and hidden fc layer.
    """
    h, w = _hw(input_size)
    positive_int("m", m)
    max_m = min(h, w).bit_length() - 1  # floor(log2(min(H, W))): halvings before the map is 1x1
    if m > max_m:
        raise CnnlabError(
            f"vgg_like: m={m} stages halve a {h}x{w} input {m} times, below 1x1; m <= {max_m} works for this size"
        )
    spec = vgg_spec(n, m, width, num_classes, batch_norm, head, tuple(hidden), dropout, activation)
    return build_spec(spec, (positive_int("in_channels", in_channels), h, w))
