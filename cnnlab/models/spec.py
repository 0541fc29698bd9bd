"""The lecture's notation for CNNs: `build_spec("conv3x3-32 maxpool2 conv3x3-64 maxpool2 fc10")`.

A spec is a list of tokens separated by spaces (or commas). On a 1x28x28 input the spec above builds
(C x H x W, PyTorch's order) 1x28x28 -> 32x28x28 -> 32x14x14 -> 64x14x14 -> 64x7x7 -> 10, with 320 + 18,496 + 31,370 = 50,186 parameters.

Layers (numbers are integers unless said otherwise):

    conv<k>x<k>-<c>    convolution to c channels, then the current activation. Non-square: conv1x3-16.
                       Options after '/', combinable in any order (conv3x3-64/s2/bn):
                         /s<stride>  /d<dilation>  /p<pad> or /valid (= /p0)
                         /bn  batch norm between the convolution and the activation (the conv then has no bias)
                         /pool<k>  a k x k max-pool (stride k) right after the convolution, before its batch
                               norm and activation: conv -> maxpool -> bn -> act, as airbench orders its
                               layers. Without /bn it computes what 'conv maxpool<k>' does (max commutes with
                               a rising activation), so it only saves work; with /bn the batch norm sees the
                               pooled map, a slightly different layer that is ~10% faster to train on a CPU.
                       Padding by default: "same" for stride 1 (the output keeps H x W; even kernels are
                       padded one more on the bottom/right, as PyTorch's padding="same"); for stride s > 1
                       the same amount, d*(k-1)//2, so an odd kernel gives ceil(H/s) x ceil(W/s) (and
                       conv4x4-64/s2 halves an even size). /p<pad> pads both axes by pad.
    local<k>x<k>-<c>   the same with a locally-connected layer (a separate kernel at every position);
                       even kernels need an explicit /p or /valid.
    maxpool<k>, avgpool<k>   k x k pooling (or <kh>x<kw>), stride k unless /s<stride>; /p<pad> allowed.
                       Sizes round down: a 7x7 map -> maxpool2 -> 3x3.
    gap                global average pooling: (C, H, W) -> (C,)
    flatten            (C, H, W) -> (C*H*W,); implied before the first fc
    bn                 batch norm (2d on maps, 1d on vectors)
    dropout<p>         dropout with probability p, a float in [0, 1): dropout0.5
    fc<n>              fully connected to n units. Hidden fc layers take the current activation; the last
                       fc is the classifier and takes none (models return logits).
    softmax            accepted only as the last token, for fidelity to the lecture; it builds nothing (the
                       loss applies the softmax) and the canonical spec omits it.
    relu tanh sigmoid gelu elu leakyrelu identity
                       set the activation of the conv, local and hidden fc layers that FOLLOW the token
                       (ReLU until one is given): "tanh conv5x5-6 ..." makes every later conv tanh. A token
                       that would change the activation but applies to no later layer is an error, because
                       "conv3x3-32 tanh fc10" almost certainly meant a tanh conv; one that changes nothing
                       is accepted ("conv3x3-32 relu maxpool2 fc10", the lecture's way of writing it).
                       Inside a group they take effect in order, repetition after repetition.

Repetition (the lecture's `(Conv x n + MaxPool) x m`):

    tok*n              the token n times: conv3x3-32*2 == conv3x3-32 conv3x3-32
    ( ... )*m          the group m times; groups may nest. Parentheses may touch tokens: (conv3x3-32 maxpool2)*3
    ( ... )*m/double   ... and the channels of every conv/local layer in the group doubled on each repetition
                       (fc layers keep theirs): (conv3x3-32*2 maxpool2)*3/double fc10 ==
                       conv3x3-32 conv3x3-32 maxpool2 conv3x3-64 conv3x3-64 maxpool2 conv3x3-128 conv3x3-128 maxpool2 fc10

Classes: `num_classes`, when given, must equal the units of the last fc; a spec without any fc with
`num_classes` is an error (append `fc<n>` or `gap fc<n>` yourself: which one is an architecture decision).
A spec without fc is fine otherwise: its forward returns the last map (or vector, after gap/flatten),
which is what receptive-field exercises need.

Limits, so that one argument cannot ask for terabytes or hours (checked while parsing, before anything is
built): at most MAX_LAYERS tokens once every repetition is written out, kernel sizes, strides, dilations,
paddings and pools up to MAX_GEOMETRY, channels and units (after /double) up to MAX_WIDTH.

Errors name the token, its 1-based position among the space-separated words, and what would work:
`unknown layer 'maxpoool2' at token 2 of the spec (did you mean 'maxpool2'?); ...`.

The built model is a `SpecNet`: `features.<i>` (everything before the first flatten/gap/fc, one module per
operation, as torchvision's VGG) and `classifier.<i>`. `feature_info` lists the map after each layer that
downsamples (pool, strided conv) and, last, the map `forward_features` returns. Activations are not
in-place, so forward hooks see every conv's own output. `model.spec` is the canonical spec (lower case,
default options, softmax and activation tokens that change nothing dropped; groups kept): building it gives
the same architecture and the same `spec`. `model.expanded_spec` is the same with every repetition written
out. For tools: `parse_spec(text)` (the layers, repetitions expanded, with positions), `canonical_spec(text)`,
`expand_spec(text)`.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from dataclasses import dataclass, field
from functools import partial

import torch
from torch import nn

from cnnlab.errors import CnnlabError, positive_int
from cnnlab.layers.activations import ACTIVATIONS, make_activation
from cnnlab.layers.locally_connected import LocallyConnected2d, conv_output_size
from cnnlab.models._base import ConvNet

__all__ = ["MAX_GEOMETRY", "MAX_LAYERS", "MAX_WIDTH", "SpecLayer", "SpecNet", "build_spec", "canonical_spec",
           "expand_spec", "parse_spec"]

MAX_LAYERS = 2_000  # tokens with every repetition written out: ResNet-1202, the deepest in the papers, has ~1,200
MAX_WIDTH = 1 << 16  # channels of a conv/local layer or units of an fc layer (the zoo's widest: 4,096)
MAX_GEOMETRY = 1 << 12  # kernel sizes, strides, dilations, paddings and pool sizes, in pixels

_LAYER_WORDS = ["conv", "local", "maxpool", "avgpool", "gap", "flatten", "bn", "dropout", "fc", "softmax"]
_CONV_OPTIONS = {"s": True, "d": True, "p": True, "valid": False, "pool": True, "bn": False}
_POOL_OPTIONS = {"s": True, "p": True}
_FORMS = (
    "conv<k>x<k>-<c>[/s<n>/d<n>/p<n>/valid/pool<k>/bn], local<k>x<k>-<c>, maxpool<k>[/s<n>/p<n>], avgpool<k>, gap, "
    "flatten, bn, dropout<p>, fc<n>, softmax, " + "/".join(ACTIVATIONS) + ", tok*n, ( ... )*m[/double]"
)


@dataclass(frozen=True)
class SpecLayer:
    """One token of a spec after parsing. Unused fields keep their defaults.

    kind: "conv", "local", "maxpool", "avgpool", "gap", "flatten", "bn", "dropout", "fc", "softmax", or
    "act" (an activation token; `name` says which).
    """

    kind: str
    position: int  # 1-based word of the spec text it came from
    channels: int = 0  # conv/local output channels, fc units
    kernel: tuple[int, int] = (1, 1)  # (kh, kw) of conv/local/pool
    stride: int = 1  # pools: 0 means "equal to the kernel"
    padding: int | None = None  # None: the default (see the module docstring)
    dilation: int = 1
    bn: bool = False  # conv/local followed by batch norm
    pool: int = 0  # conv/local: k of a k x k max-pool between the convolution and its bn/activation (0: none)
    p: float = 0.0  # dropout probability
    name: str = ""  # activation name of an "act" token

    @property
    def text(self) -> str:
        """The canonical token, e.g. `conv3x3-64/s2/bn`."""
        k = self.kernel
        if self.kind in ("conv", "local"):
            s = f"{self.kind}{k[0]}x{k[1]}-{self.channels}"
            s += f"/s{self.stride}" if self.stride != 1 else ""
            s += f"/d{self.dilation}" if self.dilation != 1 else ""
            if self.padding is not None:
                s += "/valid" if self.padding == 0 else f"/p{self.padding}"
            s += f"/pool{self.pool}" if self.pool else ""
            return s + ("/bn" if self.bn else "")
        if self.kind in ("maxpool", "avgpool"):
            s = self.kind + (f"{k[0]}" if k[0] == k[1] else f"{k[0]}x{k[1]}")
            s += f"/s{self.stride}" if self.stride else ""
            return s + (f"/p{self.padding}" if self.padding else "")
        if self.kind == "dropout":
            return f"dropout{self.p:g}" if float(f"{self.p:g}") == self.p else f"dropout{self.p!r}"
        if self.kind == "fc":
            return f"fc{self.channels}"
        return self.name if self.kind == "act" else self.kind


@dataclass
class _Item:
    layer: SpecLayer
    repeat: int = 1


@dataclass
class _Group:
    position: int
    items: list = field(default_factory=list)  # of _Item | _Group
    repeat: int = 1
    double: bool = False


# ---------------------------------------------------------------------------------------------- parsing


def _fail(what: str, token: str, pos: int, hint: str) -> CnnlabError:
    shown = token if len(token) <= 60 else f"{token[:40]}...({len(token):,} characters)"
    return CnnlabError(f"{what} '{shown}' at token {pos} of the spec{hint}")


def _int(text: str, what: str, token: str, pos: int, minimum: int = 1, maximum: int = MAX_GEOMETRY) -> int:
    value = int(text) if len(text) <= 12 else maximum + 1  # int() of a 5,000-digit string raises
    if value < minimum:
        raise _fail(f"{what} must be at least {minimum} in", token, pos, f"; got {value}")
    if value > maximum:
        raise _fail(f"{what} must be at most {maximum:,} in", token, pos, f"; got {text[:20]}{'...' if len(text) > 20 else ''}")
    return value


def _default_padding(kernel: tuple[int, int], dilation: int) -> int | None:
    """The int padding a square-padded conv gets by default, or None if the two axes differ."""
    ph, pw = (dilation * (k - 1) // 2 for k in kernel)
    return ph if ph == pw else None


def _parse_token(word: str, pos: int) -> _Item:
    """`conv3x3-64/s2/bn*2` -> an `_Item` (one SpecLayer and its repeat count)."""
    body, repeat = word.lower(), 1
    if "*" in body:
        m = re.fullmatch(r"([^*]+)\*(\d+)", body)
        if not m:
            raise _fail("bad repeat", word, pos, "; write tok*n with a whole n >= 1, e.g. conv3x3-32*2")
        body, repeat = m.group(1), _int(m.group(2), "the repeat count", word, pos, maximum=MAX_LAYERS)
    base, *opts = body.split("/")
    head = re.match(r"[a-z]*", base).group(0)
    if head in ACTIVATIONS:
        if base != head or opts:
            raise _fail("bad activation", word, pos, f"; '{head}' takes no number or option")
        return _Item(SpecLayer("act", pos, name=head), repeat)
    if head not in _LAYER_WORDS:
        # Suggest the closest layer word with the token's own numbers: maxpoool2 -> maxpool2.
        close = difflib.get_close_matches(head, [*_LAYER_WORDS, *ACTIVATIONS], n=1, cutoff=0.6)
        rest = "" if close and close[0] in ACTIVATIONS else body[len(head):]
        hint = f" (did you mean '{close[0]}{rest}'?)" if close else ""
        raise _fail("unknown layer", word, pos, f"{hint}; known forms: {_FORMS}")
    if head in ("conv", "local"):
        m = re.fullmatch(rf"{head}(\d+)(?:x(\d+))?-(\d+)", base)
        if not m:
            raise _fail(f"bad {head} layer", word, pos, f"; write {head}<k>x<k>-<channels>, e.g. {head}3x3-32")
        kh = _int(m.group(1), "the kernel size", word, pos)
        kw = _int(m.group(2), "the kernel size", word, pos) if m.group(2) else kh
        layer = SpecLayer(head, pos, channels=_int(m.group(3), "the channel count", word, pos, maximum=MAX_WIDTH),
                          kernel=(kh, kw))
        allowed = _CONV_OPTIONS
    elif head in ("maxpool", "avgpool"):
        m = re.fullmatch(rf"{head}(\d+)(?:x(\d+))?", base)
        if not m:
            raise _fail(f"bad {head} layer", word, pos, f"; write {head}<k>, e.g. {head}2")
        kh = _int(m.group(1), "the pool size", word, pos)
        kw = _int(m.group(2), "the pool size", word, pos) if m.group(2) else kh
        layer, allowed = SpecLayer(head, pos, kernel=(kh, kw), stride=0, padding=0), _POOL_OPTIONS
    elif head == "dropout":
        m = re.fullmatch(r"dropout(\d*\.?\d+)", base)
        if not m or not 0 <= float(m.group(1)) < 1:
            raise _fail("bad dropout", word, pos, "; write dropout<p> with 0 <= p < 1, e.g. dropout0.5")
        layer, allowed = SpecLayer("dropout", pos, p=float(m.group(1))), {}
    elif head == "fc":
        m = re.fullmatch(r"fc(\d+)", base)
        if not m:
            raise _fail("bad fc layer", word, pos, "; write fc<units>, e.g. fc10")
        layer, allowed = SpecLayer("fc", pos, channels=_int(m.group(1), "the unit count", word, pos, maximum=MAX_WIDTH)), {}
    else:
        if base != head:
            raise _fail(f"bad {head} layer", word, pos, f"; '{head}' takes no number")
        layer, allowed = SpecLayer(head, pos), {}
    return _Item(_apply_options(layer, opts, word, pos, allowed), repeat)


def _apply_options(layer: SpecLayer, opts: list[str], word: str, pos: int, allowed: dict[str, bool]) -> SpecLayer:
    """Apply `/s2`-style options; `allowed` maps an option name to whether it takes a number."""
    seen: set[str] = set()
    changes: dict = {}
    for opt in opts:
        m = re.fullmatch(r"([a-z]+)(\d*)", opt)
        name, num = (m.group(1), m.group(2)) if m else (opt, "")
        key = "p" if name == "valid" else name
        if name not in allowed or allowed[name] != bool(num):
            what = f"'{layer.kind}' takes no options" if not allowed else "its options are " + ", ".join(
                f"/{n}<n>" if takes else f"/{n}" for n, takes in allowed.items())
            raise _fail(f"unknown option '/{opt}' in", word, pos, f"; {what}")
        if key in seen:
            raise _fail(f"option '/{opt}' given twice (or /p with /valid) in", word, pos, "")
        seen.add(key)
        if name == "s":
            changes["stride"] = _int(num, "the stride", word, pos)
        elif name == "d":
            changes["dilation"] = _int(num, "the dilation", word, pos)
        elif name == "p":
            changes["padding"] = _int(num, "the padding", word, pos, minimum=0)
        elif name == "valid":
            changes["padding"] = 0
        elif name == "pool":
            changes["pool"] = _int(num, "the pool size", word, pos, minimum=2)
        else:
            changes["bn"] = True
    layer = dataclasses.replace(layer, **changes)
    # Normalise defaults away so that equal layers print equally.
    if layer.kind in ("conv", "local") and layer.padding is not None:
        # At stride 1 an odd total padding means the default is the lopsided "same": no int equals it.
        lopsided = layer.stride == 1 and any(layer.dilation * (k - 1) % 2 for k in layer.kernel)
        if not lopsided and layer.padding == _default_padding(layer.kernel, layer.dilation):
            layer = dataclasses.replace(layer, padding=None)
    if layer.kind in ("maxpool", "avgpool") and layer.kernel == (layer.stride, layer.stride):
        layer = dataclasses.replace(layer, stride=0)
    return layer


def _words(text: str) -> list[str]:
    if not isinstance(text, str) or not text.strip(" ,\t\n"):
        raise CnnlabError(f"a spec must be a non-empty string of layers such as 'conv3x3-32 maxpool2 fc10', got {text!r}")
    return [w for w in re.split(r"[\s,]+", text.strip()) if w]


def _parse_tree(text: str) -> list:
    """Spec text -> a list of `_Item` and `_Group` (groups not expanded)."""
    stack = [_Group(0)]
    for pos, word in enumerate(_words(text), start=1):
        m = re.fullmatch(r"(\(*)([^()]*)((?:\)[^()]*)*)", word)
        if not m:
            raise _fail("misplaced parenthesis in", word, pos, "; groups are written (tok tok ...)*n")
        for _ in m.group(1):
            stack.append(_Group(pos))
        if m.group(2):
            stack[-1].items.append(_parse_token(m.group(2), pos))
        for closer in re.findall(r"\)[^()]*", m.group(3)):
            c = re.fullmatch(r"\)(?:\*(\d+))?(/double)?", closer.lower())
            if not c:
                raise _fail("bad group ending", word, pos, "; close a group with ')', ')*n' or ')*n/double'")
            if len(stack) == 1:
                raise _fail("')' closes no group in", word, pos, "; remove it or open the group with '('")
            group = stack.pop()
            if not group.items:
                raise _fail("empty group", word, pos, "; put layers between '(' and ')'")
            group.repeat = _int(c.group(1), "the repeat count", word, pos, maximum=MAX_LAYERS) if c.group(1) else 1
            group.double = bool(c.group(2))
            stack[-1].items.append(group)
    if len(stack) > 1:
        raise CnnlabError(
            f"unclosed '(' at token {stack[-1].position} of the spec; close the group with ')' or ')*n'"
        )
    _check_size(stack[0].items)
    return stack[0].items


def _check_size(nodes: list) -> None:
    """Refuse a tree that writes out to more than MAX_LAYERS tokens or MAX_WIDTH channels, without writing it out."""

    def walk(nodes: list, scale: int) -> int:
        count = 0
        for node in nodes:
            if isinstance(node, _Item):
                layer = node.layer
                if layer.kind in ("conv", "local") and layer.channels * scale > MAX_WIDTH:
                    raise _fail(f"/double makes the channels more than {MAX_WIDTH:,} in", layer.text, layer.position,
                                f" ({layer.channels} x {scale:,}); use fewer repetitions or fewer channels")
                count += node.repeat
            else:
                doubled = node.double and node.repeat > 1
                if doubled and node.repeat - 1 > MAX_WIDTH.bit_length():  # 2**(repeat-1) alone is too wide
                    count += node.repeat * walk(node.items, scale * (1 << (MAX_WIDTH.bit_length())))
                else:
                    count += node.repeat * walk(node.items, scale * (2 ** (node.repeat - 1) if doubled else 1))
            if count > MAX_LAYERS:
                raise CnnlabError(f"the spec has more than {MAX_LAYERS:,} layers once its repetitions are written out "
                                  f"(at token {getattr(node, 'position', 0) or node.layer.position}); use fewer or smaller repetitions")
        return count

    walk(nodes, 1)


def _expand(nodes: list, scale: int = 1) -> list[SpecLayer]:
    out: list[SpecLayer] = []
    for node in nodes:
        if isinstance(node, _Item):
            layer = node.layer
            if layer.kind in ("conv", "local") and scale != 1:
                layer = dataclasses.replace(layer, channels=layer.channels * scale)
            out.extend([layer] * node.repeat)
        else:
            for i in range(node.repeat):
                out.extend(_expand(node.items, scale * (2**i if node.double else 1)))
    return out


def _last_activation(nodes: list) -> str | None:
    for node in reversed(nodes):
        if isinstance(node, _Item) and node.layer.kind == "act":
            return node.layer.name
        if isinstance(node, _Group) and (name := _last_activation(node.items)):
            return name
    return None


def _normalize(nodes: list, top: bool = True) -> list:
    """The canonical tree: `( ... )*1` spliced in, `(tok)*m` -> `tok*m`, softmax dropped, and at the top
    level activation tokens that change nothing dropped. Inside groups activations stay as written, since
    the activation in effect differs between the first repetition and the next."""
    flat: list = []
    for node in nodes:
        if isinstance(node, _Item):
            if node.layer.kind == "softmax":
                continue
            flat.append(_Item(node.layer, 1 if node.layer.kind == "act" else node.repeat))
            continue
        items = _normalize(node.items, top=False)
        if not items:
            continue
        if node.repeat == 1:
            flat.extend(items)
        elif len(items) == 1 and not node.double and not (isinstance(items[0], _Group) and items[0].double):
            inner = items[0]
            if isinstance(inner, _Item):
                flat.append(_Item(inner.layer, 1 if inner.layer.kind == "act" else inner.repeat * node.repeat))
            else:
                flat.append(_Group(inner.position, inner.items, inner.repeat * node.repeat, False))
        else:
            flat.append(_Group(node.position, items, node.repeat, node.double))
    if not top:
        return flat
    out: list = []
    state, pending = "relu", None
    for node in flat:
        if isinstance(node, _Item) and node.layer.kind == "act":
            pending = node
            continue
        if pending is not None and pending.layer.name != state:
            out.append(pending)
            state = pending.layer.name
        pending = None
        out.append(node)
        if isinstance(node, _Group):
            state = _last_activation(node.items) or state
    if pending is not None and pending.layer.name != state:
        out.append(pending)
    return out


def _render(nodes: list) -> str:
    parts = []
    for node in nodes:
        if isinstance(node, _Item):
            parts.append(node.layer.text + (f"*{node.repeat}" if node.repeat > 1 else ""))
        else:
            suffix = f"*{node.repeat}" + ("/double" if node.double else "")
            parts.append(f"({_render(node.items)}){suffix}")
    return " ".join(parts)


def parse_spec(text: str) -> list[SpecLayer]:
    """The layers of a spec, repetitions expanded, in order (activation and softmax tokens included).

    Checks the syntax only; shape errors (a map shrunk below 1x1) need `build_spec` and an input size.
    """
    return _expand(_parse_tree(text))


def canonical_spec(text: str) -> str:
    """The canonical form of a spec (what `SpecNet.spec` shows): `"Conv3x3-32 relu MaxPool2"` -> `"conv3x3-32 maxpool2"`."""
    return _render(_normalize(_parse_tree(text)))


def expand_spec(text: str) -> str:
    """The canonical form with every repetition written out (what `SpecNet.expanded_spec` shows)."""
    return _render(_normalize([_Item(layer) for layer in parse_spec(text)]))


# --------------------------------------------------------------------------------------------- building


class SpecNet(ConvNet):
    """A network built from a spec; see the module docstring. `features` then `classifier`.

    `forward_features`: `(N, C, H, W)` -> the map before flatten/gap. `forward_head`: that map ->
    `(N, num_classes)` logits (or, for a spec without fc, whatever its last layer gives).
    """

    def __init__(self, tree: list, input_size: tuple[int, int, int], features: list[nn.Module],
                 classifier: list[nn.Module], feature_info: list[dict], head_in: tuple[int, ...]):
        super().__init__()
        self._tree = tree  # normalized (see `_normalize`)
        self.input_size = input_size
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(*classifier)
        self.feature_info = feature_info
        self._head_in = head_in  # (C, H, W) or (D,): the output of the last layer, what a new fc would read
        has_fc = any(isinstance(layer, _Item) and layer.layer.kind == "fc" for layer in _expand_items(tree))
        self._final_fc = len(classifier) - 1 if has_fc else None  # the classifier is the last module
        self.num_classes = classifier[-1].out_features if has_fc else 0

    @property
    def spec(self) -> str:
        """The canonical spec: building it again gives this architecture and this string."""
        return _render(self._tree)

    @property
    def expanded_spec(self) -> str:
        """The canonical spec with every repetition written out."""
        return _render(_normalize(_expand_items(self._tree)))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)  # (N, C, H, W) -> (N, C', H', W')

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        stop = self._final_fc if pre_logits and self._final_fc is not None else len(self.classifier)
        for module in list(self.classifier)[:stop]:
            x = module(x)
        return x  # (N, num_classes), or (N, D) with pre_logits

    def get_classifier(self) -> nn.Module:
        return self.classifier[self._final_fc] if self._final_fc is not None else nn.Identity()

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the last fc by a fresh `fc<num_classes>` (or add one to a spec without fc); `spec` follows."""
        positive_int("num_classes", num_classes)
        fc = _Item(SpecLayer("fc", 0, channels=num_classes))
        if self._final_fc is not None:
            old = self.classifier[self._final_fc]
            self.classifier[self._final_fc] = nn.Linear(old.in_features, num_classes)
            last = self._tree[-1]
            if isinstance(last, _Item) and last.layer.kind == "fc" and last.repeat == 1:
                self._tree[-1] = fc
            else:  # the classifier sits inside a repetition: write the spec out, then edit it
                items = _expand_items(self._tree)
                self._tree = _normalize([*items[:-1], fc])
        else:
            if len(self._head_in) > 1:
                self.classifier.append(nn.Flatten())
            flat = 1
            for n in self._head_in:
                flat *= n
            self.classifier.append(nn.Linear(flat, num_classes))
            self._final_fc = len(self.classifier) - 1
            self._tree = _normalize([*self._tree, fc])
        self.num_classes = num_classes


