"""Every archive member is checked before anything is written; extraction then meets only those members."""

from __future__ import annotations

import shutil
import tarfile

import pytest

from pipeline.core.errors import PipelineError
from pipeline.data.archive import check_archive, extract_archive
from tests.factories import make_archive, make_tar, tar_member

GOOD = [
    tar_member("cityscapes", tarfile.DIRTYPE),
    tar_member("cityscapes/train", tarfile.DIRTYPE),
    tar_member("cityscapes/train/1.jpg", data=b"jpeg bytes"),
    tar_member("cityscapes/val", tarfile.DIRTYPE),
    tar_member("cityscapes/val/1.jpg", data=b"more jpeg bytes"),
]


@pytest.mark.parametrize(
    ("member", "reason"),
    [
        (tar_member("../evil", data=b"x"), r"climbs out with \.\."),
        (tar_member("cityscapes/train/../../evil", data=b"x"), r"climbs out with \.\."),
        (tar_member("/etc/evil", data=b"x"), "absolute"),
        (tar_member("/cityscapes/../cityscapes/train", tarfile.DIRTYPE), "absolute"),
        (tar_member("cityscapes/train/2.jpg", tarfile.SYMTYPE, linkname="1.jpg"), "symbolic link"),
        (tar_member("cityscapes/train/2.jpg", tarfile.SYMTYPE, linkname="/etc/passwd"), "symbolic link"),
        (tar_member("cityscapes/train/2", tarfile.LNKTYPE, linkname="cityscapes/train/1.jpg"), "hard link"),
        (tar_member("cityscapes/train/2.jpg", tarfile.CHRTYPE), "device or a fifo"),
        (tar_member("cityscapes/train/2.jpg", tarfile.BLKTYPE), "device or a fifo"),
        (tar_member("cityscapes/train/2.jpg", tarfile.FIFOTYPE), "device or a fifo"),
        (tar_member("cityscapes/train/2.jpg", tarfile.CONTTYPE, data=b"x"), "not a regular file"),
        (tar_member("cityscapes/evil.sh", data=b"x"), "not in cityscapes/train/ or cityscapes/val/"),
        (tar_member("elsewhere/1.jpg", data=b"x"), "not in cityscapes/train/"),
        (tar_member("cityscapes/train/sub/1.jpg", data=b"x"), "not in cityscapes/train/"),
        (tar_member("cityscapes/test", tarfile.DIRTYPE), "folder other than"),
        (tar_member("cityscapes/train/.hidden", data=b"x"), "name is not plain"),
        (tar_member("cityscapes/train/a b.jpg", data=b"x"), "name is not plain"),
        (tar_member("cityscapes/train/1.jpg", data=b"a second copy"), "appears twice"),
    ],
)
def test_unsafe_members_are_refused_before_anything_is_written(tmp_path, member, reason):
    archive = make_tar(tmp_path / "hostile.tar.gz", [*GOOD, member])
    with pytest.raises(PipelineError, match=rf"unsafe member .*\(.*{reason}.*\); refused, nothing extracted"):
        check_archive(archive)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hostile.tar.gz"]


def test_caps_on_member_count_and_unpacked_size(tmp_path):
    archive = make_tar(tmp_path / "a.tar.gz", GOOD)
    assert len(check_archive(archive).members) == len(GOOD)
    with pytest.raises(PipelineError, match=f"more than {len(GOOD) - 1} members"):
        check_archive(archive, max_members=len(GOOD) - 1)
    with pytest.raises(PipelineError, match="unpacks to more than"):
        check_archive(archive, max_bytes=20)  # 10 + 15 bytes of data


def test_a_bomb_in_a_header_stops_at_the_cap(tmp_path):
    # A 512 kB member name (a GNU long-name header) is data no member header declares.
    archive = make_tar(
        tmp_path / "bomb.tar.gz",
        [tar_member("cityscapes/train/" + "a" * (512 << 10), data=b"x")],
        tar_format=tarfile.GNU_FORMAT,
    )
    with pytest.raises(PipelineError, match="inflates to more than its members declare"):
        check_archive(archive, max_members=1, max_bytes=1000)


@pytest.mark.parametrize("mode", ["w:gz", "w:bz2", "w:xz", "w"])
def test_good_archives_extract_with_the_same_hash(tmp_path, pix2pix_tree, mode):
    archive = make_archive(pix2pix_tree.parent, tmp_path / "cityscapes.tar", mode)
    checked = check_archive(archive)
    assert len(checked.members) == 3 + 12 + 4
    extract_archive(checked, tmp_path / "out")

    def listing(root):
        return sorted(p.relative_to(root).as_posix() for p in root.rglob("*.jpg"))

    assert listing(tmp_path / "out") == listing(pix2pix_tree.parent)


def test_a_dot_slash_archive_is_fine(tmp_path):
    archive = make_tar(
        tmp_path / "a.tar.gz",
        [tar_member(".", tarfile.DIRTYPE), *[(i.replace(name=f"./{i.name}"), data) for i, data in GOOD]],
    )
    extract_archive(check_archive(archive), tmp_path / "out")
    assert (tmp_path / "out" / "cityscapes" / "val" / "1.jpg").read_bytes() == b"more jpeg bytes"


def test_an_archive_swapped_after_the_check_is_refused(tmp_path):
    archive = make_tar(tmp_path / "a.tar.gz", GOOD)
    checked = check_archive(archive)
    make_tar(tmp_path / "other.tar.gz", [*GOOD[:2], tar_member("cityscapes/train/9.jpg", data=b"jpeg bytes")])
    shutil.copy(tmp_path / "other.tar.gz", archive)
    with pytest.raises(PipelineError, match="differs from the member checked"):
        extract_archive(checked, tmp_path / "out")

    same_layout = [*GOOD[:2], tar_member("cityscapes/train/1.jpg", data=b"JPEG BYTES"), *GOOD[3:]]
    make_tar(archive, same_layout)
    with pytest.raises(PipelineError, match="sha256 changed"):
        extract_archive(checked, tmp_path / "out2")


def test_truncated_archive_is_corrupt_not_unsafe(tmp_path, pix2pix_archive):
    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(pix2pix_archive.read_bytes()[:5000])
    with pytest.raises(PipelineError, match="truncated or corrupt"):
        check_archive(truncated)


def test_sha256_covers_the_whole_file(tmp_path, pix2pix_archive):
    import hashlib

    assert check_archive(pix2pix_archive).sha256 == hashlib.sha256(pix2pix_archive.read_bytes()).hexdigest()
