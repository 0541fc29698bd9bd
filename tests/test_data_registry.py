"""The registry, the search order, `digits`, and `cnnlab data` on the command line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli
from sklearn.datasets import load_digits

from cnnlab.data import find_dataset, list_datasets, load_dataset, locate
from cnnlab.errors import CnnlabError

FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("CNNLAB_DATA", raising=False)


def test_digits_split_and_scaling():
    ds = load_dataset("digits")
    assert (len(ds.train), len(ds.test)) == (1437, 360) and ds.input_size == (1, 8, 8)
    assert ds.source == "embedded (scikit-learn)" and ds.classes == [str(i) for i in range(10)]
    raw = load_digits()
    # stratified: each class's share of the test set matches its share of the whole within one image
    full = np.bincount(raw.target)
    test = torch.bincount(ds.test.labels, minlength=10).numpy()
    assert np.all(np.abs(test - full * 360 / 1797) <= 1)
    # pixel values: v * 255 / 16 rounded half up, and together the splits hold exactly the original images
    expected = {(int(t), tuple(int(v * 255 / 16 + 0.5) for v in img.flatten())) for img, t in zip(raw.images, raw.target, strict=True)}
    served = {(int(t), tuple(x.flatten().tolist())) for split in (ds.train, ds.test)
              for x, t in zip(split.images, split.labels, strict=True)}
    assert served == expected
    assert ds.train.images.max() == 255
    again = load_dataset("digits", seed=5, val_fraction=0.1)  # the test split never depends on seed
    assert torch.equal(again.test.images, ds.test.images)
    per_class_train = torch.bincount(ds.train.labels, minlength=10).double()
    per_class_val = torch.bincount(again.val.labels, minlength=10).double()
    assert torch.all((per_class_val - 0.1 * per_class_train).abs() <= 0.5)  # stratified, rounded per class


def test_unknown_name_and_bad_arguments():
    with pytest.raises(CnnlabError, match="did you mean 'fashion-mnist'"):
        load_dataset("fashion-mnst")
    with pytest.raises(CnnlabError, match="val_fraction"):
        load_dataset("digits", val_fraction=-0.1)
    with pytest.raises(CnnlabError, match="image_size"):
        load_dataset("digits", image_size=0)


def test_search_order(monkeypatch, tmp_path):
    monkeypatch.setenv("CNNLAB_DATA", str(tmp_path / "env"))
    roots = locate.search_roots(tmp_path / "cli")
    assert roots == [tmp_path / "cli", tmp_path / "env", tmp_path / "xdg" / "cnnlab", Path("/usr/share/datasets")]
    assert locate.download_root(None) == tmp_path / "env"
    monkeypatch.delenv("CNNLAB_DATA")
    assert locate.download_root(None) == tmp_path / "xdg" / "cnnlab"


def test_data_dir_wins_over_system_copy(tmp_path):
    import gzip
    import shutil

    if not FASHION.exists():
        pytest.skip("dataset-fashion-mnist not installed")
    mine = tmp_path / "mine" / "fashion-mnist"
    mine.mkdir(parents=True)
    for f in FASHION.glob("*.gz"):  # decompressed copies also count (torchvision keeps both)
        (mine / f.name[:-3]).write_bytes(gzip.decompress(f.read_bytes()))
    assert find_dataset("fashion-mnist", tmp_path / "mine") == str(mine)
    assert find_dataset("fashion-mnist") == str(FASHION)
    shutil.rmtree(mine)


def test_missing_dataset_says_where_and_how(tmp_path):
    with pytest.raises(CnnlabError) as e:
        load_dataset("kmnist", data_dir=tmp_path)
    msg = str(e.value)
    assert "\n" not in msg and str(tmp_path) in msg and "/usr/share/datasets" in msg and "--download" in msg


def test_list_datasets():
    infos = {i.name: i for i in list_datasets()}
    assert set(infos) == {"digits", "mnist", "fashion-mnist", "kmnist", "cifar10", "cifar100", "svhn"}
    assert infos["digits"].found and infos["digits"].location == "embedded (scikit-learn)"
    assert (infos["cifar100"].num_classes, infos["svhn"].train_count, infos["svhn"].test_count) == (100, 73257, 26032)
    for i in infos.values():
        if not i.found:
            assert "--download" in i.how_to_get and i.download_urls[0].startswith("https://")


@pytest.mark.slow
def test_cli_data_list_and_json():
    proc = run_cli("data", "list", check=True)
    assert "digits" in proc.stdout and "embedded (scikit-learn)" in proc.stdout
    if FASHION.exists():
        row = next(line for line in proc.stdout.splitlines() if line.startswith("fashion-mnist"))
        assert "60,000" in row and "10,000" in row and str(FASHION) in row
    rows = json.loads(run_cli("data", "list", "--json", check=True).stdout)
    assert {r["name"] for r in rows} >= {"digits", "fashion-mnist", "cifar10"}


@pytest.mark.slow
def test_cli_data_get_errors_are_one_line(tmp_path):
    proc = run_cli("data", "get", "svhn", "--data-dir", str(tmp_path))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "--download" in lines[0]
    proc = run_cli("data", "get", "digits")
    assert proc.returncode == 0 and "train 1,437, test 360" in proc.stdout
