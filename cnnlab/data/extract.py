"""Archive extraction that cannot write outside its destination.

Every member is checked before anything is written: names with `..`, absolute names (`/x`, `C:\\x`),
links whose target leaves the destination, members whose path runs through a link (the trick that
turns an innocent-looking `d/x` into a write outside once `d -> ..` exists), devices and FIFOs are all
refused. (torchvision's `extract_archive` calls `extractall` without such checks: pytorch/vision#9517.)
The archive is then unpacked into a temporary folder beside the destination and each top-level entry
renamed into place, so an interrupted extraction never leaves a half-filled folder under the final name.
For tar files Python's own `filter="data"` runs as well, as a second line of defence.
"""

from __future__ import annotations

import shutil
import stat
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from cnnlab.errors import CnnlabError


@dataclass(frozen=True)
class _Member:
    name: str  # as stored, "/"-separated
    kind: str  # "file", "dir", "symlink", "hardlink", "other"
    target: str = ""  # link target as stored


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
        out.append(_Member(info.name, kind, info.linkname))
    return out


def _zip_kind(info: zipfile.ZipInfo) -> str:
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        return "symlink"
    if info.is_dir():
        return "dir"
    if mode and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        return "other"
    return "file"


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


def safe_extract(archive: str | Path, into: str | Path) -> list[Path]:
    """Extract a tar (.tar, .tar.gz, .tgz, .tar.bz2, .tar.xz) or .zip archive into the folder `into`.

    Returns the top-level paths created. Raises CnnlabError, before writing anything, for an unsafe member,
    an unknown archive format, or a top-level entry that already exists in `into`.
    """
    archive, into = Path(archive), Path(into)
    if not archive.is_file():
        raise CnnlabError(f"archive not found: {archive}")
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
            members = [
                _Member(i.filename, kind, zf.read(i).decode("utf-8", "replace") if kind == "symlink" else "")
                for i in infos
                for kind in [_zip_kind(i)]
            ]
            return _unpack(archive, into, members, lambda tmp: _extract_zip(zf, members, infos, tmp))
    try:
        tf = tarfile.open(archive)
    except tarfile.TarError as e:
        raise CnnlabError(f"cannot extract {archive}: not a tar or zip archive ({e})") from e
    with tf:
        try:
            members = _tar_members(tf)
        except (tarfile.TarError, EOFError, OSError) as e:
            raise CnnlabError(f"cannot extract {archive}: the archive is damaged ({e})") from e
        # filter="data" (Python >= 3.10.12 / 3.11.4) re-checks every path against the real filesystem
        extra = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        return _unpack(archive, into, members, lambda tmp: tf.extractall(tmp, **extra))


def _unpack(archive: Path, into: Path, members: list[_Member], extract_to) -> list[Path]:
    _check(members, archive)
    tops = sorted({_parts(m.name)[0] for m in members if _parts(m.name)})
    clashes = [t for t in tops if (into / t).exists() or (into / t).is_symlink()]
    if clashes:
        raise CnnlabError(f"cannot extract {archive.name} into {into}: {clashes[0]!r} already exists there")
    into.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{archive.name}.", suffix=".extracting", dir=into))
    try:
        try:
            extract_to(tmp)
        except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as e:
            raise CnnlabError(f"cannot extract {archive}: the archive is damaged ({e})") from e
        created = []
        for top in tops:
            (tmp / top).replace(into / top)
            created.append(into / top)
        return created
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
