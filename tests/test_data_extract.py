"""Safe extraction against crafted tar and zip archives: traversal, absolute paths, link escapes."""

from __future__ import annotations

import io
import shutil
import stat
import struct
import tarfile
import zipfile
from pathlib import Path

import numpy as np
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


# ------------------------------------------------------------- zips as Python writes them, damage, size limits
def test_zip_written_with_writestr_extracts(box):
    """ZipFile.writestr(name, data) stores permission bits without a file type (0o600 << 16); Windows tools
    store DOS attributes only. Both are plain files, as unzip treats them."""
    dest, tmp = box
    with zipfile.ZipFile(tmp / "py.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("pkg/a.txt", b"hello" * 100)
        zf.writestr("pkg/sub/b.bin", bytes(range(256)))
        dos = zipfile.ZipInfo("pkg/c.txt")
        dos.create_system, dos.external_attr = 0, 0x20  # MS-DOS "archive" attribute
        zf.writestr(dos, b"from windows")
    assert zf.getinfo("pkg/a.txt").external_attr >> 16 == 0o600  # what makes it a test of this case
    assert safe_extract(tmp / "py.zip", dest) == [dest / "pkg"]
    assert (dest / "pkg" / "a.txt").read_bytes() == b"hello" * 100
    assert (dest / "pkg" / "sub" / "b.bin").read_bytes() == bytes(range(256))
    assert (dest / "pkg" / "c.txt").read_bytes() == b"from windows"


def _damaged_archives(tmp: Path) -> list[tuple[str, bytes]]:
    """(label, bytes): truncations and single-bit flips of tar.gz/.bz2/.xz and zip archives, and a zip
    whose symlink member runs past the end of the file (EOFError in zipfile)."""
    rng = np.random.default_rng(0)
    payload = bytes(rng.integers(0, 256, 20_000, dtype=np.uint8)) + bytes(20_000)
    out = []
    for mode in ("gz", "bz2", "xz"):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode=f"w:{mode}") as tf:
            for i in range(2):
                info = tarfile.TarInfo(f"t/{i}.bin")
                info.size = len(payload)
                tf.addfile(info, io.BytesIO(payload))
        out.append((f"tar.{mode}", buf.getvalue()))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(zipfile.ZipInfo("t/0.bin"), payload)
        zf.writestr(zipfile.ZipInfo("t/1.bin"), payload)
    out.append(("zip", buf.getvalue()))
    damaged = []
    for label, data in out:
        damaged += [(f"{label} cut at {n}", data[:n]) for n in range(1, len(data), max(1, len(data) // 40))]
        for _ in range(40):
            flipped = bytearray(data)
            i = int(rng.integers(0, len(data)))
            flipped[i] ^= 1 << int(rng.integers(0, 8))
            damaged.append((f"{label} bit flip at {i}", bytes(flipped)))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("a.txt", b"hello")
        info = zipfile.ZipInfo("link")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, b"a.txt")
    data = bytearray(buf.getvalue())
    entry = data.rfind(b"PK\x01\x02")  # the link's central directory entry: sizes past the end of the file
    struct.pack_into("<II", data, entry + 20, 5000, 5000)
    damaged.append(("zip link past the end", bytes(data)))
    return damaged


def test_damaged_archives_are_one_line_errors(box):
    dest, tmp = box
    extracted, cases = 0, _damaged_archives(tmp)
    for label, data in cases:
        arc = tmp / ("bad.zip" if label.startswith("zip") else "bad.tar")
        arc.write_bytes(data)
        try:
            created = safe_extract(arc, dest)
        except CnnlabError as e:
            assert "\n" not in str(e), label
            assert list(dest.iterdir()) == [], label  # nothing half-written
        except Exception as e:  # noqa: BLE001 - the point of the test
            pytest.fail(f"{label}: {type(e).__name__}: {e}")
        else:  # a flip in a name or padding can leave a valid archive: then it extracts whole
            extracted += 1
            for p in created:
                shutil.rmtree(p) if p.is_dir() else p.unlink()
    # the rest was refused (a flip in a gzip header field, tar padding or payload bytes is not an error
    # to the decompressor; the download's checksum is what catches those)
    assert extracted < len(cases) // 4


def test_extracted_size_and_member_count_are_limited(box, monkeypatch):
    import cnnlab.data.extract as extract

    dest, tmp = box
    with zipfile.ZipFile(tmp / "bomb.zip", "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        zf.writestr("zeros.bin", bytes(20 << 20))  # 20 MiB of zeros in ~20 KiB
    assert (tmp / "bomb.zip").stat().st_size < 100_000
    with pytest.raises(CnnlabError, match=r"unpack to 20,971,520 bytes, over the limit of 1,048,576 bytes"):
        safe_extract(tmp / "bomb.zip", dest, max_bytes=1 << 20)
    assert list(dest.iterdir()) == []
    monkeypatch.setattr(extract, "MAX_BYTES", 10 << 20)  # the default applies when none is given
    with pytest.raises(CnnlabError, match=r"over the limit of 10,485,760 bytes \(max_bytes\)"):
        safe_extract(tmp / "bomb.zip", dest)
    assert list(dest.iterdir()) == []
    make_tar(tmp / "many.tar.gz", [("file", f"d/{i}.txt", b"x") for i in range(50)])
    with pytest.raises(CnnlabError, match=r"50 members, over the limit of 49 \(max_members\)"):
        safe_extract(tmp / "many.tar.gz", dest, max_members=49)
    assert list(dest.iterdir()) == []
    assert len(safe_extract(tmp / "many.tar.gz", dest, max_members=50, max_bytes=50)) == 1  # limits inclusive
    assert len(list((dest / "d").iterdir())) == 50
