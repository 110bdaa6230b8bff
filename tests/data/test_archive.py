"""Every archive member is checked before anything is written; extraction then meets only those members.

Tar and zip archives, of both layouts (pix2pix paired, CycleGAN unpaired), built on the fly from
a few bytes posing as images: no real image is ever needed to check an archive's structure.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import stat
import tarfile
import warnings
import zipfile
import zlib
from pathlib import Path

import pytest

from pipeline.core.errors import PipelineError
from pipeline.data.archive import (
    MAX_BYTES,
    check_archive,
    detect_layout,
    extract_archive,
    sniff_archive,
)
from tests.factories import make_archive, make_tar, tar_member

GOOD = [
    tar_member("cityscapes", tarfile.DIRTYPE),
    tar_member("cityscapes/train", tarfile.DIRTYPE),
    tar_member("cityscapes/train/1.jpg", data=b"jpeg bytes"),
    tar_member("cityscapes/val", tarfile.DIRTYPE),
    tar_member("cityscapes/val/1.jpg", data=b"more jpeg bytes"),
]
UNPAIRED_SPLITS = ("trainA", "trainB", "testA", "testB")


def nothing_written(dest: Path) -> bool:
    return not dest.exists() or not any(dest.iterdir())


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


# --- zip builders -------------------------------------------------------------------------------------


def zip_member(
    name: str, data: bytes | None = b"", method: int = zipfile.ZIP_STORED, mode: int | None = None
) -> tuple[str, bytes | None, int, int | None]:
    """One member for `make_zip`: a file with `data`, or a folder (`data` None); `mode` sets the Unix
    mode bits (a symlink, a fifo...)."""
    return name, data, method, mode


def make_zip(path: Path, members: list[tuple]) -> Path:
    """A zip of exactly `members` (from `zip_member`), in order: hostile archives for the tests."""
    with warnings.catch_warnings(), zipfile.ZipFile(path, "w") as archive:
        warnings.simplefilter("ignore", UserWarning)  # "Duplicate name": wanted here
        for name, data, method, mode in members:
            if data is None:
                archive.mkdir(name)
                continue
            info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
            info.compress_type = method
            if mode is not None:
                info.external_attr = mode << 16
            archive.writestr(info, data)
    return path


GOOD_ZIP = [
    zip_member("horse2zebra/", None),
    *(
        zip_member(f"horse2zebra/{split}/n0238_{i}.jpg", b"jpeg bytes %d" % i)
        for split in UNPAIRED_SPLITS
        for i in (1, 2)
    ),
]


def patch_zip(path: Path, name: str, **fields: int) -> Path:
    """Overwrite header fields of member `name` in place: `file_size` and `compress_size` (in the local
    and central headers), `flag_bits` and `CRC` (both), `header_offset` (central only)."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        local = archive.getinfo(name).header_offset
    encoded = name.encode()
    central = next(
        m.start()
        for m in re.finditer(rb"PK\x01\x02", data)
        if data[m.start() + 46 : m.start() + 46 + len(encoded)] == encoded
    )
    offsets = {  # (local header offset, central header offset, width)
        "flag_bits": (6, 8, 2),
        "CRC": (14, 16, 4),
        "compress_size": (18, 20, 4),
        "file_size": (22, 24, 4),
        "header_offset": (None, 42, 4),
    }
    for field, value in fields.items():
        in_local, in_central, width = offsets[field]
        if in_local is not None:
            data[local + in_local : local + in_local + width] = value.to_bytes(width, "little")
        data[central + in_central : central + in_central + width] = value.to_bytes(width, "little")
    path.write_bytes(bytes(data))
    return path


# --- good archives of every layout --------------------------------------------------------------------

LAYOUTS = {
    "paired-train-val": ("facades", {"train": ["1.jpg", "2.jpg", "3.JPG"], "val": ["1.jpg", "2.png"]}),
    "paired-train-test": ("maps", {"train": ["1.jpg", "2.jpeg"], "test": ["1.jpg", "2.jpg"]}),
    "unpaired": (
        "horse2zebra",
        {
            "trainA": ["n02381460_1001.jpg", "n02381460_1002.jpg"],
            "trainB": ["n02391049_10.jpg"],
            "testA": ["n02381460_20.jpg"],
            "testB": ["n02391049_80.PNG"],
        },
    ),
}


