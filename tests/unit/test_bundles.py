"""Archive validation: every hostile archive is refused with a reason naming the problem,
and ordinary bundles (nested folders, internal links, ``./`` names) pass.

Each archive is built here, in tmp_path, with tarfile or raw bytes.
"""

from __future__ import annotations

import gzip
import io
import os
import tarfile
import time
import tracemalloc
import zlib
from pathlib import Path

import pytest

from modaclouds_batch.jobs.bundles import (
    ArchiveLimits,
    ArchiveRejected,
    ArchiveSource,
    pack_directory,
    validate_archive,
    validate_archives,
    write_script_bundle,
)

BUNDLES = Path(__file__).resolve().parents[2] / "bundles"
SCRIPT = b"#!/bin/sh\necho hello\n"
MiB = 1024 * 1024


# --- building archives -------------------------------------------------------------------


def entry(name, kind=tarfile.REGTYPE, data=b"", linkname="", mode=None, **attrs):
    """One member: a TarInfo and its data."""
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.size = len(data) if kind in (tarfile.REGTYPE, tarfile.AREGTYPE) else 0
    info.mode = mode if mode is not None else (0o755 if kind == tarfile.DIRTYPE else 0o644)
    for key, value in attrs.items():
        setattr(info, key, value)
    return info, data


def run_sh(mode=0o755):
    return entry("run.sh", data=SCRIPT, mode=mode)


def tar_bytes(*entries, fmt=tarfile.PAX_FORMAT, **tar_kwargs) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt, **tar_kwargs) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if data else None)
    return buf.getvalue()


def gz(tmp_path, raw: bytes, name="archive.tar.gz") -> Path:
    path = tmp_path / name
    path.write_bytes(gzip.compress(raw))
    return path


def archive(tmp_path, *entries, **kwargs) -> Path:
    return gz(tmp_path, tar_bytes(*entries, **kwargs))


def validate(path, limits=ArchiveLimits(), require_run_sh=True, field="job-bundle"):
    return validate_archive(path, field=field, limits=limits, require_run_sh=require_run_sh)


def refused(path, **kwargs) -> ArchiveRejected:
    with pytest.raises(ArchiveRejected) as caught:
        validate(path, **kwargs)
    exc = caught.value
    assert exc.field == kwargs.get("field", "job-bundle")
    assert exc.reason.startswith(exc.field)
    assert str(exc) == exc.reason
    return exc


def header_block(info: tarfile.TarInfo) -> bytes:
    return info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape")


def pad(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % tarfile.BLOCKSIZE)


# --- paths ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["/etc/evil", "//etc/evil"])
def test_absolute_path_is_refused(tmp_path, name):
    exc = refused(archive(tmp_path, run_sh(), entry(name, data=b"x")))
    assert "absolute" in exc.reason and "etc/evil" in exc.reason
    assert not exc.too_large


def test_dot_dot_is_refused(tmp_path):
    exc = refused(archive(tmp_path, run_sh(), entry("../x", data=b"x")))
    assert "'../x'" in exc.reason and "'..'" in exc.reason


def test_nested_dot_dot_is_refused_even_if_it_would_stay_inside(tmp_path):
    exc = refused(archive(tmp_path, run_sh(), entry("a/../../x", data=b"x")))
    assert "'a/../../x'" in exc.reason and "'..'" in exc.reason
    exc = refused(archive(tmp_path, run_sh(), entry("a/../b", data=b"x")))
    assert "'a/../b'" in exc.reason


def test_pax_path_is_checked_not_the_ustar_name(tmp_path):
    info, data = entry("harmless.txt", data=b"x")
    info.pax_headers = {"path": "/etc/cron.d/evil"}
    exc = refused(archive(tmp_path, run_sh(), (info, data)))
    assert "/etc/cron.d/evil" in exc.reason and "absolute" in exc.reason


def test_gnu_long_name_is_checked_on_the_final_name(tmp_path):
    name = "d" * 120 + "/../../escape"
    exc = refused(archive(tmp_path, run_sh(), entry(name, data=b"x"), fmt=tarfile.GNU_FORMAT))
    assert "escape" in exc.reason and "'..'" in exc.reason


