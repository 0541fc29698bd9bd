"""timm backbones (`timm:NAME`): weights from a file or timm's own download (a local server), stages
through timm's forward_intermediates, and `summary`'s receptive fields and MACs on depthwise and grouped
convolutions. Truth: timm's own forward, gradients of one output pixel w.r.t. the input (the receptive
field, measured), and torch.utils.flop_counter.FlopCounterMode (the MACs, counted independently)."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import pytest
import torch

timm = pytest.importorskip("timm")

from test_transfer import http_dir  # noqa: E402, F401 - the local HTTP server fixture

from cnnlab.core.weights import save_safetensors  # noqa: E402
from cnnlab.errors import CnnlabError  # noqa: E402
from cnnlab.inspect import summary  # noqa: E402
from cnnlab.models import resolve_model  # noqa: E402
from cnnlab.transfer_learning.backbone import Truncated, cut_points, load_backbone  # noqa: E402

NAME = "mobilenetv3_small_100"  # depthwise convolutions, squeeze-excitation, hard-swish: 2.5 M parameters


def _reference(seed: int = 0):
    torch.manual_seed(seed)
    return timm.create_model(NAME).eval()


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_weights_file_loads_into_the_timm_backbone(tmp_path, suffix):
    ref = _reference()
    path = tmp_path / f"w{suffix}"
    if suffix == ".pth":
        torch.save(ref.state_dict(), path)
    else:
        save_safetensors(path, ref.state_dict())
    bb = load_backbone(f"timm:{NAME}:{path}")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(bb.model(x), ref(x))
    assert bb.input_size == (3, 224, 224) and bb.interpolation == "bicubic"  # timm's pretrained config
    assert bb.mean == pytest.approx((0.485, 0.456, 0.406)) and "bicubic" in bb.config
    assert not bb.fixed_size


def test_stage_cuts_go_through_forward_intermediates_and_equal_the_module_outputs():
    bb = load_backbone(f"timm:{NAME}")
    stages = [f["module"] for f in bb.model.feature_info]
    assert list(cut_points(bb.model))[: len(stages)] == stages
    x = torch.randn(1, 3, 64, 64)
    for i, name in enumerate(stages):
        cut = Truncated(bb.model, name)
        assert cut._timm_stage == i
        box: list[torch.Tensor] = []
        handle = bb.model.get_submodule(name).register_forward_hook(lambda m, a, out, box=box: box.append(out))
        with torch.no_grad():
            bb.model(x)
            got = cut(x)
        handle.remove()
        assert torch.equal(got, box[0].flatten(1))


def test_timm_download_through_a_local_mirror(tmp_path, http_dir, monkeypatch):  # noqa: F811
    served, base = http_dir
    ref = _reference(seed=3)
    raw = tmp_path / "raw.pth"
    torch.save(ref.state_dict(), raw)
    digest = hashlib.sha256(raw.read_bytes()).hexdigest()
    (served / f"{NAME}-{digest[:8]}.pth").write_bytes(raw.read_bytes())
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the hub is never asked: the mirror replaces it
    monkeypatch.setenv("CNNLAB_TIMM_URL", f"{base}/{{name}}-{digest[:8]}.pth")
    bb = load_backbone(f"timm:{NAME}:pretrained")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(bb.model(x), ref(x))
    assert (tmp_path / "torch_home" / "hub" / "checkpoints" / f"{NAME}-{digest[:8]}.pth").is_file()
    monkeypatch.setenv("CNNLAB_TIMM_URL", f"{base}/missing.pth")
    with pytest.raises(CnnlabError, match="cannot get timm's pretrained weights.*timm:.*:PATH"):
        load_backbone(f"timm:{NAME}:pretrained")


def test_train_and_summary_build_timm_models_for_the_data():
    model, size = resolve_model(f"timm:{NAME}", input_size=(1, 32, 32), num_classes=10)
    assert size == (1, 32, 32) and model.num_classes == 10
    with torch.no_grad():
        assert model.eval()(torch.randn(2, 1, 32, 32)).shape == (2, 10)
    with pytest.raises(CnnlabError, match="did you mean 'convnext_atto'"):
        resolve_model("timm:convnxt_atto")
    with pytest.raises(CnnlabError, match="transfer --backbone"):
        resolve_model(f"timm:{NAME}:w.pth")


@pytest.mark.slow
def test_train_a_timm_model_and_rebuild_it_from_the_run(tmp_path):
    from cnnlab.data.dataset import in_memory_dataset
    from cnnlab.training import train
    from cnnlab.training.run import load_model

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (24, 1, 32, 32), generator=g, dtype=torch.uint8)
    labels = torch.arange(24) % 3
    ds = in_memory_dataset("toy", ["a", "b", "c"], "test", (images[:16], labels[:16]), (images[16:], labels[16:]))
    result = train(f"timm:{NAME}", ds, max_steps=2, batch_size=8, out=str(tmp_path / "run"), quiet=True, plots=False,
                   val_fraction=0.0)
    model, card = load_model(tmp_path / "run", "last")
    assert card.model == f"timm:{NAME}" and tuple(card.input_size) == (1, 32, 32)
    x = images[16:].float() / 255.0
    with torch.no_grad():
        assert torch.allclose(model(x), result.model.eval()(x), atol=1e-5)


def _flop_counter_macs(name: str, size: tuple[int, int, int]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = timm.create_model(name).eval()
        x = torch.empty(1, *size)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    return counter.get_total_flops() // 2  # FlopCounterMode counts a multiply-accumulate as 2 FLOPs


@pytest.mark.parametrize("name", ["convnext_atto", NAME, "regnetx_002"])  # depthwise 7x7; depthwise + SE; groups of 8
def test_summary_macs_equal_an_independent_count(name):
    s = summary(f"timm:{name}", (3, 224, 224))
    assert s.total_macs == _flop_counter_macs(name, (3, 224, 224))


@pytest.mark.slow
def test_convnext_atto_receptive_fields_measured_by_gradients():
    """The receptive field of a pixel is where the input gradient of that pixel is nonzero: for ConvNeXt's
    stem, its first two stages (depthwise 7x7 convolutions) and a downsampling layer, the summary's field
    (extent and position) equals the measured one at a pixel whose field lies inside the image."""
    s = summary("timm:convnext_atto", (3, 224, 224))
    rows = {r.name: r for r in s.layers}
    torch.manual_seed(0)
    model = timm.create_model("convnext_atto").double().eval()
    names = ["stem.0", "stages.0.blocks.1.drop_path", "stages.1.downsample.1", "stages.1.blocks.1.drop_path"]
    outputs = {}
    hooks = [model.get_submodule(n).register_forward_hook(lambda m, a, out, n=n: outputs.__setitem__(n, out))
             for n in names]
    x = torch.randn(1, 3, 224, 224, dtype=torch.float64, requires_grad=True)
    model(x)
    for h in hooks:
        h.remove()
    for n in names:
        out, field = outputs[n], rows[n].field
        i = out.shape[-1] // 2
        lo, hi = field.h.interval(i)
        assert 0 <= lo and hi <= 223, (n, lo, hi)  # the whole field inside the image: nothing clipped
        (grad,) = torch.autograd.grad(out[0, :, i, i].sum(), x, retain_graph=True)
        seen = grad[0].abs().sum(0) != 0  # (H, W)
        rows_seen = torch.nonzero(seen.any(1)).flatten()
        cols_seen = torch.nonzero(seen.any(0)).flatten()
        assert (int(rows_seen.min()), int(rows_seen.max())) == (lo, hi), n
        assert (int(cols_seen.min()), int(cols_seen.max())) == field.w.interval(i), n
        assert rows[n].receptive_field[0] == hi - lo + 1
    assert rows["stages.1.blocks.1.drop_path"].receptive_field == [152, 152]  # 4 + 2*24 + 4 + 2*48: by hand


@pytest.mark.slow  # one fresh interpreter (cnnlab, torch and timm imported): ~5 s on 2 idle cores
def test_bad_input_is_one_line_exit_2_and_timm_is_imported_only_when_asked(tmp_path):
    good = tmp_path / "w.safetensors"
    save_safetensors(good, _reference().state_dict())
    (tmp_path / "bad.pth").write_bytes(b"not a torch file")
    (tmp_path / "cut.safetensors").write_bytes(good.read_bytes()[:4000])
    cases = {
        "name": ["summary", "timm:convnxt_atto"],
        "missing": ["transfer", "--backbone", f"timm:{NAME}:{tmp_path / 'nope.pth'}", "--data", "digits"],
        "corrupt": ["transfer", "--backbone", f"timm:{NAME}:{tmp_path / 'bad.pth'}", "--data", "digits"],
        "cut": ["transfer", "--backbone", f"timm:{NAME}:{tmp_path / 'cut.safetensors'}", "--data", "digits"],
        "other": ["transfer", "--backbone", f"timm:resnet18:{good}", "--data", "digits"],
        "no_timm": ["summary", "timm:convnext_atto"],
    }
    code = ("import sys, json\n"
            "import cnnlab.models, cnnlab.transfer_learning, cnnlab.inspect, cnnlab.training\n"
            "from cnnlab.cli.main import build_parser, main\n"
            "build_parser()\n"
            "print(json.dumps(['timm imported before asked', 'timm' in sys.modules]), flush=True)\n"
            f"cases = {cases!r}\n"
            "for key, argv in cases.items():\n"
            "    if key == 'no_timm':\n"
            "        sys.modules['timm'] = None  # as if timm were not installed\n"
            "    rc = main(argv)\n"
            "    print(json.dumps([key, rc]), flush=True)\n"
            "    print('@@', file=sys.stderr, flush=True)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    import json

    rcs = dict(json.loads(line) for line in proc.stdout.splitlines() if line.startswith("["))
    errors = dict(zip(cases, proc.stderr.split("@@\n"), strict=False))
    assert rcs.pop("timm imported before asked") is False  # timm is imported only when a timm: name is used
    assert rcs == dict.fromkeys(cases, 2), proc.stderr
    for key, text in errors.items():
        assert text.count("\n") == 1 and "Traceback" not in text, (key, text)
    assert "did you mean 'convnext_atto'" in errors["name"]
    assert "not found" in errors["missing"]
    assert "damaged" in errors["cut"]
    assert "damaged" in errors["corrupt"] or "refused to load" in errors["corrupt"]  # torch reads it as a pickle
    assert "do not match" in errors["other"]
    assert "timm is not installed" in errors["no_timm"] and "pip install" in errors["no_timm"]