def _expand_items(tree: list) -> list[_Item]:
    return [_Item(layer) for layer in _expand(tree)]


def _check_input_size(input_size) -> tuple[int, int, int]:
    size = tuple(input_size) if isinstance(input_size, (tuple, list)) else (input_size,)
    if len(size) != 3 or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in size):
        raise CnnlabError(
            f"input_size must be three positive integers (C, H, W) such as (1, 28, 28), got {input_size!r}"
        )
    return size  # type: ignore[return-value]


def _check_order(layers: list[SpecLayer], num_classes: int | None) -> int | None:
    """Softmax last, nothing after the classifier, num_classes consistent; returns the classifier's index."""
    if not any(layer.kind not in ("act", "softmax") for layer in layers):
        raise CnnlabError("the spec has no layers, only activations or softmax; add some, e.g. 'conv3x3-32 fc10'")
    for layer in layers[:-1]:
        if layer.kind == "softmax":
            raise _fail("softmax may only be the last token, not", layer.text, layer.position,
                        "; remove it (models return logits, the loss applies the softmax)")
    fcs = [i for i, layer in enumerate(layers) if layer.kind == "fc"]
    final = fcs[-1] if fcs else None
    if final is not None:
        for layer in layers[final + 1:]:
            if layer.kind not in ("softmax", "act"):
                raise _fail("layer", layer.text, layer.position,
                            f" comes after the classifier '{layers[final].text}' at token "
                            f"{layers[final].position}; only softmax may follow the last fc")
    if num_classes is not None:
        positive_int("num_classes", num_classes)
        if final is None:
            raise CnnlabError(
                f"num_classes={num_classes} was given but the spec has no fc layer to produce it; end the spec "
                f"with 'fc{num_classes}' (or 'gap fc{num_classes}'), or leave num_classes out"
            )
        if layers[final].channels != num_classes:
            raise _fail(f"num_classes={num_classes} differs from the classifier", layers[final].text,
                        layers[final].position, f"; write fc{num_classes} or leave num_classes out")
    return final