def test_nul_in_a_pax_name_is_refused(tmp_path):
    info, data = entry("x", data=b"x")
    info.pax_headers = {"path": "ok.txt\0/../../etc/passwd"}
    exc = refused(archive(tmp_path, run_sh(), (info, data)))
    assert "NUL" in exc.reason


def test_backslash_in_a_name_is_refused(tmp_path):
    exc = refused(archive(tmp_path, run_sh(), entry("..\\..\\windows.txt", data=b"x")))
    assert "backslash" in exc.reason and "windows.txt" in exc.reason


def test_control_character_in_a_name_is_refused(tmp_path):
    exc = refused(archive(tmp_path, run_sh(), entry("line\nbreak.txt", data=b"x")))
    assert "control character" in exc.reason and "line\\nbreak.txt" in exc.reason


def test_file_with_an_empty_name_is_refused(tmp_path):
    exc = refused(archive(tmp_path, run_sh(), entry("./", data=b"x")))
    assert "ends with '/'" in exc.reason or "empty name" in exc.reason


def test_overlong_names_are_refused(tmp_path):
    exc = refused(archive(tmp_path, run_sh(), entry("c" * 300, data=b"x")))
    assert "component longer than 255 bytes" in exc.reason
    exc = refused(archive(tmp_path, run_sh(), entry("/".join(["d" * 200] * 25), data=b"x")))
    assert "longer than 4096 bytes" in exc.reason


def test_duplicate_member_is_refused(tmp_path):
    exc = refused(archive(tmp_path, run_sh(), entry("data.txt", data=b"a"), entry("./data.txt", data=b"b")))
    assert "'./data.txt'" in exc.reason and "appears twice" in exc.reason


# --- links -----------------------------------------------------------------------------------


def test_symlink_to_an_absolute_path_is_refused(tmp_path):
    exc = refused(archive(tmp_path, run_sh(), entry("passwd", tarfile.SYMTYPE, linkname="/etc/passwd")))
    assert "'passwd'" in exc.reason and "'/etc/passwd'" in exc.reason and "outside" in exc.reason


def test_relative_symlink_leaving_the_archive_is_refused(tmp_path):
    exc = refused(archive(tmp_path, run_sh(), entry("a", tarfile.SYMTYPE, linkname="../..")))
    assert "symlink 'a'" in exc.reason and "'../..'" in exc.reason and "outside" in exc.reason


def test_symlink_escaping_only_through_another_symlink_is_refused(tmp_path):
    # Lexically q -> x/b/.. is x; but x/b is itself a link to the root, so q is its parent.
    exc = refused(archive(
        tmp_path,
        run_sh(),
        entry("q", tarfile.SYMTYPE, linkname="x/b/.."),
        entry("x", tarfile.DIRTYPE),
        entry("x/b", tarfile.SYMTYPE, linkname=".."),
    ))
    assert "symlink 'q'" in exc.reason and "outside" in exc.reason


def test_symlink_through_an_absolute_symlink_is_refused(tmp_path):
    exc = refused(archive(tmp_path, run_sh(), entry("etc", tarfile.SYMTYPE, linkname="/etc")))
    assert "'/etc'" in exc.reason


def test_symlink_loop_is_refused(tmp_path):
    exc = refused(archive(
        tmp_path, run_sh(), entry("a", tarfile.SYMTYPE, linkname="b"), entry("b", tarfile.SYMTYPE, linkname="a")
    ))
    assert "loop" in exc.reason


def test_member_below_a_symlink_is_refused(tmp_path):
    exc = refused(archive(
        tmp_path,
        run_sh(),
        entry("sub", tarfile.DIRTYPE),
        entry("l", tarfile.SYMTYPE, linkname="sub"),
        entry("l/file", data=b"x"),
    ))
    assert "'l/file'" in exc.reason and "below 'l'" in exc.reason and "symlink" in exc.reason


