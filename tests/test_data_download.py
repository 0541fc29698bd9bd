"""Downloads against a real HTTP server on 127.0.0.1 (http.server in a thread, port 0, Range support) that
serves a good file, a corrupted one, one cut off mid-transfer, one served short, ones longer than promised
and one that stalls until the test lets it go; plus the URL policy."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import os
import struct
import threading
import time
import urllib.request

import numpy as np
import pytest

from cnnlab.data import download as dl
from cnnlab.data import registry, sources
from cnnlab.errors import CnnlabError

PAYLOAD = bytes(np.random.default_rng(0).integers(0, 256, 300_000, dtype=np.uint8))
SHA = hashlib.sha256(PAYLOAD).hexdigest()
MD5 = hashlib.md5(PAYLOAD).hexdigest()


EXTRA = 8 << 20  # what the oversized answers add to the file: far more than PAYLOAD


class _Handler(http.server.BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}
    log: list[tuple[str, str | None]] = []
    release = threading.Event()  # /stall.bin sends its body once this is set
    sent: dict[str, int] = {}  # bytes of body written per path (until the client hangs up)

    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):
        self.log.append((self.path, self.headers.get("Range")))
        if self.path == "/redirect-to-http":
            self.send_response(302)
            self.send_header("Location", "http://example.com/file.bin")
            self.end_headers()
            return
        if self.path == "/corrupt.bin":
            body = bytearray(PAYLOAD)
            body[1000] ^= 0x01
            return self._send(bytes(body))
        if self.path == "/short.bin":  # an honest, but incomplete file
            return self._send(PAYLOAD[:1000])
        if self.path == "/cut.bin":  # promises everything, delivers half, hangs up
            start = self._range_start()
            self.send_response(206 if start else 200)
            self.send_header("Content-Length", str(len(PAYLOAD) - start))
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
            self.end_headers()
            self.wfile.write(PAYLOAD[start: start + 100_000])
            self.wfile.flush()
            self.close_connection = True
            return
        if self.path in ("/longer.bin", "/longer-announced.bin"):  # the file, then 8 MiB more of zeros
            self.send_response(200)
            if self.path == "/longer-announced.bin":
                self.send_header("Content-Length", str(len(PAYLOAD) + EXTRA))
            self.end_headers()
            self.close_connection = True
            self.sent[self.path] = 0
            for block in (PAYLOAD, *[bytes(1 << 16)] * (EXTRA >> 16)):
                try:
                    self.wfile.write(block)
                except OSError:  # the client stopped reading
                    return
                self.sent[self.path] += len(block)
            return
        if self.path == "/stall.bin":
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD)))
            self.end_headers()
            self.release.wait(60)
            self.wfile.write(PAYLOAD)
            return
        if self.path == "/norange.bin":
            return self._send(PAYLOAD, ranges=False)
        if self.path == "/good.bin":
            return self._send(PAYLOAD)
        if self.path.lstrip("/") in self.files:
            return self._send(self.files[self.path.lstrip("/")])
        self.send_error(404)

    def _range_start(self) -> int:
        r = self.headers.get("Range")
        return int(r.split("=")[1].split("-")[0]) if r else 0

    def _send(self, body: bytes, ranges: bool = True):
        start = self._range_start() if ranges else 0
        if start >= len(body) and start:
            self.send_response(416)
            self.end_headers()
            return
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(body) - start))
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.end_headers()
        self.wfile.write(body[start:])


@pytest.fixture(scope="module")
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(autouse=True)
def _clear_log():
    _Handler.log.clear()
    _Handler.release.clear()
    yield
    _Handler.release.set()  # never leave a server thread waiting


def test_good_download_verified_and_renamed(server, tmp_path):
    dest = tmp_path / "sub" / "file.bin"
    out = dl.download(f"{server}/good.bin", dest, sha256=SHA, size=len(PAYLOAD))
    assert out == dest and dest.read_bytes() == PAYLOAD
    assert sorted(p.name for p in dest.parent.iterdir()) == ["file.bin"]  # no .part left
    # present and verified: no second request
    dl.download(f"{server}/good.bin", dest, sha256=SHA)
    assert len(_Handler.log) == 1


def test_md5_is_used_when_no_sha256(server, tmp_path):
    dl.download(f"{server}/good.bin", tmp_path / "f", md5=MD5)
    assert (tmp_path / "f").read_bytes() == PAYLOAD


def test_corrupt_download_refused_and_deleted(server, tmp_path):
    dest = tmp_path / "file.bin"
    with pytest.raises(CnnlabError, match="checksum mismatch"):
        dl.download(f"{server}/corrupt.bin", dest, sha256=SHA)
    assert list(tmp_path.iterdir()) == []  # nothing a later run could mistake for data


def test_short_file_refused(server, tmp_path):
    with pytest.raises(CnnlabError, match="checksum mismatch"):
        dl.download(f"{server}/short.bin", tmp_path / "f", sha256=SHA)
    assert list(tmp_path.iterdir()) == []


def test_cut_transfer_refused_then_resumed_with_range(server, tmp_path):
    dest = tmp_path / "file.bin"
    with pytest.raises(CnnlabError, match="closed after 100000 of 300000 bytes"):
        dl.download(f"{server}/cut.bin", dest, sha256=SHA)
    assert not dest.exists()
    part = tmp_path / "file.bin.part"
    assert part.read_bytes() == PAYLOAD[:100_000]
    dl.download(f"{server}/good.bin", dest, sha256=SHA)
    assert dest.read_bytes() == PAYLOAD and not part.exists()
    assert _Handler.log[-1] == ("/good.bin", "bytes=100000-")  # only the rest was fetched


def test_resume_from_existing_part(server, tmp_path):
    dest = tmp_path / "file.bin"
    (tmp_path / "file.bin.part").write_bytes(PAYLOAD[:123_456])
    dl.download(f"{server}/good.bin", dest, sha256=SHA)
    assert dest.read_bytes() == PAYLOAD
    assert _Handler.log == [("/good.bin", "bytes=123456-")]


def test_server_ignoring_range_restarts_cleanly(server, tmp_path):
    dest = tmp_path / "file.bin"
    (tmp_path / "file.bin.part").write_bytes(b"garbage" * 10)
    dl.download(f"{server}/norange.bin", dest, sha256=SHA)
    assert dest.read_bytes() == PAYLOAD


def test_bad_partial_is_deleted_after_failed_check(server, tmp_path):
    dest = tmp_path / "file.bin"
    (tmp_path / "file.bin.part").write_bytes(b"X" * 1000)  # wrong bytes: the resumed file cannot verify
    with pytest.raises(CnnlabError, match="checksum mismatch"):
        dl.download(f"{server}/good.bin", dest, sha256=SHA)
    assert list(tmp_path.iterdir()) == []
    dl.download(f"{server}/good.bin", dest, sha256=SHA)  # and the next run starts afresh
    assert dest.read_bytes() == PAYLOAD


def test_falls_back_to_next_https_mirror_only_after_failure(server, tmp_path):
    dest = tmp_path / "file.bin"
    dl.download([f"{server}/corrupt.bin", f"{server}/good.bin"], dest, sha256=SHA)
    assert dest.read_bytes() == PAYLOAD


@pytest.mark.parametrize("path", ["/longer.bin", "/longer-announced.bin"])
def test_more_than_the_known_size_is_never_written(server, tmp_path, path):
    """A server that sends (or announces) more than the expected size cannot fill the disk: the transfer
    stops at size + 1 bytes, before any checksum, and what was written is deleted."""
    dest = tmp_path / "file.bin"
    seen = []
    with pytest.raises(CnnlabError, match=f"more than the expected {len(PAYLOAD)}"):
        dl.download(f"{server}{path}", dest, sha256=SHA, size=len(PAYLOAD), progress=lambda n, t: seen.append(n))
    assert max(seen, default=0) <= len(PAYLOAD)  # bytes written to the .part file, at most the known size
    assert list(tmp_path.iterdir()) == []
    # the next mirror is tried as after a checksum mismatch
    dl.download([f"{server}{path}", f"{server}/good.bin"], dest, sha256=SHA, size=len(PAYLOAD))
    assert dest.read_bytes() == PAYLOAD


def _stalled_download(server, dest, results) -> threading.Thread:
    """Start a download of /stall.bin into `dest` in a thread; return once the server has the request
    (the downloader then holds its lock and waits for the body)."""
    def run():
        try:
            results["first"] = dl.download(f"{server}/stall.bin", dest, sha256=SHA, size=len(PAYLOAD))
        except Exception as e:  # noqa: BLE001 - the test asserts what came back
            results["first"] = e
    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 60
    while ("/stall.bin", None) not in _Handler.log and time.monotonic() < deadline:
        time.sleep(0.01)
    return thread


def test_second_download_of_one_file_waits_for_the_first(server, tmp_path):
    dest, results = tmp_path / "file.bin", {}
    first = _stalled_download(server, dest, results)

    def second():
        try:
            results["second"] = dl.download(f"{server}/good.bin", dest, sha256=SHA, size=len(PAYLOAD))
        except Exception as e:  # noqa: BLE001
            results["second"] = e
    other = threading.Thread(target=second)
    other.start()
    other.join(timeout=3)  # without a lock the second would write the shared .part and finish by now
    _Handler.release.set()
    first.join(60)
    other.join(60)
    assert results == {"first": dest, "second": dest}
    assert dest.read_bytes() == PAYLOAD
    assert [p for p, _ in _Handler.log] == ["/stall.bin"]  # the second found the verified file: no request
    assert sorted(os.listdir(tmp_path)) == ["file.bin"]  # no .part, no lock file left


def test_second_download_gives_up_after_lock_timeout(server, tmp_path):
    dest, results = tmp_path / "file.bin", {}
    first = _stalled_download(server, dest, results)
    with pytest.raises(CnnlabError, match=r"another download of file\.bin is in progress .*file\.bin\.lock"):
        dl.download(f"{server}/good.bin", dest, sha256=SHA, lock_timeout=0.2)
    assert [p for p, _ in _Handler.log] == ["/stall.bin"]
    _Handler.release.set()
    first.join(60)
    assert results["first"] == dest and dest.read_bytes() == PAYLOAD
    assert sorted(os.listdir(tmp_path)) == ["file.bin"]


def test_planted_links_beside_dest_are_not_followed(server, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "file.bin.part").symlink_to(victim)
    dl.download(f"{server}/good.bin", tmp_path / "d" / "file.bin", sha256=SHA)
    assert (tmp_path / "d" / "file.bin").read_bytes() == PAYLOAD and victim.read_bytes() == b"precious"
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "file.bin.lock").symlink_to(victim)
    with pytest.raises(CnnlabError, match=r"cannot create the download lock .*file\.bin\.lock"):
        dl.download(f"{server}/good.bin", tmp_path / "e" / "file.bin", sha256=SHA)
    assert victim.read_bytes() == b"precious" and _Handler.log == [("/good.bin", None)]


def test_existing_wrong_file_is_not_overwritten(server, tmp_path):
    dest = tmp_path / "file.bin"
    dest.write_bytes(b"user data")
    with pytest.raises(CnnlabError, match="exists but is not the expected file"):
        dl.download(f"{server}/good.bin", dest, sha256=SHA)
    assert dest.read_bytes() == b"user data"


@pytest.mark.parametrize("url", ["http://example.com/x.gz", "ftp://127.0.0.1/x", "file:///etc/passwd",
                                 "http://10.0.0.1/x", "https:///nohost"])
def test_url_policy_refuses(url, tmp_path):
    with pytest.raises(CnnlabError, match="only https"):
        dl.download(url, tmp_path / "x", sha256=SHA)
    assert list(tmp_path.iterdir()) == []


def test_url_policy_allows_https_and_loopback_http():
    for url in ("https://www.cs.toronto.edu/~kriz/x", "http://127.0.0.1:8000/x", "http://[::1]/x",
                "http://localhost/x"):
        dl.check_url(url)


def test_redirect_to_plain_http_refused(server, tmp_path):
    with pytest.raises(CnnlabError, match="only https"):
        dl.download(f"{server}/redirect-to-http", tmp_path / "x", sha256=SHA)
    assert list(tmp_path.iterdir()) == []


def test_https_to_http_redirect_is_a_downgrade_even_to_loopback():
    handler = dl._NoDowngradeRedirect()
    req = urllib.request.Request("https://example.com/file")
    with pytest.raises(CnnlabError, match="downgrade"):
        handler.redirect_request(req, None, 302, "Found", {}, "http://127.0.0.1/file")


def test_checksum_required(tmp_path):
    with pytest.raises(CnnlabError, match="without a checksum"):
        dl.download("https://example.com/x", tmp_path / "x")


def test_every_registered_url_is_https():
    for name, files in sources.FILES.items():
        for f in files:
            assert f.urls, name
            for url in f.urls:
                assert url.startswith("https://") and url.endswith("/" + f.filename), url
            assert len(f.md5) == 32 and (f.sha256 is None or len(f.sha256) == 64)


# ------------------------------------------------------- end to end: load_dataset(download=True)
def _idx(arr: np.ndarray) -> bytes:
    return bytes([0, 0, 8, arr.ndim]) + b"".join(struct.pack(">I", d) for d in arr.shape) + arr.tobytes()


def test_load_dataset_downloads_mnist_from_mirror(server, tmp_path, monkeypatch):
    rng = np.random.default_rng(3)
    arrays = {
        "train-images-idx3-ubyte.gz": rng.integers(0, 256, (20, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte.gz": (np.arange(20) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (10, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte.gz": (np.arange(10) % 10).astype(np.uint8),
    }
    blobs = {name: gzip.compress(_idx(a)) for name, a in arrays.items()}
    _Handler.files.update({f"mnist/{n}": b for n, b in blobs.items()})
    files = tuple(sources.RemoteFile(n, (f"{server}/mnist/{n}",), len(b), hashlib.sha256(b).hexdigest(), "0" * 32)
                  for n, b in blobs.items())
    monkeypatch.setitem(sources.FILES, "mnist", files)
    monkeypatch.setitem(registry._INFO, "mnist", registry._with(registry._INFO["mnist"], train_count=20, test_count=10))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("CNNLAB_DATA", raising=False)

    with pytest.raises(CnnlabError, match="not found.*--download"):
        registry.load_dataset("mnist")
    ds = registry.load_dataset("mnist", download=True)
    folder = tmp_path / "cache" / "cnnlab" / "mnist"
    assert ds.source == str(folder)
    assert sorted(p.name for p in folder.iterdir()) == sorted(blobs)
    np.testing.assert_array_equal(ds.train.images[:, 0].numpy(), arrays["train-images-idx3-ubyte.gz"])
    assert ds.test.labels.tolist() == list(range(10))
    _Handler.log.clear()
    registry.load_dataset("mnist", download=True)  # found now: nothing fetched again
    assert _Handler.log == []


def test_fetch_cifar_downloads_and_extracts(server, tmp_path, monkeypatch):
    from test_data_formats import make_cifar_tar

    archive = tmp_path / "src.tar.gz"
    make_cifar_tar(archive, "cifar10")
    blob = archive.read_bytes()
    _Handler.files["cifar/cifar-10-python.tar.gz"] = blob
    monkeypatch.setitem(sources.FILES, "cifar10", (sources.RemoteFile(
        "cifar-10-python.tar.gz", (f"{server}/cifar/cifar-10-python.tar.gz",), len(blob),
        hashlib.sha256(blob).hexdigest(), "0" * 32),))
    folder = registry.fetch_dataset("cifar10", tmp_path / "data")
    assert (folder / "cifar-10-batches-py" / "data_batch_5").is_file()
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # temporary folder removed
    assert registry.find_dataset("cifar10", tmp_path / "data") == str(folder / "cifar-10-batches-py")