def build_spec(
    text: str, input_size: tuple[int, int, int] = (1, 28, 28), num_classes: int | None = None
) -> SpecNet:
    """Build the network a spec describes for `(C, H, W)` inputs; see the module docstring.

    Returns a `SpecNet` mapping `(N, C, H, W)` to `(N, num_classes)` logits. Raises `CnnlabError` naming
    the offending token for any mistake, before any weight is allocated.
    """
    tree = _parse_tree(text)
    layers = _expand(tree)
    c, h, w = _check_input_size(input_size)
    final = _check_order(layers, num_classes)
    plan = _plan(layers, (c, h, w), final)  # all checks happen here, before any module is built
    features: list[nn.Module] = []
    classifier: list[nn.Module] = []
    info: list[dict] = []
    for step in plan:
        target = features if step["part"] == "features" else classifier
        target.extend(factory() for factory in step["modules"])
        if step["stage"]:
            info.append({"name": f"features.{len(features) - 1}", "channels": step["channels"], "stride": step["stride"]})
    feats = [s for s in plan if s["part"] == "features"]
    if feats and (not info or info[-1]["name"] != f"features.{len(features) - 1}"):
        info.append({"name": f"features.{len(features) - 1}", "channels": feats[-1]["channels"],
                     "stride": feats[-1]["stride"]})
    return SpecNet(_normalize(tree), (c, h, w), features, classifier, info, plan[-1]["shape"])


