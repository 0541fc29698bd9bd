"""Downloads that cannot leave bad data behind.

The bytes go to `<dest>.part` in the destination folder, are checked by SHA-256 (or the publisher's MD5
when no SHA-256 is known), and only then renamed onto `<dest>`; a `<dest>` therefore always holds verified
bytes. An interrupted transfer keeps its `.part` and the next call resumes it with an HTTP Range request;
a file whose checksum is wrong is deleted. Only https is accepted (plain http only for loopback hosts, so
tests can serve files from 127.0.0.1), and a redirect from https to http is refused: no silent downgrade.

When the size is known, no more than that many bytes are ever written: a server that announces or sends
more is cut off at once and its bytes deleted (a wrong or hostile mirror cannot fill the disk before the
checksum would have caught it). Two downloads of one `dest` (two processes, or two threads) take turns:
an exclusive `fcntl.flock` on `<dest>.lock` is held from the first look at `dest` to the rename, so the
second finds the verified file instead of writing into the same `.part`; it waits for the first, or with
`lock_timeout` gives up with one line. The lock file is removed while still held (a waiter that then gets
the lock on the removed file sees that and locks the new one), and the kernel drops the lock if the
process dies, so nothing stale stays behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from urllib.parse import urlsplit

from cnnlab.errors import CnnlabError

try:
    import fcntl
except ImportError:  # Windows has no flock: downloads there do not take turns
    fcntl = None

CHUNK = 1 << 20  # bytes per read
Progress = Callable[[int, int | None], None]  # (bytes so far, total bytes or None)


def _is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_url(url: str) -> None:
    """Raise CnnlabError unless `url` is https, or http to a loopback host (127.0.0.0/8, ::1, localhost)."""
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return
    if parts.scheme == "http" and _is_loopback(parts.hostname):
        return
    raise CnnlabError(
        f"refusing to download from {url!r}: only https URLs are allowed (plain http only for 127.0.0.1/localhost)"
    )


class _NoDowngradeRedirect(urllib.request.HTTPRedirectHandler):
    """Follow redirects only to URLs that pass `check_url`, and never from https to http."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: D102 - urllib's signature
        old, new = urlsplit(req.full_url).scheme, urlsplit(newurl).scheme
        if old == "https" and new != "https":
            raise CnnlabError(f"refusing redirect from {req.full_url!r} to {newurl!r}: https -> {new} downgrade")
        check_url(newurl)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_OPENER = urllib.request.build_opener(_NoDowngradeRedirect)


