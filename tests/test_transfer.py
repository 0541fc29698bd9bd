"""Transfer learning: freezing, backbones (torchvision files, hub download, unsafe pickles), cut points,
input adaptation, the feature cache. Truth comes from torchvision's own forward, manual computations and
before/after copies, never from the code under test."""

from __future__ import annotations

import functools
import hashlib
import http.server
import os
import threading

import pytest
import torch
import torch.nn.functional as F
from conftest import run_cli
from torch import nn

from cnnlab.data.dataset import in_memory_dataset
from cnnlab.errors import CnnlabError
from cnnlab.models import create_model
from cnnlab.transfer_learning import freeze, is_frozen, unfreeze
from cnnlab.transfer_learning.adapt import InputAdapter
from cnnlab.transfer_learning.backbone import Truncated, check_layer, load_backbone, weights_digest
from cnnlab.transfer_learning.features import cached_features
from cnnlab.transfer_learning.finetune import Classifier, fit


def _state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


# ---- freezing ---------------------------------------------------------------------------------------
@pytest.mark.slow
def test_frozen_body_unchanged_after_training_head_in_train_mode():
    body = Truncated(create_model("resnet20", num_classes=10), "pre_logits")  # CIFAR ResNet: 19 BN layers
    adapter = InputAdapter((3, 16, 16), (3, 16, 16), (0.5,) * 3, (0.25,) * 3)
    model = Classifier(adapter, body, nn.Linear(64, 4))
    before, head_before = _state(model.body), _state(model.head)
    freeze(model.body)
    assert is_frozen(model.body) and not is_frozen(model)
    images = torch.randint(0, 256, (32, 3, 16, 16), dtype=torch.uint8)
    labels = torch.arange(32) % 4
    model.train()  # the trap: train() would normally put BN back into batch-statistics mode
    data = in_memory_dataset("random", list("abcd"), "test", (images, labels), (images, labels))
    fit(model, data, [{"params": list(model.head.parameters()), "lr": 1e-2}], steps=5, batch_size=16, evaluate=False)
    after = _state(model.body)
    assert before.keys() == after.keys() and any("running_mean" in k for k in after)
    for k in before:  # weights AND running statistics AND num_batches_tracked, bit for bit
        assert torch.equal(before[k], after[k]), k
    assert all(p.grad is None for p in model.body.parameters())
    assert any(not torch.equal(head_before[k], v) for k, v in _state(model.head).items())  # the head did learn

    # Control: the same training unfrozen does move the statistics (so the check above can fail).
    unfreeze(model.body)
    model.train()
    fit(model, data, [{"params": list(model.parameters()), "lr": 1e-2}], steps=2, batch_size=16, evaluate=False)
    assert not torch.equal(before["model.bn1.running_mean"], _state(model.body)["model.bn1.running_mean"])


def test_freeze_survives_deepcopy_and_is_idempotent():
    import copy

    m = freeze(freeze(nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))))
    c = copy.deepcopy(m).train()
    stats = c[1].running_mean.clone()
    c(torch.randn(4, 1, 5, 5))
    assert torch.equal(stats, c[1].running_mean) and is_frozen(c)
    assert len(m[1]._forward_pre_hooks) == 1


