"""Where each dataset comes from: official URLs, byte sizes and checksums of the files as published.

Provenance of the numbers (checked, not guessed):
- MD5: the publishers' own tables where they exist (Fashion-MNIST README, the CIFAR page), otherwise
  torchvision's `torchvision/datasets/{mnist,cifar,svhn}.py` (MNIST, KMNIST, SVHN).
- SHA-256 and sizes: TensorFlow Datasets' recorded checksums (`tensorflow_datasets/url_checksums/*`),
  which describe the same files (same names, same byte sizes).
- Fashion-MNIST cross-check: the Debian package `dataset-fashion-mnist` re-gzips the files without the
  original file name in the gzip header, so its .gz bytes differ (each is exactly len(name)+1 bytes
  shorter than the official size), but the decompressed payloads have the MD5s that torchvision lists for
  the raw files (`PAYLOAD_MD5` below; tested in tests/test_data_formats.py). That is why files *found* on
  disk are checked by their content (gzip CRC, IDX structure, expected counts) rather than by the .gz hash,
  while *downloads* are checked by the official hash of the bytes received.

All URLs are https: the Fashion-MNIST S3 website endpoint is http-only, so we use the same bucket's TLS
REST endpoint, with the authors' GitHub repository as a second mirror.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RemoteFile:
    """One file as published: its name, where to fetch it (mirrors, tried in order) and how to check it."""

    filename: str
    urls: tuple[str, ...]
    size: int  # bytes
    sha256: str | None  # of the downloaded bytes; checked when known
    md5: str  # the publisher's checksum; checked when no SHA-256 is known


def _mirrored(bases: tuple[str, ...], table: list[tuple[str, int, str | None, str]]) -> tuple[RemoteFile, ...]:
    return tuple(RemoteFile(name, tuple(b + name for b in bases), size, sha, md5) for name, size, sha, md5 in table)


_FASHION = (
    "https://fashion-mnist.s3.eu-central-1.amazonaws.com/",
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
)
_MNIST = ("https://ossci-datasets.s3.amazonaws.com/mnist/", "https://storage.googleapis.com/cvdf-datasets/mnist/")
_KMNIST = ("https://codh.rois.ac.jp/kmnist/dataset/kmnist/",)
_CIFAR = ("https://www.cs.toronto.edu/~kriz/",)
_SVHN = ("https://ufldl.stanford.edu/housenumbers/",)

# name -> files; the IDX sets are always (train images, train labels, test images, test labels).
FILES: dict[str, tuple[RemoteFile, ...]] = {
    "fashion-mnist": _mirrored(_FASHION, [
        ("train-images-idx3-ubyte.gz", 26421880, "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
        ("train-labels-idx1-ubyte.gz", 29515, "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845", "25c81989df183df01b3e8a0aad5dffbe"),
        ("t10k-images-idx3-ubyte.gz", 4422102, "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073", "bef4ecab320f06d8554ea6380940ec79"),
        ("t10k-labels-idx1-ubyte.gz", 5148, "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5", "bb300cfdad3c16e7a12a480ee83cd310"),
    ]),
    "mnist": _mirrored(_MNIST, [
        ("train-images-idx3-ubyte.gz", 9912422, "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
        ("train-labels-idx1-ubyte.gz", 28881, "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c", "d53e105ee54ea40749a09fcbcd1e9432"),
        ("t10k-images-idx3-ubyte.gz", 1648877, "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6", "9fb629c4189551a2d022fa330f9573f3"),
        ("t10k-labels-idx1-ubyte.gz", 4542, "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6", "ec29112dd5afa0611ce80d1b7f02629c"),
    ]),
    "kmnist": _mirrored(_KMNIST, [
        ("train-images-idx3-ubyte.gz", 18165135, "51467d22d8cc72929e2a028a0428f2086b092bb31cfb79c69cc0a90ce135fde4", "bdb82020997e1d708af4cf47b453dcf7"),
        ("train-labels-idx1-ubyte.gz", 29497, "e38f9ebcd0f3ebcdec7fc8eabdcdaef93bb0df8ea12bee65224341c8183d8e17", "e144d726b3acfaa3e44228e80efcd344"),
        ("t10k-images-idx3-ubyte.gz", 3041136, "edd7a857845ad6bb1d0ba43fe7e794d164fe2dce499a1694695a792adfac43c5", "5c965bf0a639b31b8f53240b1b52f4d7"),
        ("t10k-labels-idx1-ubyte.gz", 5120, "20bb9a0ef54c7db3efc55a92eef5582c109615df22683c380526788f98e42a1c", "7320c461ea6c1c855c0b718fb2a4b134"),
    ]),
    "cifar10": _mirrored(_CIFAR, [
        ("cifar-10-python.tar.gz", 170498071, "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce", "c58f30108f718f92721af3b95e74349a"),
    ]),
    "cifar100": _mirrored(_CIFAR, [
        ("cifar-100-python.tar.gz", 169001437, "85cd44d02ba6437773c5bbd22e183051d648de2e7d6b014e1ef29b855ba677a7", "eb9058c3a382ffc7106e4002c42a8d85"),
    ]),
    "svhn": _mirrored(_SVHN, [
        ("train_32x32.mat", 182040794, "435e94d69a87fde4fd4d7f3dd208dfc32cb6ae8af2240d066de1df7508d083b8", "e26dedcc434d2e4c54c9b2d4a06d8373"),
        ("test_32x32.mat", 64275384, "cdce80dfb2a2c4c6160906d0bd7c68ec5a99d7ca4831afa54f09182025b6a75b", "eb5a983be6a315427106f1b164d9cef3"),
    ]),
}

# MD5 of the decompressed Fashion-MNIST IDX files (torchvision's historical `raw_data` table); the content
# check that ties the Debian package's re-gzipped files to the official release.
PAYLOAD_MD5 = {
    "fashion-mnist": {
        "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
        "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
        "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
        "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
    },
}


def download_size(name: str) -> int:
    """Total bytes to download for dataset `name`."""
    return sum(f.size for f in FILES[name])