def file_digest(path: Path, algorithm: str) -> str:
    """Hex digest of a file, read in 1 MiB chunks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _verify(path: Path, sha256: str | None, md5: str | None) -> str | None:
    """None if the file matches the strongest checksum given, else a description of the mismatch."""
    algorithm, expected = ("sha256", sha256) if sha256 else ("md5", md5)
    got = file_digest(path, algorithm)
    return None if got == expected.lower() else f"{algorithm} {got}, expected {expected}"


class _Interrupted(Exception):
    """The transfer stopped early; the `.part` file is kept for a resume."""


class _Oversized(Exception):
    """The server sent (or announced) more than the known size; the `.part` file is deleted."""


@contextlib.contextmanager
def _exclusive(lock: Path, timeout: float | None) -> Iterator[None]:
    """Hold an exclusive flock on the file `lock` (created if needed, removed before release).

    `timeout`: seconds to wait for another holder (None: as long as it takes)."""
    if fcntl is None:
        yield
        return
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        try:  # O_NOFOLLOW: a link planted at the lock's name is not followed
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0), 0o644)
        except OSError as e:
            raise CnnlabError(f"cannot create the download lock {lock}: {e.strerror or e}; "
                              "remove it if it is a link, or download into a folder you can write") from None
        try:
            if deadline is None:
                fcntl.flock(fd, fcntl.LOCK_EX)
            else:
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if time.monotonic() >= deadline:
                            raise CnnlabError(
                                f"another download of {lock.name.removesuffix('.lock')} is in progress (it holds "
                                f"{lock}); wait for it to finish, or run again without a lock timeout") from None
                        time.sleep(0.05)
            try:  # the holder before us may have removed the file: then lock the one at the path now
                same = os.path.samestat(os.fstat(fd), os.stat(lock, follow_symlinks=False))
            except FileNotFoundError:
                same = False
            if same:
                break
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock)
        os.close(fd)


def _fetch(url: str, part: Path, size: int | None, timeout: float, progress: Progress | None) -> None:
    """Append the rest of `url` to `part` (resuming from its current length), or raise `_Interrupted`
    (keep `part`) or `_Oversized` (more than `size` bytes: delete it)."""
    if part.is_symlink():  # not ours (we hold the lock): never write through it
        part.unlink()
    have = part.stat().st_size if part.exists() else 0
    if size is not None and have >= size:
        return  # complete (or too long): let the checksum decide
    request = urllib.request.Request(url, headers={"User-Agent": "cnnlab"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = _OPENER.open(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416:  # range not satisfiable: we already hold every byte the server has
            return
        raise _Interrupted(f"HTTP {e.code} {e.reason}") from e
    except (urllib.error.URLError, OSError) as e:
        raise _Interrupted(str(getattr(e, "reason", e))) from e
    with response:
        mode = "wb"
        if have and response.status == 206:
            if not response.headers.get("Content-Range", "").startswith(f"bytes {have}-"):
                raise _Interrupted(f"server answered a different range: {response.headers.get('Content-Range')!r}")
            mode = "ab"
        elif have:
            have = 0  # the server ignored the Range header and sends the whole file: start over
        length = response.headers.get("Content-Length")
        expected_end = have + int(length) if length is not None and length.isdigit() else size
        if size is not None and expected_end is not None and expected_end > size:
            raise _Oversized(f"the server announced {expected_end} bytes, more than the expected {size}")
        received = have
        try:
            flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if mode == "ab" else os.O_TRUNC)
            with os.fdopen(os.open(part, flags | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0), 0o644),
                           mode) as f:
                while True:
                    # one byte more than what is left tells "too long" from "complete" without writing it
                    chunk = response.read(CHUNK if size is None else min(CHUNK, size - received + 1))
                    if not chunk:
                        break
                    if size is not None and received + len(chunk) > size:
                        raise _Oversized(f"the server sent more than the expected {size} bytes")
                    f.write(chunk)
                    received += len(chunk)
                    if progress:
                        progress(received, expected_end)
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:  # connection reset mid-body
            raise _Interrupted(f"{e} after {received} bytes") from e
        if expected_end is not None and received < expected_end:
            raise _Interrupted(f"connection closed after {received} of {expected_end} bytes")


def download(
    urls: str | Sequence[str],
    dest: str | Path,
    *,
    sha256: str | None = None,
    md5: str | None = None,
    size: int | None = None,
    timeout: float = 60.0,
    progress: Progress | None = None,
    lock_timeout: float | None = None,
) -> Path:
    """Fetch `dest` from the first mirror in `urls` that delivers bytes with the expected checksum.

    `size` (bytes) is optional and, when given, the most that is read; `sha256` or `md5` is required.
    `lock_timeout`: seconds to wait while another process downloads the same `dest` (None: wait until it
    is done). Returns `dest`. Raises CnnlabError (naming every mirror tried and what went wrong) when no
    mirror delivers verified bytes.
    """
    urls = [urls] if isinstance(urls, str) else list(urls)
    if not urls:
        raise CnnlabError("download needs at least one URL, got none")
    if not (sha256 or md5):
        raise CnnlabError(f"refusing to download {urls[0]!r} without a checksum: give sha256= or md5=")
    for url in urls:
        check_url(url)
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(dest.with_name(dest.name + ".lock"), lock_timeout):
        return _download_locked(urls, dest, sha256, md5, size, timeout, progress)


def _download_locked(urls: list[str], dest: Path, sha256: str | None, md5: str | None, size: int | None,
                     timeout: float, progress: Progress | None) -> Path:
    if dest.exists():  # also what a second caller finds once the first one is done
        problem = _verify(dest, sha256, md5)
        if problem is None:
            return dest
        raise CnnlabError(f"{dest} exists but is not the expected file ({problem}); delete it and run again")
    part = dest.with_name(dest.name + ".part")
    errors = []
    for url in urls:
        try:
            _fetch(url, part, size, timeout, progress)
        except _Interrupted as e:
            errors.append(f"{url}: {e} (partial file kept in {part}; run again to resume)")
            continue
        except _Oversized as e:
            part.unlink(missing_ok=True)
            errors.append(f"{url}: {e}; the file was deleted")
            continue
        problem = _verify(part, sha256, md5)
        if problem is None:
            os.replace(part, dest)  # atomic on one filesystem: `dest` appears only when complete and verified
            return dest
        part.unlink()
        errors.append(f"{url}: checksum mismatch ({problem}); the file was deleted")
    raise CnnlabError(f"could not download {dest.name}: " + "; ".join(errors))