def test_file_replaced_by_a_link_after_members_below_it_is_refused(tmp_path):
    exc = refused(archive(
        tmp_path, run_sh(), entry("d/file", data=b"x"), entry("d", tarfile.SYMTYPE, linkname="elsewhere")
    ))
    assert "'d'" in exc.reason and "below it as a folder" in exc.reason


def test_hard_link_to_outside_is_refused(tmp_path):
    exc = refused(archive(tmp_path, run_sh(), entry("h", tarfile.LNKTYPE, linkname="../x")))
    assert "hard link 'h'" in exc.reason and "'..'" in exc.reason


def test_hard_link_to_an_absolute_path_is_refused(tmp_path):
    exc = refused(archive(tmp_path, run_sh(), entry("h", tarfile.LNKTYPE, linkname="/etc/shadow")))
    assert "hard link 'h'" in exc.reason and "absolute" in exc.reason


def test_hard_link_to_a_later_member_is_refused(tmp_path):
    exc = refused(archive(
        tmp_path, run_sh(), entry("h", tarfile.LNKTYPE, linkname="later"), entry("later", data=b"x")
    ))
    assert "hard link 'h'" in exc.reason and "'later'" in exc.reason and "earlier" in exc.reason


def test_hard_link_to_a_folder_is_refused(tmp_path):
    exc = refused(archive(
        tmp_path, run_sh(), entry("d", tarfile.DIRTYPE), entry("h", tarfile.LNKTYPE, linkname="d")
    ))
    assert "hard link 'h'" in exc.reason and "not a regular file" in exc.reason


# --- member types ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind, what",
    [(tarfile.CHRTYPE, "character device"), (tarfile.BLKTYPE, "block device"), (tarfile.FIFOTYPE, "fifo")],
)
def test_devices_and_fifos_are_refused(tmp_path, kind, what):
    exc = refused(archive(tmp_path, run_sh(), entry("special", kind, devmajor=1, devminor=3)))
    assert "'special'" in exc.reason and what in exc.reason


def test_unknown_member_type_is_refused(tmp_path):
    exc = refused(archive(tmp_path, run_sh(), entry("label", b"V")))
    assert "'label'" in exc.reason and "type b'V'" in exc.reason


def test_folder_header_declaring_data_is_refused(tmp_path):
    info, _ = entry("d", tarfile.DIRTYPE)
    info.size = 512  # tarfile reads no data for a folder; another tar might skip 512 bytes
    raw = header_block(run_sh()[0]) + pad(SCRIPT) + header_block(info) + b"\0" * 1024
    exc = refused(gz(tmp_path, raw))
    assert "'d'" in exc.reason and "512 bytes" in exc.reason


def test_old_gnu_sparse_member_is_refused(tmp_path):
    exc = refused(archive(tmp_path, run_sh(), entry("holes", tarfile.GNUTYPE_SPARSE), fmt=tarfile.GNU_FORMAT))
    assert "sparse" in exc.reason and "holes" in exc.reason


@pytest.mark.parametrize(
    "pax",
    [
        {"GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.name": "holes",
         "GNU.sparse.realsize": str(1 << 40)},
        {"GNU.sparse.map": "0,10", "GNU.sparse.size": str(1 << 40)},
        {"GNU.sparse.realsize": str(1 << 40)},
    ],
    ids=["pax-1.0", "pax-0.1", "realsize-only"],
)
def test_pax_sparse_members_are_refused(tmp_path, pax):
    info, data = entry("GNUSparseFile.0/holes", data=b"\n" * 10)
    info.pax_headers = pax
    exc = refused(archive(tmp_path, run_sh(), (info, data)))
    assert "sparse" in exc.reason


def test_global_pax_header_renaming_members_is_refused(tmp_path):
    exc = refused(archive(tmp_path, run_sh(), pax_headers={"path": "/etc/evil"}))
    assert "global pax header" in exc.reason and "'path'" in exc.reason


def test_oversized_pax_header_is_refused_before_it_is_read(tmp_path):
    info, data = entry("x", data=b"x")
    info.pax_headers = {"comment": "z" * (2 * MiB)}
    exc = refused(archive(tmp_path, run_sh(), (info, data)))
    assert exc.too_large and "extended header" in exc.reason


