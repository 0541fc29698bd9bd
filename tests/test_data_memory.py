"""In-memory splits: batch order, sharding, statistics and normalisation, against naive references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from cnnlab.data import MemorySplit, channel_stats, to_float
from cnnlab.data.dataset import in_memory_dataset, resize_uint8
from cnnlab.data.memory import stratified_holdout
from cnnlab.errors import CnnlabError

N = 103


@pytest.fixture
def split():
    # image i is filled with i % 256 in every pixel and its label is i: any mix-up shows
    ids = torch.arange(N)
    images = (ids % 256).to(torch.uint8).view(N, 1, 1, 1).expand(N, 2, 3, 3).contiguous()
    return MemorySplit(images, ids)


def _ids(batches) -> list[int]:
    out = []
    for x, y in batches:
        assert x.dtype == torch.uint8 and y.dtype == torch.int64 and x.shape[1:] == (2, 3, 3)
        assert torch.equal(x[:, 0, 0, 0].long(), y % 256)  # images travel with their labels
        out += y.tolist()
    return out


def test_every_index_once_per_epoch(split):
    for shuffle in (False, True):
        ids = _ids(split.batches(10, shuffle=shuffle, seed=0, epoch=4))
        assert sorted(ids) == list(range(N))
    assert _ids(split.batches(10)) == list(range(N))  # no shuffle: the stored order


def test_order_is_a_function_of_seed_and_epoch(split):
    a = _ids(split.batches(16, shuffle=True, seed=7, epoch=0))
    assert a == _ids(split.batches(16, shuffle=True, seed=7, epoch=0))
    assert a == _ids(split.batches(32, shuffle=True, seed=7, epoch=0))  # not tied to the batch size
    assert a != _ids(split.batches(16, shuffle=True, seed=7, epoch=1))
    assert a != _ids(split.batches(16, shuffle=True, seed=8, epoch=0))
    torch.manual_seed(123)  # the global RNG plays no part
    assert a == _ids(split.batches(16, shuffle=True, seed=7, epoch=0))


def test_batch_sizes_and_drop_last(split):
    sizes = [len(y) for _, y in split.batches(25)]
    assert sizes == [25, 25, 25, 25, 3] and split.num_batches(25) == 5
    sizes = [len(y) for _, y in split.batches(25, drop_last=True, shuffle=True)]
    assert sizes == [25] * 4 and split.num_batches(25, drop_last=True) == 4


@pytest.mark.parametrize("world", [2, 3, 4])
def test_shards_disjoint_equal_and_covering(split, world):
    shards = [_ids(split.batches(8, shuffle=True, seed=1, epoch=2, rank=r, world_size=world)) for r in range(world)]
    assert len({len(s) for s in shards}) == 1 and len(shards[0]) == N // world
    seen = [i for s in shards for i in s]
    assert len(seen) == len(set(seen)) == N - N % world
    assert split.num_batches(8, world_size=world) == -(-(N // world) // 8)


def test_bad_batching_arguments(split):
    for kwargs in ({"batch_size": 0}, {"batch_size": 4, "rank": 2, "world_size": 2}, {"batch_size": 4, "world_size": 0}):
        with pytest.raises(CnnlabError):
            next(split.batches(**kwargs))


def test_batches_are_copies(split):
    x, _ = next(split.batches(5))
    x.zero_()
    assert split.images[0, 0, 0, 0] == 0 and split.images[1, 0, 0, 0] == 1  # stored data untouched


def test_channel_stats_matches_numpy():
    x = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (50, 3, 7, 5), dtype=np.uint8))
    mean, std = channel_stats(x)
    ref = x.numpy().transpose(1, 0, 2, 3).reshape(3, -1).astype(np.float64) / 255
    assert mean == pytest.approx(ref.mean(1).tolist(), abs=1e-12)
    assert std == pytest.approx(ref.std(1).tolist(), abs=1e-12)


def test_to_float_matches_formula():
    x = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (4, 3, 5, 5), dtype=np.uint8))
    mean, std = (0.1, 0.5, 0.9), (0.2, 0.3, 0.4)
    y = to_float(x, mean, std)
    ref = (x.numpy().astype(np.float64) / 255 - np.array(mean)[:, None, None]) / np.array(std)[:, None, None]
    assert y.dtype == torch.float32 and y.shape == x.shape
    np.testing.assert_allclose(y.numpy(), ref, atol=1e-5)
    assert to_float(x, mean, std, dtype=torch.float64).dtype == torch.float64
    with pytest.raises(CnnlabError, match="need 3 values"):
        to_float(x, (0.5,), (0.5,))


def test_stratified_holdout():
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)
    keep, hold = stratified_holdout(labels, 0.1, seed=0)
    assert torch.bincount(labels[hold]).tolist() == [5, 3, 2]
    assert sorted(keep.tolist() + hold.tolist()) == list(range(100))
    assert not torch.equal(hold, stratified_holdout(labels, 0.1, seed=1)[1])


def test_resize_uint8_close_to_pillow():
    # a smooth image, so different (but correct) antialiasing filters agree to within a grey level or two
    yy, xx = np.mgrid[0:40, 0:60]
    img = (127 + 100 * np.sin(xx / 9) * np.cos(yy / 7)).astype(np.uint8)
    out = resize_uint8(torch.from_numpy(img)[None, None], 20)[0, 0].numpy().astype(int)
    ref = np.asarray(Image.fromarray(img).resize((30, 20), Image.Resampling.BILINEAR))[:, 5:25].astype(int)
    assert out.shape == (20, 20) and np.abs(out - ref).max() <= 2


def test_in_memory_dataset_val_split_and_stats():
    rng = np.random.default_rng(2)
    x = rng.integers(0, 256, (40, 1, 4, 4), dtype=np.uint8)
    y = np.repeat(np.arange(4), 10)
    ds = in_memory_dataset("toy", list("abcd"), "here", (x, y), (x[:8], y[:8]), val_fraction=0.2, seed=0)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (32, 8, 8)
    tr = ds.train.images.numpy().astype(np.float64) / 255
    assert ds.mean[0] == pytest.approx(tr.mean()) and ds.std[0] == pytest.approx(tr.std())
    with pytest.raises(CnnlabError, match="val_fraction"):
        in_memory_dataset("toy", list("abcd"), "here", (x, y), (x, y), val_fraction=1.0)
    big = in_memory_dataset("toy", list("abcd"), "here", (x, y), (x, y), image_size=8)
    assert big.input_size == (1, 8, 8) and big.test.images.shape == (40, 1, 8, 8)


def test_accelerator_path_runs_on_meta_device(split):
    # no GPU here: the "meta" device exercises the on-device branch (copy once, gather there) for shapes
    shapes = [(tuple(x.shape), x.device.type, y.device.type) for x, y in split.batches(50, shuffle=True, device="meta")]
    assert shapes == [((50, 2, 3, 3), "meta", "meta"), ((50, 2, 3, 3), "meta", "meta"), ((3, 2, 3, 3), "meta", "meta")]
    assert list(split._on_device) == ["meta"]  # the split was copied to the device once, then reused


def test_to_float_takes_unit_floats_from_augmentation():
    # an augmentation pipeline hands over floats in [0, 1]: normalise only, no second /255
    x = torch.randint(0, 256, (3, 2, 4, 4), dtype=torch.uint8)
    mean, std = (0.4, 0.6), (0.2, 0.3)
    expected = (x.double() / 255 - torch.tensor(mean).double().view(1, 2, 1, 1)) / torch.tensor(std).double().view(1, 2, 1, 1)
    y = to_float(x.float() / 255, mean, std)
    assert torch.allclose(y.double(), expected, atol=1e-5)
