"""Archive extraction that cannot write outside its destination.

Every member is checked before anything is written: names with `..`, absolute names (`/x`, `C:\\x`),
links whose target leaves the destination, members whose path runs through a link (the trick that
turns an innocent-looking `d/x` into a write outside once `d -> ..` exists), devices and FIFOs are all
refused. (torchvision's `extract_archive` calls `extractall` without such checks: pytorch/vision#9517.)
The archive is then unpacked into a temporary folder beside the destination and each top-level entry
renamed into place, so an interrupted extraction never leaves a half-filled folder under the final name.
For tar files Python's own `filter="data"` runs as well, as a second line of defence.

Size is bounded before anything is written: at most `max_members` entries and `max_bytes` bytes in all
(the sizes the archive declares, which bind: tarfile reads exactly a member's declared size from the
stream, and zipfile stops a member at its declared size and checks its CRC), and no more than the free
space of the destination, so a decompression bomb is refused up front with the limit in the message.
A zip member without Unix file-type bits (what `ZipFile.writestr(name, data)` and Windows tools write)
is a regular file. A damaged or truncated archive, whatever the decompressor raises (EOFError, zlib,
lzma, bz2 errors), is one CnnlabError, and the destination is left as it was.
"""

from __future__ import annotations

import lzma
import shutil
import stat
import tarfile
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from cnnlab.errors import CnnlabError

MAX_BYTES = 16 << 30  # bytes all members may add up to (the largest registered archive unpacks to ~180 MB)
MAX_MEMBERS = 1_000_000  # files, folders and links (ImageNet-sized image folders stay below)
MAX_LINK_TARGET = 4096  # bytes of a zip symlink's target (PATH_MAX); the target is read into memory
UNIX = 3  # ZipInfo.create_system of archives whose external_attr holds Unix mode bits

# what reading a damaged archive raises besides tarfile/zipfile's own errors (gzip's errors are OSErrors)
_DAMAGED = (tarfile.TarError, zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, zlib.error, lzma.LZMAError,
            NotImplementedError, ValueError, OSError)


@dataclass(frozen=True)
class _Member:
    name: str  # as stored, "/"-separated
    kind: str  # "file", "dir", "symlink", "hardlink", "other"
    target: str = ""  # link target as stored
    size: int = 0  # bytes the member unpacks to, as declared


def _parts(name: str) -> list[str]:
    return [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]


def _unsafe_name(name: str) -> str | None:
    """Why a stored member name is unsafe, or None."""
    if not name:
        return "empty name"
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return "absolute path"
    if ".." in _parts(name):
        return "'..' in path"
    return None


def _walk_target(m: _Member, parts: list[str], links: set[str]) -> str | None:
    """Follow a link target component by component, as the filesystem would, without touching it."""
    # symlink targets are relative to the link's folder, hardlink targets to the archive root
    cur = parts[:-1] if m.kind == "symlink" else []
    comps = _parts(m.target)
    for i, comp in enumerate(comps):
        if comp == "..":
            if not cur:
                return f"link target {m.target!r} is outside the destination"
            cur.pop()
            continue
        cur.append(comp)
        # a link on the way (or at the end) may point anywhere: `a -> .` then `b -> a/../..` escapes
        if "/".join(cur) in links and (i < len(comps) - 1 or m.kind == "symlink"):
            return f"link target {m.target!r} goes through another link"
    return None


def _check(members: list[_Member], archive: Path) -> None:
    links = {"/".join(_parts(m.name)) for m in members if m.kind in ("symlink", "hardlink")}
    for m in members:
        why = _unsafe_name(m.name)
        parts = _parts(m.name)
        if why is None and m.kind == "other":
            why = "device, FIFO or other special file"
        if why is None and any("/".join(parts[:i]) in links for i in range(1, len(parts))):
            why = "path goes through a link"
        if why is None and m.kind in ("symlink", "hardlink"):
            if not m.target or m.target.startswith(("/", "\\")) or (len(m.target) > 1 and m.target[1] == ":"):
                why = f"link to absolute path {m.target!r}"
            else:
                why = _walk_target(m, parts, links)
        if why:
            raise CnnlabError(f"refusing to extract {archive.name}: member {m.name!r} is unsafe ({why})")


def _tar_members(tf: tarfile.TarFile) -> list[_Member]:
    out = []
    for info in tf.getmembers():
        if info.isdir():
            kind = "dir"
        elif info.isfile():
            kind = "file"
        elif info.issym():
            kind = "symlink"
        elif info.islnk():
            kind = "hardlink"
        else:
            kind = "other"
        out.append(_Member(info.name, kind, info.linkname, info.size if kind == "file" else 0))
    return out


def _zip_kind(info: zipfile.ZipInfo) -> str:
    # the high 16 bits are a Unix st_mode only from Unix tools, and even then may carry permissions alone
    # (ZipFile.writestr(name, data) stores 0o600 << 16): no file-type bits means a regular file
    mode = info.external_attr >> 16 if info.create_system == UNIX else 0
    if stat.S_ISLNK(mode):
        return "symlink"
    if info.is_dir():
        return "dir"
    if stat.S_IFMT(mode) and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        return "other"
    return "file"