def test_setuid_is_accepted_and_counted_for_the_launcher_to_strip(tmp_path):
    summary = validate(archive(
        tmp_path, run_sh(mode=0o4755), entry("shared", tarfile.DIRTYPE, mode=0o2775), entry("plain", data=b"x")
    ))
    assert summary.special_bits_stripped == 2 and summary.has_run_sh


# --- run.sh ------------------------------------------------------------------------------------


def test_bundle_without_run_sh_is_refused(tmp_path):
    exc = refused(archive(tmp_path, entry("start.sh", data=SCRIPT), entry("sub/run.sh", data=SCRIPT)))
    assert "no run.sh at its root" in exc.reason and "tar czf" in exc.reason


def test_input_without_run_sh_is_fine(tmp_path):
    summary = validate(archive(tmp_path, entry("data.txt", data=b"words")), require_run_sh=False, field="job-input")
    assert summary.members == 1 and not summary.has_run_sh


def test_run_sh_as_a_symlink_is_refused(tmp_path):
    exc = refused(archive(tmp_path, entry("real.sh", data=SCRIPT), entry("run.sh", tarfile.SYMTYPE, linkname="real.sh")))
    assert "run.sh as a symlink" in exc.reason and "regular file" in exc.reason


def test_run_sh_as_a_folder_is_refused(tmp_path):
    exc = refused(archive(tmp_path, entry("run.sh", tarfile.DIRTYPE), entry("run.sh/x", data=SCRIPT)))
    assert "run.sh as a folder" in exc.reason


def test_run_sh_twice_is_refused(tmp_path):
    exc = refused(archive(tmp_path, run_sh(), entry("./run.sh", data=b"#!/bin/sh\nrm -rf ~\n")))
    assert "'./run.sh'" in exc.reason and "appears twice" in exc.reason


# --- not gzip, not tar, truncated ------------------------------------------------------------


def test_not_gzip_is_refused(tmp_path):
    path = tmp_path / "b.tar.gz"
    path.write_bytes(b"just some text, not an archive")
    exc = refused(path)
    assert "not a gzip file" in exc.reason and not exc.too_large


@pytest.mark.parametrize(
    "head, hint",
    [(b"PK\x03\x04" + b"\0" * 100, "zip"), (b"BZh91AY", "bzip2"), (None, "uncompressed tar")],
)
def test_not_gzip_says_what_it_looks_like(tmp_path, head, hint):
    path = tmp_path / "b.tar.gz"
    path.write_bytes(head if head is not None else tar_bytes(run_sh()))
    assert hint in refused(path).reason


def test_empty_upload_is_refused(tmp_path):
    path = tmp_path / "b.tar.gz"
    path.write_bytes(b"")
    assert "is empty" in refused(path).reason


@pytest.mark.parametrize("payload", [b"hello" * 1000, b""], ids=["text", "nothing"])
def test_gzip_that_is_not_tar_is_refused(tmp_path, payload):
    exc = refused(gz(tmp_path, payload))
    assert "does not hold a tar archive" in exc.reason


def test_truncated_gzip_is_refused(tmp_path):
    path = archive(tmp_path, run_sh(), entry("noise", data=os.urandom(64 * 1024)))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert "truncated" in refused(path).reason


def test_tar_truncated_inside_a_member_is_refused(tmp_path):
    raw = tar_bytes(run_sh(), entry("noise", data=os.urandom(10_000)))
    exc = refused(gz(tmp_path, raw[:5000]))
    assert "truncated" in exc.reason


def test_tar_without_end_of_archive_block_is_refused(tmp_path):
    raw = header_block(run_sh()[0]) + pad(SCRIPT)  # a whole member, then nothing
    exc = refused(gz(tmp_path, raw))
    assert "end-of-archive" in exc.reason


def test_corrupt_header_in_the_middle_is_refused(tmp_path):
    raw = header_block(run_sh()[0]) + pad(SCRIPT) + b"garbage!" * 64 + b"\0" * 1024
    exc = refused(gz(tmp_path, raw))
    assert "end-of-archive" in exc.reason