# ---- backbones --------------------------------------------------------------------------------------
def _tv_resnet18():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(1)
    tv = torchvision.models.resnet18(weights=None).eval()
    with torch.no_grad():  # non-trivial BN statistics, so a key mix-up would show in the outputs
        for m in tv.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return tv


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_torchvision_state_dict_loads_through_backbone(tmp_path, suffix):
    tv = _tv_resnet18()
    path = tmp_path / f"r18{suffix}"
    if suffix == ".pth":
        torch.save(tv.state_dict(), path)
    else:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in tv.state_dict().items()}, str(path))
    bb = load_backbone(f"resnet18:{path}")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(bb.model(x), tv(x), atol=1e-5)
    assert bb.mean == (0.485, 0.456, 0.406) and bb.source.startswith("file")


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def http_dir(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.slow
def test_imagenet_weights_through_torch_hub_from_local_server(tmp_path, http_dir, monkeypatch):
    served, base = http_dir
    tv = _tv_resnet18()
    raw = tmp_path / "raw.pth"
    torch.save(tv.state_dict(), raw)
    digest = hashlib.sha256(raw.read_bytes()).hexdigest()
    # torch.hub's check_hash reads the hex prefix after the last '-' of the file name, as in
    # torchvision's resnet18-f37072fd.pth
    good = served / f"resnet18-{digest[:8]}.pth"
    good.write_bytes(raw.read_bytes())
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setenv("CNNLAB_IMAGENET_URL", f"{base}/{good.name}")
    bb = load_backbone("resnet18:imagenet")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(bb.model(x), tv(x), atol=1e-5)
    assert (tmp_path / "torch_home" / "hub" / "checkpoints" / good.name).is_file()

    # A file whose content does not match the hash in its name is refused and not kept.
    bad = served / "resnet18-00000000.pth"
    bad.write_bytes(raw.read_bytes())
    monkeypatch.setenv("CNNLAB_IMAGENET_URL", f"{base}/{bad.name}")
    with pytest.raises(CnnlabError, match="failed verification"):
        load_backbone("resnet18:imagenet")
    assert not (tmp_path / "torch_home" / "hub" / "checkpoints" / bad.name).exists()


@pytest.mark.slow
def test_googlenet_imagenet_weights_get_torchvisions_input_transform(tmp_path, http_dir, monkeypatch):
    """torchvision builds GoogLeNet with transform_input=True when it loads its ImageNet weights (they
    were ported from a model trained on [-1, 1] inputs); the backbone must give the same outputs."""
    import torchvision

    served, base = http_dir
    torch.manual_seed(0)
    tv = torchvision.models.googlenet(weights=None, aux_logits=True, transform_input=True, init_weights=True)
    for m in tv.modules():  # batch statistics as running statistics: activations of a realistic size
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # a cumulative average: after one batch, that batch's statistics
    with torch.no_grad():
        tv.train()(torch.randn(8, 3, 96, 96))
    tv.eval()
    raw = tmp_path / "raw.pth"
    torch.save(tv.state_dict(), raw)
    digest = hashlib.sha256(raw.read_bytes()).hexdigest()
    (served / f"googlenet-{digest[:8]}.pth").write_bytes(raw.read_bytes())
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setenv("CNNLAB_IMAGENET_URL", f"{base}/googlenet-{digest[:8]}.pth")
    bb = load_backbone("googlenet:imagenet")
    x = torch.randn(2, 3, 96, 96)
    from cnnlab.models import create_model

    plain = create_model("googlenet").eval()  # the same weights without the input transform
    plain.load_state_dict({k: v for k, v in tv.state_dict().items() if not k.startswith(("aux1.", "aux2."))})
    with torch.no_grad():
        assert torch.allclose(bb.model(x), tv(x), atol=1e-4)
        assert not torch.allclose(plain(x), tv(x), atol=1e-2)  # so the check above can fail


class _Payload:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"conv1.weight": _Payload(str(marker))}, path)
    with pytest.raises(CnnlabError, match="refused"):
        load_backbone(f"resnet18:{path}")
    assert not marker.exists()


def test_unknown_layer_did_you_mean_lists_cut_points():
    model = create_model("resnet18")
    with pytest.raises(CnnlabError) as e:
        check_layer(model, "layer5")
    msg = str(e.value)
    assert "did you mean 'layer4'" in msg or "did you mean 'layer1'" in msg
    for cut in ("layer1", "layer4", "features", "pre_logits"):
        assert cut in msg
    assert check_layer(model, "layer3.1.conv2") == "layer3.1.conv2"  # any module name is a cut


def test_cli_bad_layer_one_line_exit_2():
    proc = run_cli("transfer", "--backbone", "simple_cnn", "--data", "digits", "--layer", "pre_logit")
    assert proc.returncode == 2
    assert "did you mean 'pre_logits'" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_vgg16_cut_points_are_the_exact_ones():
    model = create_model("vgg16").eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        conv = model.features(x)  # the last max-pool's output
        fc6 = torch.relu(F.linear(conv.flatten(1), model.classifier[0].weight, model.classifier[0].bias))
        assert Truncated(model, "features")(x).shape == (1, 7 * 7 * 512) == (1, 25_088)
        assert torch.allclose(Truncated(model, "features")(x), conv.flatten(1))
        assert torch.allclose(Truncated(model, "fc6")(x), fc6, atol=1e-5)
        assert Truncated(model, "fc6")(x).shape == (1, 4096)


# ---- input adaptation ---------------------------------------------------------------------------------
def test_grayscale_into_rgb_backbone_is_adapted_and_reported():
    gray = torch.randint(0, 256, (3, 1, 8, 8), dtype=torch.uint8)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    a = InputAdapter((1, 8, 8), (3, 32, 32), mean, std)
    y = a(gray)
    assert y.shape == (3, 3, 32, 32)
    up = F.interpolate(gray.float() / 255, size=(32, 32), mode="bilinear", antialias=True, align_corners=False)
    for c in range(3):  # each RGB channel is the same gray image, normalised with that channel's stats
        assert torch.allclose(y[:, c:c + 1], (up - mean[c]) / std[c], atol=1e-5)
    text = a.describe()
    assert "grayscale repeated to 3 channels" in text and "8x8 -> 32x32" in text


def test_transfer_gray_data_into_rgb_backbone_end_to_end(tmp_path):
    from cnnlab.data.dataset import in_memory_dataset
    from cnnlab.transfer_learning import transfer

    g = torch.Generator().manual_seed(0)
    labels = torch.arange(40) % 2
    images = (torch.rand(40, 1, 12, 12, generator=g) * 60).to(torch.uint8)
    images[labels == 1, :, 3:9, 3:9] += 150  # class 1 has a bright square: easy for any features
    ds = in_memory_dataset("toy", ["dark", "square"], "test", (images[:24], labels[:24]), (images[24:], labels[24:]))
    r = transfer("resnet20", ds, strategy="features", baselines=False, verbose=False,  # an RGB 3x32x32 backbone
                 cache_dir=tmp_path, out=tmp_path / "out")
    assert "grayscale repeated to 3 channels" in r.adaptation and "12x12 -> 32x32" in r.adaptation
    assert r.rows[0]["test_accuracy"] >= 0.75  # 16 test images, a trivially separable task
    assert (tmp_path / "out" / "results.json").is_file()