def make_tree(root: Path, dataset: str, splits: dict[str, list[str]]) -> Path:
    """``root/<dataset>/<split>/<file>`` with a few distinct bytes per file (not images: not needed)."""
    for split, names in splits.items():
        (root / dataset / split).mkdir(parents=True)
        for name in names:
            (root / dataset / split / name).write_bytes(f"{split}/{name} ".encode() * 3)
    return root


def pack(root: Path, dataset: str, archive: Path, mode: str) -> Path:
    """`root/dataset` as a zip (folders included, deflated) or a tar in `mode`."""
    if mode == "zip":
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as packed:
            for path in [root / dataset, *sorted((root / dataset).rglob("*"))]:
                packed.write(path, path.relative_to(root).as_posix())
        return archive
    with tarfile.open(archive, mode) as packed:
        packed.add(root / dataset, arcname=dataset)
    return archive


def contents(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("mode", ["zip", "w:gz", "w"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_good_archives_of_each_layout_check_and_extract(tmp_path, layout, mode):
    dataset, splits = LAYOUTS[layout]
    source = make_tree(tmp_path / "src", dataset, splits)
    archive = pack(source, dataset, tmp_path / f"{dataset}.archive", mode)
    checked = check_archive(archive)
    assert checked.kind == ("zip" if mode == "zip" else {"w:gz": "gz", "w": "tar"}[mode])
    assert checked.dataset == dataset and checked.splits == tuple(splits)
    assert checked.layout == layout.split("-")[0] and checked.skipped == 0
    assert checked.image_counts == {split: len(names) for split, names in splits.items()}
    assert checked.sha256 == hashlib.sha256(archive.read_bytes()).hexdigest()
    extract_archive(checked, tmp_path / "out")
    assert contents(tmp_path / "out") == contents(source)


# --- the layout ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("folders", "layout"),
    [
        ({"train", "val"}, "paired"),
        ({"train", "test"}, "paired"),
        ({"train", "val", "test"}, "paired"),
        ({"trainA", "trainB", "testA", "testB"}, "unpaired"),
        ({"train", "val", "__MACOSX", ".DS_Store"}, "paired"),
    ],
)
def test_layouts_are_recognised_from_folder_names(folders, layout):
    assert detect_layout(folders) == layout


@pytest.mark.parametrize(
    ("folders", "found"),
    [
        (set(), "no split folders"),
        ({"train"}, "train/"),
        ({"val", "test"}, "val/, test/"),
        ({"trainA", "trainB", "testA"}, "trainA/, trainB/, testA/"),
        (
            {"train", "val", "trainA", "trainB", "testA", "testB"},
            "train/, val/, trainA/, trainB/, testA/, testB/",
        ),
        ({"train", "val", "extra"}, "train/, val/, extra/"),
    ],
)
def test_other_folder_sets_are_refused_saying_what_was_found_and_expected(folders, found):
    with pytest.raises(PipelineError) as exc:
        detect_layout(folders)
    assert f"holds {found}; expected train/ with val/ and/or test/" in one_line(exc)
    assert "all of trainA/, trainB/, testA/, testB/" in str(exc.value)


@pytest.mark.parametrize("fmt", ["zip", "tar"])
@pytest.mark.parametrize(
    ("files", "found"),
    [
        (["train/1.jpg"], "train/"),
        (["train/1.jpg", "val/1.jpg", "trainA/1.jpg"], "train/, val/, trainA/"),
        (["trainA/1.jpg", "trainB/1.jpg", "testB/1.jpg"], "trainA/, trainB/, testB/"),
    ],
)
def test_an_archive_of_no_known_layout_is_refused_whole(tmp_path, fmt, files, found):
    names = [f"data/{name}" for name in files]
    if fmt == "zip":
        archive = make_zip(tmp_path / "a.zip", [zip_member(name, b"x") for name in names])
    else:
        archive = make_tar(tmp_path / "a.tar.gz", [tar_member(name, data=b"x") for name in names])
    with pytest.raises(PipelineError) as exc:
        check_archive(archive)
    assert re.search(
        rf"has an unexpected layout \(data/ holds {found}; expected .*\); refused", one_line(exc)
    )


@pytest.mark.parametrize("fmt", ["zip", "tar"])
def test_an_empty_archive_has_no_dataset_folder(tmp_path, fmt):
    if fmt == "zip":
        archive = make_zip(tmp_path / "empty.zip", [])
        assert archive.read_bytes().startswith(b"PK\x05\x06") and sniff_archive(archive) == "zip"
    else:
        archive = make_tar(tmp_path / "empty.tar.gz", [])
    with pytest.raises(PipelineError, match=r"unexpected layout .*holds no dataset folder"):
        check_archive(archive)


def test_macos_junk_is_skipped_and_counted(tmp_path):
    junk = [
        zip_member("__MACOSX/", None),
        zip_member("__MACOSX/horse2zebra/trainA/._n0238_1.jpg", b"resource fork"),
        zip_member("horse2zebra/.DS_Store", b"finder"),
        zip_member("horse2zebra/trainA/._n0238_1.jpg", b"resource fork"),
    ]
    archive = make_zip(tmp_path / "horse2zebra.zip", [*GOOD_ZIP, *junk])
    checked = check_archive(archive)
    assert checked.skipped == 4 and checked.layout == "unpaired"
    assert len(checked.members) == len(GOOD_ZIP) and len(checked.entries) == len(GOOD_ZIP) + 4
    extract_archive(checked, tmp_path / "out")
    assert sorted(contents(tmp_path / "out")) == sorted(name for name, data, *_ in GOOD_ZIP if data)

    tar = make_tar(
        tmp_path / "a.tar.gz",
        [
            *GOOD,
            tar_member("__MACOSX/cityscapes/train/._1.jpg", data=b"fork"),
            tar_member("cityscapes/.DS_Store"),
        ],
    )
    checked = check_archive(tar)
    assert checked.skipped == 2
    extract_archive(checked, tmp_path / "tar-out")
    assert sorted(contents(tmp_path / "tar-out")) == ["cityscapes/train/1.jpg", "cityscapes/val/1.jpg"]


@pytest.mark.parametrize(
    "junk",
    [
        zip_member("__MACOSX/._evil", b"/etc/passwd", mode=stat.S_IFLNK | 0o777),
        zip_member("__MACOSX/../../evil", b"x"),
        zip_member("/__MACOSX/._evil", b"x"),
    ],
)
def test_junk_must_still_be_safe(tmp_path, junk):
    archive = make_zip(tmp_path / "a.zip", [*GOOD_ZIP, junk])
    with pytest.raises(PipelineError, match="unsafe member"):
        check_archive(archive)


# --- hostile tars -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("member", "reason"),
    [
        (tar_member("../evil", data=b"x"), r"climbs out with \.\."),
        (tar_member("cityscapes/train/../../evil", data=b"x"), r"climbs out with \.\."),
        (tar_member("/etc/evil", data=b"x"), "absolute"),
        (tar_member("/cityscapes/../cityscapes/train", tarfile.DIRTYPE), "absolute"),
        (tar_member("cityscapes\\train\\2.jpg", data=b"x"), "backslash"),
        (tar_member("C:/cityscapes/train/2.jpg", data=b"x"), "drive letter"),
        (tar_member("cityscapes/train/2.jpg", tarfile.SYMTYPE, linkname="1.jpg"), "symbolic link"),
        (tar_member("cityscapes/train/2.jpg", tarfile.SYMTYPE, linkname="/etc/passwd"), "symbolic link"),
        (tar_member("cityscapes/train/2", tarfile.LNKTYPE, linkname="cityscapes/train/1.jpg"), "hard link"),
        (tar_member("cityscapes/train/2.jpg", tarfile.CHRTYPE), "device or a fifo"),
        (tar_member("cityscapes/train/2.jpg", tarfile.BLKTYPE), "device or a fifo"),
        (tar_member("cityscapes/train/2.jpg", tarfile.FIFOTYPE), "device or a fifo"),
        (tar_member("cityscapes/train/2.jpg", tarfile.CONTTYPE, data=b"x"), "not a regular file"),
        (tar_member("cityscapes/evil.sh", data=b"x"), "not directly in a split folder cityscapes/<split>/"),
        (tar_member("elsewhere/1.jpg", data=b"x"), "not directly in a split folder"),
        (tar_member("cityscapes/train/sub/1.jpg", data=b"x"), "not directly in a split folder"),
        (tar_member("other/train/1.jpg", data=b"x"), "outside the dataset folder cityscapes/"),
        (tar_member("cityscapes/extra", tarfile.DIRTYPE), "folder other than"),
        (tar_member("cityscapes/train/evil.sh", data=b"x"), r"not an image \(\.jpg, \.jpeg, \.png\)"),
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
    assert (checked.dataset, checked.splits, checked.layout) == ("cityscapes", ("train", "val"), "paired")
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
    assert check_archive(pix2pix_archive).sha256 == hashlib.sha256(pix2pix_archive.read_bytes()).hexdigest()


# --- hostile zips -------------------------------------------------------------------------------------


def with_member(*member: tuple):
    def build(path: Path) -> Path:
        return make_zip(path, [*GOOD_ZIP, *member])

    return build


def huge_declared_size(path: Path) -> Path:
    # Stored, so the ratio is 1: only the cap on the sum of declared sizes stands in its way.
    make_zip(path, [*GOOD_ZIP, zip_member("horse2zebra/trainA/big.jpg", b"x" * 100)])
    return patch_zip(path, "horse2zebra/trainA/big.jpg", file_size=0xFFFF0000, compress_size=0xFFFF0000)


def high_ratio(path: Path) -> Path:
    # 16 MiB of zeros deflate to ~16 kB: well under the unpacked cap, 1000 times over the ratio cap.
    return make_zip(
        path, [*GOOD_ZIP, zip_member("horse2zebra/trainA/zeros.jpg", bytes(16 << 20), zipfile.ZIP_DEFLATED)]
    )


def lying_size(path: Path) -> Path:
    # 4000 bytes inside, 10 declared, and the CRC of those 10: zipfile alone would cut the member at 10
    # bytes and find nothing wrong.
    data = b"abcd" * 1000
    make_zip(path, [*GOOD_ZIP, zip_member("horse2zebra/trainA/liar.jpg", data, zipfile.ZIP_DEFLATED)])
    return patch_zip(path, "horse2zebra/trainA/liar.jpg", file_size=10, CRC=zlib.crc32(data[:10]))


def lying_size_true_crc(path: Path) -> Path:
    data = b"abcd" * 1000
    make_zip(path, [*GOOD_ZIP, zip_member("horse2zebra/trainA/liar.jpg", data, zipfile.ZIP_DEFLATED)])
    return patch_zip(path, "horse2zebra/trainA/liar.jpg", file_size=10)


def encrypted(path: Path) -> Path:
    make_zip(path, [*GOOD_ZIP, zip_member("horse2zebra/trainA/secret.jpg", b"x" * 12)])
    return patch_zip(path, "horse2zebra/trainA/secret.jpg", flag_bits=0x1)


def overlapping(path: Path) -> Path:
    # A second directory entry pointing at the first member's data: the non-recursive zip bomb's trick.
    make_zip(path, [*GOOD_ZIP, zip_member("horse2zebra/trainA/copy.jpg", b"jpeg bytes 1")])
    with zipfile.ZipFile(path) as archive:
        first = archive.getinfo("horse2zebra/trainA/n0238_1.jpg").header_offset
    return patch_zip(path, "horse2zebra/trainA/copy.jpg", header_offset=first)


HOSTILE_ZIPS = [
    (with_member(zip_member("../evil", b"x")), "../evil", r"climbs out with \.\."),
    (with_member(zip_member("horse2zebra/trainA/../../../evil.jpg", b"x")), "../evil", r"climbs out"),
    (with_member(zip_member("/etc/x", b"x")), "/etc/x", "absolute"),
    (with_member(zip_member("horse2zebra\\trainA\\1.jpg", b"x")), "trainA", "backslash"),
    (with_member(zip_member("C:/horse2zebra/trainA/1.jpg", b"x")), "C:/", "drive letter"),
    (
        with_member(zip_member("horse2zebra/trainA/link.jpg", b"/etc/passwd", mode=stat.S_IFLNK | 0o777)),
        "link.jpg",
        "symbolic link",
    ),
    (
        with_member(zip_member("horse2zebra/trainA/fifo.jpg", b"", mode=stat.S_IFIFO | 0o644)),
        "fifo.jpg",
        "not a regular file or folder",
    ),
    (huge_declared_size, "big.jpg", f"unpacks to more than {MAX_BYTES >> 20} MiB"),
    (high_ratio, "zeros.jpg", "more than 100 times as many"),
    (lying_size, "liar.jpg", "inflates to more than the 10 bytes it declares"),
    (lying_size_true_crc, "liar.jpg", "inflates to more than the 10 bytes it declares"),
    (
        with_member(zip_member("horse2zebra/trainA/n0238_1.jpg", b"replacement")),
        "n0238_1.jpg",
        "appears twice",
    ),
    (encrypted, "secret.jpg", "encrypted"),
    (
        with_member(zip_member("horse2zebra/trainA/b.jpg", b"x" * 100, zipfile.ZIP_BZIP2)),
        "b.jpg",
        "compression method 12",
    ),
    (overlapping, "copy.jpg", "overlaps"),
    (with_member(zip_member("horse2zebra/trainA/a b.jpg", b"x")), "a b.jpg", "name is not plain"),
    (with_member(zip_member("horse2zebra/notes.txt", b"x")), "notes.txt", "not directly in a split folder"),
    (with_member(zip_member("zebra2horse/trainA/1.jpg", b"x")), "zebra2horse", "outside the dataset folder"),
]


@pytest.mark.parametrize(("build", "name", "reason"), HOSTILE_ZIPS, ids=[r for _, _, r in HOSTILE_ZIPS])
def test_hostile_zips_are_refused_naming_the_member_and_nothing_is_written(tmp_path, build, name, reason):
    archive = build(tmp_path / "hostile.zip")
    dest = tmp_path / "out"
    with pytest.raises(PipelineError) as exc:
        extract_archive(check_archive(archive), dest)
    message = one_line(exc)
    assert re.search(
        rf"holds an unsafe member '[^']*{re.escape(name)}[^']*' \(.*{reason}.*\); refused", message
    )
    assert nothing_written(dest)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hostile.zip"]


@pytest.mark.parametrize("build", [huge_declared_size, high_ratio])
def test_zip_bombs_are_refused_before_anything_is_inflated(tmp_path, build, monkeypatch):
    archive = build(tmp_path / "bomb.zip")

    def no_inflating(*args, **kwargs):
        raise AssertionError("a member was opened")

    monkeypatch.setattr(zipfile.ZipFile, "open", no_inflating)
    with pytest.raises(PipelineError, match="unsafe member"):
        check_archive(archive)


def test_zip_caps_on_member_count_and_unpacked_size(tmp_path):
    archive = make_zip(tmp_path / "a.zip", GOOD_ZIP)
    assert len(check_archive(archive).entries) == len(GOOD_ZIP)
    with pytest.raises(PipelineError, match=f"is unsafe \\(it has more than {len(GOOD_ZIP) - 1} members"):
        check_archive(archive, max_members=len(GOOD_ZIP) - 1)
    with pytest.raises(PipelineError, match="unpacks to more than"):
        check_archive(archive, max_bytes=20)


def test_a_zip_swapped_after_the_check_is_refused_before_anything_is_written(tmp_path):
    archive = make_zip(tmp_path / "a.zip", GOOD_ZIP)
    checked = check_archive(archive)
    make_zip(archive, [*GOOD_ZIP[:-1], zip_member(GOOD_ZIP[-1][0], b"other bytes")])
    with pytest.raises(PipelineError, match="sha256 changed since it was checked"):
        extract_archive(checked, tmp_path / "out")
    assert nothing_written(tmp_path / "out")


def test_a_zip_is_written_only_inside_the_destination_and_never_over_a_file(tmp_path):
    archive = make_zip(tmp_path / "a.zip", GOOD_ZIP)
    checked = check_archive(archive)
    extract_archive(checked, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.zip", "out"]
    with pytest.raises(PipelineError, match="a file is already at its path"):
        extract_archive(checked, tmp_path / "out")


def test_truncated_or_damaged_zips_are_corrupt_not_unsafe(tmp_path):
    good = make_zip(
        tmp_path / "a.zip",
        [*GOOD_ZIP, zip_member("horse2zebra/trainA/text.jpg", b"some text " * 500, zipfile.ZIP_DEFLATED)],
    )
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(PipelineError, match=r"truncated\.zip is truncated or corrupt \(.*\): delete it"):
        check_archive(truncated)

    damaged = bytearray(good.read_bytes())
    with zipfile.ZipFile(good) as archive:
        info = archive.getinfo("horse2zebra/trainA/text.jpg")
    data_start = info.header_offset + 30 + len(info.filename)
    damaged[data_start + 5 : data_start + 15] = b"\xff" * 10
    (tmp_path / "damaged.zip").write_bytes(bytes(damaged))
    with pytest.raises(PipelineError, match=r"truncated or corrupt \(member 'horse2zebra/trainA/text\.jpg'"):
        check_archive(tmp_path / "damaged.zip")


def test_sniff_tells_zip_from_tar_and_from_an_html_page(tmp_path):
    assert sniff_archive(make_zip(tmp_path / "a.zip", GOOD_ZIP)) == "zip"
    assert sniff_archive(make_tar(tmp_path / "a.tar.gz", GOOD)) == "gz"
    page = tmp_path / "page.zip"
    page.write_bytes(b"<!DOCTYPE html><html>Not Found</html>")
    with pytest.raises(PipelineError, match=r"is an HTML page .*not a tar archive or a zip"):
        sniff_archive(page)