def test_member_hidden_after_a_lone_zero_block_is_refused(tmp_path):
    # tarfile stops at the first zero block; GNU tar warns "A lone zero block" and reads on.
    evil, data = entry("hidden.sh", data=b"#!/bin/sh\necho gotcha\n")
    raw = header_block(run_sh()[0]) + pad(SCRIPT) + b"\0" * 512 + header_block(evil) + pad(data) + b"\0" * 1024
    exc = refused(gz(tmp_path, raw))
    assert "after tar's end-of-archive block" in exc.reason


def test_concatenated_gzip_members_are_read_like_gunzip_does(tmp_path):
    raw = tar_bytes(run_sh(), entry("data.txt", data=b"x" * 5000))
    path = tmp_path / "b.tar.gz"
    path.write_bytes(gzip.compress(raw[:2048]) + gzip.compress(raw[2048:]))
    assert validate(path).members == 2


# --- limits and bombs ------------------------------------------------------------------------


def test_too_many_members_is_refused_with_413(tmp_path):
    path = archive(tmp_path, run_sh(), *(entry(f"f{i}", data=b"x") for i in range(5)))
    exc = refused(path, limits=ArchiveLimits(max_members=5))
    assert exc.too_large and "more than 5 members" in exc.reason
    assert validate(path, limits=ArchiveLimits(max_members=6)).members == 6


def test_declared_size_bomb_is_refused_before_reading_data(tmp_path):
    info, _ = entry("huge.bin")
    info.size = 1 << 40  # a terabyte promised; nothing follows
    raw = header_block(run_sh()[0]) + pad(SCRIPT) + info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
    started = time.monotonic()
    exc = refused(gz(tmp_path, raw), limits=ArchiveLimits(max_unpacked_bytes=10 * MiB))
    assert time.monotonic() - started < 1
    assert exc.too_large and "'huge.bin'" in exc.reason and str(10 * MiB) in exc.reason


def test_members_adding_up_past_the_limit_are_refused(tmp_path):
    path = archive(tmp_path, run_sh(), entry("a", data=b"a" * 600), entry("b", data=b"b" * 600))
    exc = refused(path, limits=ArchiveLimits(max_unpacked_bytes=1000))
    assert exc.too_large and "'b'" in exc.reason and "1000 bytes" in exc.reason