def _zip_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, archive: Path) -> _Member:
    kind = _zip_kind(info)
    if kind != "symlink":
        return _Member(info.filename, kind, "", info.file_size if kind == "file" else 0)
    if info.file_size > MAX_LINK_TARGET:
        raise CnnlabError(f"refusing to extract {archive.name}: member {info.filename!r} is unsafe (a link target "
                          f"of {info.file_size:,} bytes, over {MAX_LINK_TARGET})")
    return _Member(info.filename, kind, zf.read(info).decode("utf-8", "replace"))


def _extract_zip(zf: zipfile.ZipFile, members: list[_Member], infos: list[zipfile.ZipInfo], root: Path) -> None:
    for m, info in zip(members, infos, strict=True):
        path = root.joinpath(*_parts(m.name))
        if m.kind == "dir":
            path.mkdir(parents=True, exist_ok=True)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        if m.kind == "symlink":
            path.symlink_to(m.target)
            continue
        with zf.open(info) as src, open(path, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)


def _damaged(archive: Path, e: BaseException) -> CnnlabError:
    if isinstance(e, OSError) and e.errno is not None:  # the disk, not the archive: say what the OS said
        return CnnlabError(f"cannot extract {archive}: {e.strerror or e} ({e.filename or 'destination'})")
    text = _one_line(e)
    return CnnlabError(f"cannot extract {archive}: the archive is damaged or truncated "
                       f"({type(e).__name__}{': ' + text if text else ''}); download it again")


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())  # tarfile's "no method worked" lists one line per method


def safe_extract(archive: str | Path, into: str | Path, *, max_bytes: int | None = None,
                 max_members: int | None = None) -> list[Path]:
    """Extract a tar (.tar, .tar.gz, .tgz, .tar.bz2, .tar.xz) or .zip archive into the folder `into`.

    `max_bytes` (default MAX_BYTES) bounds the bytes all members unpack to, `max_members` (default
    MAX_MEMBERS) their number. Returns the top-level paths created. Raises CnnlabError, before writing
    anything, for an unsafe member, an archive over a limit, an unknown archive format, or a top-level
    entry that already exists in `into`; and for a damaged archive, leaving `into` as it was.
    """
    archive, into = Path(archive), Path(into)
    limits = (MAX_BYTES if max_bytes is None else max_bytes, MAX_MEMBERS if max_members is None else max_members)
    if not archive.is_file():
        raise CnnlabError(f"archive not found: {archive}")
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                infos = zf.infolist()
                members = [_zip_member(zf, i, archive) for i in infos]
                return _unpack(archive, into, members, limits, lambda tmp: _extract_zip(zf, members, infos, tmp))
        try:
            tf = tarfile.open(archive)
        except tarfile.TarError as e:
            raise CnnlabError(f"cannot extract {archive}: not a tar or zip archive ({_one_line(e)})") from e
        with tf:
            members = _tar_members(tf)
            # filter="data" (Python >= 3.10.12 / 3.11.4) re-checks every path against the real filesystem
            extra = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            return _unpack(archive, into, members, limits, lambda tmp: tf.extractall(tmp, **extra))
    except CnnlabError:  # a ValueError too, but already one line
        raise
    except _DAMAGED as e:
        raise _damaged(archive, e) from e


def _check_limits(members: list[_Member], archive: Path, into: Path, limits: tuple[int, int]) -> None:
    max_bytes, max_members = limits
    if len(members) > max_members:
        raise CnnlabError(f"refusing to extract {archive.name}: {len(members):,} members, over the limit of "
                          f"{max_members:,} (max_members); raise it only for an archive you trust")
    total = sum(m.size for m in members)
    if total > max_bytes:
        raise CnnlabError(f"refusing to extract {archive.name}: its members unpack to {total:,} bytes, over the "
                          f"limit of {max_bytes:,} bytes (max_bytes); raise it only for an archive you trust")
    existing = next(p for p in (into, *into.parents) if p.exists())  # `into` may not exist yet
    free = shutil.disk_usage(existing).free
    if total > free:
        raise CnnlabError(f"cannot extract {archive.name} into {into}: it unpacks to {total:,} bytes and only "
                          f"{free:,} are free there")


def _unpack(archive: Path, into: Path, members: list[_Member], limits: tuple[int, int], extract_to) -> list[Path]:
    _check(members, archive)
    tops = sorted({_parts(m.name)[0] for m in members if _parts(m.name)})
    clashes = [t for t in tops if (into / t).exists() or (into / t).is_symlink()]
    if clashes:
        raise CnnlabError(f"cannot extract {archive.name} into {into}: {clashes[0]!r} already exists there")
    _check_limits(members, archive, into, limits)
    into.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{archive.name}.", suffix=".extracting", dir=into))
    try:
        try:
            extract_to(tmp)
        except CnnlabError:
            raise
        except _DAMAGED as e:
            raise _damaged(archive, e) from e
        created = []
        for top in tops:
            (tmp / top).replace(into / top)
            created.append(into / top)
        return created
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
