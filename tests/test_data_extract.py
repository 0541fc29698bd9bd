"""Safe extraction against crafted tar and zip archives: traversal, absolute paths, link escapes."""

from __future__ import annotations

import io
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

from cnnlab.data.extract import safe_extract
from cnnlab.errors import CnnlabError


def make_tar(path: Path, members: list[tuple]) -> Path:
    """members: ("file", name, bytes) | ("dir", name) | ("symlink", name, target) | ("hardlink", name, target)
    | ("fifo", name)."""
    with tarfile.open(path, "w:gz") as tf:
        for kind, name, *rest in members:
            info = tarfile.TarInfo(name)
            if kind == "file":
                info.size = len(rest[0])
                tf.addfile(info, io.BytesIO(rest[0]))
                continue
            info.type = {"dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE,
                         "fifo": tarfile.FIFOTYPE}[kind]
            if rest:
                info.linkname = rest[0]
            tf.addfile(info)
    return path


def make_zip(path: Path, members: list[tuple]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for kind, name, data in members:
            info = zipfile.ZipInfo(name)
            if kind == "symlink":
                info.external_attr = (stat.S_IFLNK | 0o777) << 16
            else:
                info.external_attr = (stat.S_IFREG | 0o644) << 16
            zf.writestr(info, data)
    return path


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.fixture
def box(tmp_path):
    """(destination folder, a sibling folder an escaping member would hit)."""
    (tmp_path / "dest").mkdir()
    return tmp_path / "dest", tmp_path


def test_good_tar_extracts_with_internal_links(box):
    dest, tmp = box
    arc = make_tar(tmp / "ok.tar.gz", [("dir", "pkg"), ("file", "pkg/a.txt", b"hello"),
                                       ("file", "pkg/sub/b.bin", b"\x00\x01"),
                                       ("symlink", "pkg/sub/link", "../a.txt"), ("hardlink", "pkg/hard", "pkg/a.txt")])
    created = safe_extract(arc, dest)
    assert created == [dest / "pkg"]
    assert (dest / "pkg/a.txt").read_bytes() == b"hello"
    assert (dest / "pkg/sub/b.bin").read_bytes() == b"\x00\x01"
    assert (dest / "pkg/sub/link").is_symlink() and (dest / "pkg/sub/link").read_bytes() == b"hello"
    assert (dest / "pkg/hard").read_bytes() == b"hello"
    assert _tree(dest) == ["pkg", "pkg/a.txt", "pkg/hard", "pkg/sub", "pkg/sub/b.bin", "pkg/sub/link"]


@pytest.mark.parametrize("members,why", [
    ([("file", "../evil.txt", b"x")], "'..' in path"),
    ([("file", "pkg/../../evil.txt", b"x")], "'..' in path"),
    ([("file", "/tmp/cnnlab-evil-abs.txt", b"x")], "absolute path"),
    ([("symlink", "pkg/link", "../../evil")], "outside the destination"),
    ([("symlink", "pkg/link", "/etc/passwd")], "absolute path"),
    ([("hardlink", "pkg/hard", "../evil")], "outside the destination"),
    ([("hardlink", "pkg/hard", "/etc/passwd")], "absolute path"),
    # the two-step escape: an innocent link inside, then a write through it
    ([("symlink", "pkg/d", "."), ("file", "pkg/d/../../evil.txt", b"x")], "'..' in path"),
    ([("symlink", "pkg/d", "sub"), ("file", "pkg/d/x.txt", b"x")], "goes through a link"),
    ([("symlink", "pkg/a", ".."), ("symlink", "pkg/b", "a")], "goes through another link"),
    ([("fifo", "pkg/pipe")], "special file"),
])
def test_unsafe_tar_refused_before_writing(box, members, why):
    dest, tmp = box
    arc = make_tar(tmp / "bad.tar.gz", [("file", "pkg/ok.txt", b"fine"), *members])
    with pytest.raises(CnnlabError, match=why.replace("(", r"\(")):
        safe_extract(arc, dest)
    assert list(dest.iterdir()) == []  # nothing written, not even the harmless member or a temp folder
    assert not (tmp / "evil.txt").exists() and not Path("/tmp/cnnlab-evil-abs.txt").exists()


def test_link_target_through_another_link_refused(box):
    dest, tmp = box
    # lexically pkg/a/../.. is the destination itself, but pkg/a -> . makes it the folder above
    arc = make_tar(tmp / "bad.tar.gz", [("symlink", "pkg/a", "."), ("symlink", "pkg/b", "a/../..")])
    with pytest.raises(CnnlabError, match="unsafe"):
        safe_extract(arc, dest)
    assert list(dest.iterdir()) == []


def test_good_zip_extracts(box):
    dest, tmp = box
    arc = make_zip(tmp / "ok.zip", [("file", "z/a.txt", b"A"), ("file", "z/b/c.txt", b"C"),
                                    ("symlink", "z/b/l", "../a.txt")])
    assert safe_extract(arc, dest) == [dest / "z"]
    assert (dest / "z/a.txt").read_bytes() == b"A" and (dest / "z/b/c.txt").read_bytes() == b"C"
    assert (dest / "z/b/l").is_symlink() and (dest / "z/b/l").read_bytes() == b"A"


@pytest.mark.parametrize("members,why", [
    ([("file", "../evil.txt", b"x")], "'..' in path"),
    ([("file", "/tmp/cnnlab-evil-abs.txt", b"x")], "absolute path"),
    ([("file", "C:\\evil.txt", b"x")], "absolute path"),
    ([("file", "z\\..\\..\\evil.txt", b"x")], "'..' in path"),
    ([("symlink", "z/l", "../../evil")], "outside the destination"),
    ([("symlink", "z/l", "/etc")], "absolute path"),
])
def test_unsafe_zip_refused(box, members, why):
    dest, tmp = box
    arc = make_zip(tmp / "bad.zip", [("file", "z/ok.txt", b"fine"), *members])
    with pytest.raises(CnnlabError, match=why.replace("(", r"\(")):
        safe_extract(arc, dest)
    assert list(dest.iterdir()) == []
    assert not (tmp / "evil.txt").exists()


def test_existing_entry_not_overwritten(box):
    dest, tmp = box
    (dest / "pkg").mkdir()
    (dest / "pkg" / "keep.txt").write_text("mine")
    arc = make_tar(tmp / "ok.tar.gz", [("file", "pkg/a.txt", b"x")])
    with pytest.raises(CnnlabError, match="already exists"):
        safe_extract(arc, dest)
    assert _tree(dest) == ["pkg", "pkg/keep.txt"]


def test_damaged_archive_leaves_nothing(box):
    dest, tmp = box
    arc = make_tar(tmp / "ok.tar.gz", [("file", "pkg/a.bin", bytes(range(256)) * 4000)])
    data = arc.read_bytes()
    (tmp / "cut.tar.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(CnnlabError):
        safe_extract(tmp / "cut.tar.gz", dest)
    assert list(dest.iterdir()) == []


def test_not_an_archive(box):
    dest, tmp = box
    (tmp / "x.tar.gz").write_bytes(b"hello")
    with pytest.raises(CnnlabError, match="not a tar or zip"):
        safe_extract(tmp / "x.tar.gz", dest)