def _write_zeros_gzip(path: Path, prefix: bytes, megabytes: int) -> None:
    """prefix, then megabytes of zeros, gzip'd a chunk at a time (never all in memory)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)  # 31: gzip framing
    zeros = bytes(MiB)
    with open(path, "wb") as out:
        out.write(compressor.compress(prefix))
        for _ in range(megabytes):
            out.write(compressor.compress(zeros))
        out.write(compressor.flush())


@pytest.mark.parametrize("prefix", ["nothing", "a valid bundle"])
def test_real_decompression_bomb_is_refused_fast_and_in_little_memory(tmp_path, prefix):
    # 200 MB of zeros compress to ~200 KB: past the end-of-archive block, or as the whole stream.
    path = tmp_path / "bomb.tar.gz"
    _write_zeros_gzip(path, tar_bytes(run_sh()) if prefix == "a valid bundle" else b"", 200)
    assert path.stat().st_size < 400 * 1024

    tracemalloc.start()
    started = time.monotonic()
    try:
        exc = refused(path, limits=ArchiveLimits(max_unpacked_bytes=10 * MiB, max_members=100))
        elapsed = time.monotonic() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert exc.too_large and "inflates to more than" in exc.reason and "limit" in exc.reason
    assert elapsed < 5, elapsed
    assert peak < 16 * MiB, peak


def test_zeros_past_the_end_within_the_limit_are_fine(tmp_path):
    path = tmp_path / "padded.tar.gz"
    _write_zeros_gzip(path, tar_bytes(run_sh()), 1)  # tape-style padding
    assert validate(path).has_run_sh


# --- ordinary bundles pass -------------------------------------------------------------------


def test_normal_bundle_passes_with_a_summary(tmp_path):
    summary = validate(archive(tmp_path, run_sh(), entry("README", data=b"read me\n")))
    assert summary.members == 2
    assert summary.unpacked_bytes == len(SCRIPT) + 8
    assert summary.has_run_sh and summary.run_sh_executable
    assert summary.special_bits_stripped == 0
    assert summary.inflated_bytes >= 4 * 512


def test_run_sh_without_exec_bit_passes_and_says_so(tmp_path):
    summary = validate(archive(tmp_path, run_sh(mode=0o644)))
    assert summary.has_run_sh and not summary.run_sh_executable


def test_nested_folders_pass(tmp_path):
    summary = validate(archive(
        tmp_path,
        entry("lib", tarfile.DIRTYPE),
        entry("lib/pkg", tarfile.DIRTYPE),
        entry("lib/pkg/mod.py", data=b"x = 1\n"),
        entry("data/deep/er/file.txt", data=b"words"),  # folders implied, not listed
        entry("data/deep", tarfile.DIRTYPE),  # and listed afterwards: fine
        run_sh(),
    ))
    assert summary.members == 6 and summary.has_run_sh


def test_internal_symlinks_pass(tmp_path):
    summary = validate(archive(
        tmp_path,
        run_sh(),
        entry("lib/v1/tool", data=b"#!/bin/sh\n", mode=0o755),
        entry("lib/current", tarfile.SYMTYPE, linkname="v1"),
        entry("bin/tool", tarfile.SYMTYPE, linkname="../lib/current/tool"),
        entry("top", tarfile.SYMTYPE, linkname="."),
        entry("bin/up", tarfile.SYMTYPE, linkname=".."),
        entry("dangling", tarfile.SYMTYPE, linkname="not/there"),
        entry("copy", tarfile.LNKTYPE, linkname="lib/v1/tool"),
    ))
    assert summary.members == 8


def test_dot_slash_names_and_root_entry_pass(tmp_path):
    # What `tar czf b.tar.gz -C folder .` produces.
    folder = tmp_path / "folder"
    (folder / "sub").mkdir(parents=True)
    (folder / "run.sh").write_bytes(SCRIPT)
    (folder / "run.sh").chmod(0o755)
    (folder / "sub" / "data.txt").write_text("x")
    path = tmp_path / "b.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        tar.add(folder, arcname=".")
    summary = validate(path)
    assert summary.has_run_sh and summary.run_sh_executable and summary.members == 4


def test_git_archive_style_global_comment_passes(tmp_path):
    assert validate(archive(tmp_path, run_sh(), pax_headers={"comment": "3f2a1c"})).has_run_sh


def test_hard_linked_run_sh_passes(tmp_path):
    summary = validate(archive(tmp_path, entry("start.sh", data=SCRIPT, mode=0o755),
                               entry("run.sh", tarfile.LNKTYPE, linkname="start.sh")))
    assert summary.has_run_sh and summary.run_sh_executable


def test_empty_input_archive_passes(tmp_path):
    summary = validate(archive(tmp_path), require_run_sh=False, field="job-input")
    assert summary.members == 0


def test_validation_writes_nothing(tmp_path):
    path = archive(tmp_path, run_sh(), entry("/etc/evil", data=b"x"))
    before = sorted(p.name for p in tmp_path.rglob("*"))
    refused(path)
    validate(archive(tmp_path, run_sh(), entry("fine/file", data=b"x")))
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


# --- building bundles ------------------------------------------------------------------------


def members_of(path: Path) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(path, "r:gz") as tar:
        return {m.name: m for m in tar.getmembers()}


def test_script_text_becomes_an_executable_run_sh(tmp_path):
    dest = tmp_path / "bundle.tar.gz"
    write_script_bundle("echo legacy \"$@\"\r\necho done\r\n", dest)
    members = members_of(dest)
    assert list(members) == ["run.sh"] and members["run.sh"].mode == 0o755
    with tarfile.open(dest, "r:gz") as tar:
        assert tar.extractfile("run.sh").read() == b'echo legacy "$@"\necho done\n'
    assert validate(dest).run_sh_executable
    assert [p.name for p in tmp_path.iterdir()] == ["bundle.tar.gz"]


@pytest.mark.parametrize("name", ["hello", "python-wordcount", "fail", "sleeper"])
def test_example_bundles_pack_and_validate(tmp_path, name):
    dest = tmp_path / f"{name}.tar.gz"
    summary = pack_directory(BUNDLES / name, dest)
    assert summary.has_run_sh and summary.run_sh_executable and summary.special_bits_stripped == 0
    members = members_of(dest)
    assert "run.sh" in members and all(m.uid == 0 and m.uname == "" for m in members.values())


def test_pack_directory_keeps_layout_and_strips_special_bits(tmp_path):
    src = tmp_path / "src"
    (src / "lib").mkdir(parents=True)
    (src / "run.sh").write_bytes(SCRIPT)
    (src / "run.sh").chmod(0o4755)
    (src / "lib" / "x.py").write_text("x = 1\n")
    (src / "lib" / "link").symlink_to("x.py")
    dest = tmp_path / "out.tar.gz"
    pack_directory(src, dest)
    members = members_of(dest)
    assert set(members) == {"run.sh", "lib", "lib/x.py", "lib/link"}
    assert members["run.sh"].mode == 0o755 and members["lib/link"].issym()


def test_pack_directory_refuses_a_folder_without_run_sh(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "start.sh").write_bytes(SCRIPT)
    with pytest.raises(ArchiveRejected) as caught:
        pack_directory(tmp_path / "src", tmp_path / "out.tar.gz")
    assert "no run.sh" in caught.value.reason and "src" in caught.value.reason
    assert not (tmp_path / "out.tar.gz").exists()


def test_pack_directory_refuses_what_the_gateway_would_and_leaves_nothing(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "run.sh").write_bytes(SCRIPT)
    (src / "secrets").symlink_to("/etc/passwd")
    with pytest.raises(ArchiveRejected) as caught:
        pack_directory(src, tmp_path / "out.tar.gz")
    assert "'secrets'" in caught.value.reason
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_pack_directory_refuses_a_fifo(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "run.sh").write_bytes(SCRIPT)
    os.mkfifo(src / "pipe")
    with pytest.raises(ArchiveRejected) as caught:
        pack_directory(src, tmp_path / "out.tar.gz")
    assert "'pipe'" in caught.value.reason and "fifo" in caught.value.reason


def test_limits_must_not_be_negative():
    with pytest.raises(ValueError):
        ArchiveLimits(max_members=-1)



# --- packing mistakes caught with their fix -----------------------------------------------


def test_run_sh_with_windows_line_endings_is_refused_with_the_fix(tmp_path):
    path = archive(tmp_path, entry("run.sh", data=b"#!/bin/sh\r\necho hi\r\n", mode=0o755))
    exc = refused(path)
    assert "Windows line endings" in exc.reason and "sed -i 's/\\r$//' run.sh" in exc.reason


def test_crlf_further_down_a_data_file_is_not_run_sh_and_stays_allowed(tmp_path):
    path = archive(tmp_path, run_sh(), entry("data.csv", data=b"a,b\r\n1,2\r\n"))
    assert validate(path).has_run_sh
    assert validate(archive(tmp_path, entry("run.sh", data=b"\r\n", mode=0o644)), require_run_sh=False)


def test_run_sh_one_folder_down_is_refused_naming_the_tar_command(tmp_path):
    path = archive(tmp_path, entry("myjob", kind=tarfile.DIRTYPE), entry("myjob/run.sh", data=SCRIPT, mode=0o755))
    exc = refused(path)
    assert "found myjob/run.sh" in exc.reason and "tar czf bundle.tar.gz -C myjob ." in exc.reason


def test_an_input_archive_with_a_folder_holding_run_sh_is_fine(tmp_path):
    path = archive(tmp_path, entry("myjob/run.sh", data=SCRIPT))
    assert validate(path, require_run_sh=False, field="job-input").members == 1


# --- a job's archives as one tree -------------------------------------------------------------


def job_archives(tmp_path, bundle_entries, *inputs):
    """The bundle and inputs of one job, as the launcher unpacks them: bundle first."""
    sources = [ArchiveSource(gz(tmp_path, tar_bytes(run_sh(), *bundle_entries), "bundle.tar.gz"), "job-bundle", True)]
    for i, entries in enumerate(inputs):
        sources.append(ArchiveSource(gz(tmp_path, tar_bytes(*entries), f"input-{i}.tar.gz"), "job-input"))
    return sources


def refused_together(sources) -> ArchiveRejected:
    for source in sources:  # each one alone is fine: only the chain is the problem
        validate(source.path, require_run_sh=source.require_run_sh, field=source.field)
    with pytest.raises(ArchiveRejected) as caught:
        validate_archives(sources, limits=ArchiveLimits())
    return caught.value


def test_a_member_below_a_link_of_the_bundle_is_refused(tmp_path):
    exc = refused_together(job_archives(
        tmp_path, [entry("sub", tarfile.DIRTYPE), entry("d", tarfile.SYMTYPE, linkname="sub")],
        [entry("d/passwd", data=b"x")]))
    assert exc.field == "job-input"
    assert "'d/passwd' lies below 'd', which is a symlink (from job-bundle)" in exc.reason


def test_a_link_chain_across_archives_that_escapes_is_refused(tmp_path):
    # x/b -> .. stays inside the bundle; q -> x/b/.. stays inside the input alone (x/b is
    # not there); unpacked together, q is the folder above the job's working directory.
    exc = refused_together(job_archives(
        tmp_path, [entry("x", tarfile.DIRTYPE), entry("x/b", tarfile.SYMTYPE, linkname="..")],
        [entry("q", tarfile.SYMTYPE, linkname="x/b/..")]))
    assert exc.field == "job-input" and "'q'" in exc.reason and "outside" in exc.reason


def test_a_folder_over_a_link_of_the_bundle_is_refused(tmp_path):
    # GNU tar keeps an existing link to a folder when a folder member comes: what follows lands through it.
    exc = refused_together(job_archives(
        tmp_path, [entry("sub", tarfile.DIRTYPE), entry("d", tarfile.SYMTYPE, linkname="sub")],
        [entry("d", tarfile.DIRTYPE)]))
    assert "'d' is a folder, but it is a symlink (from job-bundle)" in exc.reason


def test_a_file_over_a_folder_of_the_bundle_is_refused(tmp_path):
    exc = refused_together(job_archives(tmp_path, [entry("lib/x.py", data=b"x")], [entry("lib", data=b"x")]))
    assert "'lib' is a file, but it is a folder (from job-bundle)" in exc.reason


def test_a_link_of_one_input_cannot_be_followed_by_the_next(tmp_path):
    exc = refused_together(job_archives(
        tmp_path, [entry("sub", tarfile.DIRTYPE)],
        [entry("e", tarfile.SYMTYPE, linkname="sub")], [entry("e/x", data=b"x")]))
    assert exc.field == "job-input" and "(from job-input)" in exc.reason


def test_inputs_may_replace_the_bundles_files_and_links_and_add_to_its_folders(tmp_path):
    sources = job_archives(
        tmp_path,
        [entry("data.txt", data=b"old"), entry("a", data=b"a"), entry("l", tarfile.SYMTYPE, linkname="a"),
         entry("sub/keep.txt", data=b"k")],
        [entry("data.txt", data=b"new"), entry("l", data=b"now a file"), entry("sub", tarfile.DIRTYPE),
         entry("sub/new.txt", data=b"n"), entry("m", tarfile.SYMTYPE, linkname="sub/keep.txt")],
        [entry("l2", tarfile.SYMTYPE, linkname="l")])
    summaries = validate_archives(sources, limits=ArchiveLimits())
    assert [s.symlinks for s in summaries] == [1, 1, 1]
    assert summaries[0].has_run_sh and not summaries[1].has_run_sh