# ---- feature cache ------------------------------------------------------------------------------------
def test_feature_cache_hit_and_invalidation(tmp_path):
    model = create_model("simple_cnn").eval()
    images = torch.randint(0, 256, (20, 1, 28, 28), dtype=torch.uint8)
    labels = torch.arange(20) % 10
    adapter = InputAdapter((1, 28, 28), (1, 28, 28), (0.3,), (0.3,))

    def get(m=model, layer="pre_logits", imgs=images, ad=adapter):
        body = Truncated(m, layer)
        return cached_features(body, ad, imgs, labels, weights_id=weights_digest(m), layer=layer,
                               cache_dir=tmp_path, precision="fp32")

    first, second = get(), get()
    assert not first.cached and second.cached and torch.equal(first.x, second.x)
    with torch.no_grad():  # the independent truth: a plain forward pass of the model's own handles
        direct = model.forward_head(model.forward_features((images.float() / 255 - 0.3) / 0.3), pre_logits=True)
    assert torch.allclose(second.x, direct, atol=1e-5)

    changed = create_model("simple_cnn").eval()
    changed.load_state_dict(model.state_dict())
    with torch.no_grad():
        changed.get_classifier().bias.add_(1e-3)  # even a weight the cut never reads changes the key
        changed.features[0].weight.add_(1e-3)
    other_images = images.clone()
    other_images[0, 0, 0, 0] ^= 1
    misses = {
        "weights": get(m=changed),
        "layer": get(layer="features.0"),
        "data": get(imgs=other_images),
        "preprocessing": get(ad=InputAdapter((1, 28, 28), (1, 28, 28), (0.31,), (0.3,))),
    }
    for what, f in misses.items():
        assert not f.cached, what
    assert len(list(tmp_path.glob("*.safetensors"))) == 5
    assert not torch.equal(misses["weights"].x, first.x)


def test_span_projection_gives_sklearns_full_solution():
    from sklearn.linear_model import LogisticRegression

    from cnnlab.transfer_learning.heads import fit_head

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(30, 200, generator=g), torch.arange(30) % 3
    x[y == 1, :5] += 1.0
    x_test = torch.randn(50, 200, generator=g)
    head = fit_head("logreg", x, y, c_grid=(0.1,))  # single C: no CV, fitted on the projected features
    assert head.basis is not None and head.basis.shape[1] <= 30
    mean, std = x.mean(0), x.std(0, unbiased=False)
    full = LogisticRegression(C=0.1, max_iter=2000, tol=1e-8).fit(((x - mean) / std).numpy(), y.numpy())
    z_test = ((x_test - mean) / std).numpy()
    ours = head.model.predict_proba(head._std(x_test).numpy())
    assert abs(ours - full.predict_proba(z_test)).max() < 2e-3


def test_cross_validation_prepares_each_fold_with_its_own_training_part():
    """Reference: scikit-learn's GridSearchCV over a StandardScaler + LogisticRegression pipeline, which
    fits the scaler inside each fold. A deliberate outlier in one row would leak into every fold's
    statistics if they were computed once on the whole training set."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from cnnlab.transfer_learning.heads import C_GRID, cv_scores, fit_head

    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(90, 12, generator=g, dtype=torch.float64).float(), torch.arange(90) % 3
    x[y == 2, :3] += 0.8
    x[0] *= 25.0  # the outlier
    ref = GridSearchCV(make_pipeline(StandardScaler(), LogisticRegression(max_iter=200, tol=1e-3)),
                       {"logisticregression__C": list(C_GRID)},
                       cv=StratifiedKFold(3, shuffle=True, random_state=0)).fit(x.double().numpy(), y.numpy())
    ours = cv_scores("logreg", x, y, C_GRID, folds=3, seed=0)
    assert ours == pytest.approx(list(ref.cv_results_["mean_test_score"]), abs=1 / 90 + 1e-9)  # one image at most
    head = fit_head("logreg", x, y, seed=0)
    assert head.info["C"] == ref.best_params_["logisticregression__C"] and head.info["folds"] == 3


@pytest.mark.parametrize("name", ["vgg_like", "resnet18"])
def test_stage_param_groups_cover_every_parameter_once(name):
    from cnnlab.transfer_learning.finetune import stage_param_groups

    model = create_model(name)
    head = nn.Linear(3, 2)
    groups = stage_param_groups(Truncated(model), head, lr=1.0, body_factor=0.1, stage_decay=0.5)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids))
    assert sum(p.numel() for g in groups for p in g["params"]) == sum(p.numel() for p in model.parameters()) + 8
    rates = [g["lr"] for g in groups[1:]]  # body stages, first to last
    assert groups[0]["lr"] == 1.0 and rates == sorted(rates) and rates[-1] == pytest.approx(0.1)
    assert len(rates) == len(model.feature_info)