def _plan(layers: list[SpecLayer], input_size: tuple[int, int, int], final: int | None) -> list[dict]:
    """Walk the layers with the map's shape; one step per layer: its module factories and shapes.

    Checking everything here first means a bad spec raises before any weight is allocated.
    """
    act, act_pos = "relu", 0
    used: set[int] = set()
    changing: dict[int, SpecLayer] = {}  # activation tokens that change the activation in effect
    shape: tuple[int, ...] = input_size
    stride = 1
    flat_at: SpecLayer | None = None  # the token where the map became a vector
    plan: list[dict] = []

    def activation() -> list:
        used.add(act_pos)
        return [] if act == "identity" else [partial(make_activation, act)]

    def shrink(layer: SpecLayer, pad: tuple[int, int], s: tuple[int, int], d: int) -> tuple[int, int]:
        size = shape[1:]
        out = tuple(conv_output_size(n, k, si, p, d) for n, k, si, p in zip(size, layer.kernel, s, pad, strict=True))
        if min(out) < 1:
            raise _fail("layer", layer.text, layer.position,
                        f" shrinks the {size[0]}x{size[1]} map below 1x1; remove it, pad it or use a larger input")
        return out

    for i, layer in enumerate(layers):
        kind = layer.kind
        step = {"part": "features" if flat_at is None else "classifier", "modules": [], "stage": False}
        if kind == "act":
            if layer.name != act:
                changing.setdefault(layer.position, layer)
            act, act_pos = layer.name, layer.position
            continue
        if kind in ("conv", "local", "maxpool", "avgpool", "gap") and flat_at is not None:
            raise _fail("layer", layer.text, layer.position,
                        f" comes after '{flat_at.text}' at token {flat_at.position}, which made the map a vector; "
                        "put convolutions and pooling before gap, flatten and fc")
        if kind in ("conv", "local"):
            cin, hw = shape[0], shape[1:]
            d = layer.dilation
            pad = (layer.padding,) * 2 if layer.padding is not None else tuple(d * (k - 1) // 2 for k in layer.kernel)
            # "same" with an even total padding cannot be symmetric: PyTorch pads one more at the bottom/right.
            lopsided = layer.padding is None and layer.stride == 1 and any(d * (k - 1) % 2 for k in layer.kernel)
            if lopsided and kind == "local":
                raise _fail("layer", layer.text, layer.position,
                            " has an even kernel, so 'same' padding would be lopsided; give /p<pad> or /valid")
            out = hw if lopsided else shrink(layer, pad, (layer.stride,) * 2, d)
            if kind == "conv":
                step["modules"].append(partial(nn.Conv2d, cin, layer.channels, layer.kernel, layer.stride,
                                               "same" if lopsided else pad, d, bias=not layer.bn))
            else:
                step["modules"].append(partial(LocallyConnected2d, cin, layer.channels, layer.kernel, hw,
                                               layer.stride, pad, d, bias=not layer.bn))
            if layer.pool:
                if min(out) < layer.pool:
                    raise _fail("layer", layer.text, layer.position, f" max-pools its {out[0]}x{out[1]} output "
                                f"below 1x1; use a smaller /pool, drop it or use a larger input")
                out = tuple(n // layer.pool for n in out)
                step["modules"].append(partial(nn.MaxPool2d, layer.pool, layer.pool))
            if layer.bn:
                step["modules"].append(partial(nn.BatchNorm2d, layer.channels))
            step["modules"] += activation()
            shape, stride = (layer.channels, *out), stride * layer.stride * (layer.pool or 1)
            step["stage"] = layer.stride > 1 or layer.pool > 1
        elif kind in ("maxpool", "avgpool"):
            s = layer.kernel if layer.stride == 0 else (layer.stride,) * 2
            if 2 * layer.padding > min(layer.kernel):
                raise _fail("padding larger than half the pool size in", layer.text, layer.position,
                            f"; use /p{min(layer.kernel) // 2} or less")
            out = shrink(layer, (layer.padding,) * 2, s, 1)
            pool = nn.MaxPool2d if kind == "maxpool" else nn.AvgPool2d
            step["modules"].append(partial(pool, layer.kernel, s, layer.padding))
            shape, stride = (shape[0], *out), stride * max(s)
            step["stage"] = max(s) > 1
        elif kind in ("gap", "flatten"):
            if flat_at is not None:
                raise _fail("layer", layer.text, layer.position, f": the map is already a vector after "
                            f"'{flat_at.text}' at token {flat_at.position}; remove it")
            flat_at, step["part"] = layer, "classifier"
            step["modules"] = [partial(nn.AdaptiveAvgPool2d, 1), nn.Flatten] if kind == "gap" else [nn.Flatten]
            shape = (shape[0],) if kind == "gap" else (shape[0] * shape[1] * shape[2],)
        elif kind == "bn":
            step["modules"].append(partial(nn.BatchNorm2d if len(shape) == 3 else nn.BatchNorm1d, shape[0]))
        elif kind == "dropout":
            step["modules"].append(partial(nn.Dropout, layer.p))
        elif kind == "fc":
            if flat_at is None:
                flat_at, step["part"] = layer, "classifier"
                step["modules"].append(nn.Flatten)
                shape = (shape[0] * shape[1] * shape[2],)
            step["modules"].append(partial(nn.Linear, shape[0], layer.channels))
            if i != final:
                step["modules"] += activation()
            shape = (layer.channels,)
        if kind == "softmax":
            continue
        step["shape"], step["channels"], step["stride"] = shape, shape[0], stride
        plan.append(step)
    for pos, layer in changing.items():
        if pos not in used:
            raise _fail("activation", layer.text, pos,
                        " applies to no layer: an activation token sets the activation of the conv, local and "
                        f"hidden fc layers AFTER it; put it before them, e.g. '{layer.text} conv3x3-32 ...'")
    return plan
