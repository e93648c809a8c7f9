"""The launcher, run locally: it is plain sh, and a tmp dir stands in for HTCondor's sandbox.

Each test builds a sandbox holding bundle.tar.gz (and maybe input.tar.gz and
arguments.sh), runs the launcher there as HTCondor would, and checks what the job's
owner sees: exit status, stdout/stderr, and output.tar.gz.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from modaclouds_batch.condor.submit_description import LAUNCHER, arguments_script
from modaclouds_batch.jobs.bundles import pack_directory

BUNDLES = Path(__file__).resolve().parents[2] / "bundles"
TRICKY_ARGS = ["-foo", "two words", "it's", 'say "hi"', "$HOME", "*", "back\\slash", "", "  padded  "]


def tar_gz(path: Path, files: dict[str, tuple[bytes, int]]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, (data, mode) in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))
    return path


def sandbox_with(tmp_path: Path, bundle: str | dict, input_files: dict | None = None,
                 arguments: list[str] | None = None) -> Path:
    """An HTCondor-like scratch dir: the bundle (a folder of bundles/ or files), input, arguments."""
    box = tmp_path / "sandbox"
    box.mkdir()
    if isinstance(bundle, str):
        pack_directory(BUNDLES / bundle, box / "bundle.tar.gz")
    else:
        tar_gz(box / "bundle.tar.gz", bundle)
    if input_files is not None:
        tar_gz(box / "input.tar.gz", input_files)
    if arguments is not None:
        (box / "arguments.sh").write_text(arguments_script(arguments))
    return box


def launch(box: Path, *args: str, new_session: bool = True, **kwargs) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODACLOUDS_BATCH_")}
    env["MODACLOUDS_BATCH_INPUT"] = "/stale/value/from/the/node"  # must not leak into the job
    return subprocess.Popen(
        [str(LAUNCHER), *args], cwd=box, env=env, start_new_session=new_session,
        stdout=open(box / "stdout.txt", "wb"), stderr=open(box / "stderr.txt", "wb"), **kwargs,
    )


def run(box: Path, *args: str, timeout: float = 30) -> tuple[int, str, str]:
    status = launch(box, *args).wait(timeout)
    return status, (box / "stdout.txt").read_text(), (box / "stderr.txt").read_text()


def output_files(box: Path) -> dict[str, bytes]:
    with tarfile.open(box / "output.tar.gz", "r:gz") as tar:
        return {os.path.normpath(m.name): tar.extractfile(m).read() for m in tar if m.isfile()}


def wait_for_text(path: Path, text: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while text not in path.read_text():
        assert time.monotonic() < deadline, f"{text!r} never appeared in {path.name}: {path.read_text()!r}"
        time.sleep(0.05)


def test_launcher_is_executable_posix_sh():
    assert os.access(LAUNCHER, os.X_OK)
    assert LAUNCHER.read_text().startswith("#!/bin/sh\n")
    subprocess.run(["dash", "-n", str(LAUNCHER)], check=True)


def test_hello_runs_with_the_contract_environment_and_its_output_comes_back(tmp_path):
    box = sandbox_with(tmp_path, "hello")
    status, out, err = run(box, "-foo", "two words")
    assert status == 0, err
    assert "hello from" in out and "  [-foo]\n  [two words]\n" in out
    assert f"MODACLOUDS_BATCH_OUTPUT={box}/output\n" in out
    assert f"MODACLOUDS_BATCH_SCRATCH_DIRECTORY={box}/scratch\n" in out
    assert "MODACLOUDS_BATCH_INPUT=(not set: no job-input)" in out
    assert f"working directory: {box}/work\n" in out
    assert "this line goes to stderr" in err
    assert output_files(box) == {"hello.txt": b"hello, world\n-foo\ntwo words\n"}


@pytest.mark.parametrize("via", ["arguments.sh", "launcher arguments"])
def test_arguments_arrive_intact(tmp_path, via):
    box = sandbox_with(tmp_path, "hello", arguments=TRICKY_ARGS if via == "arguments.sh" else None)
    status, out, err = run(box, *([] if via == "arguments.sh" else TRICKY_ARGS))
    assert status == 0, err
    assert f"arguments ({len(TRICKY_ARGS)}):" in out
    expected = "hello, world\n" + "".join(a + "\n" for a in TRICKY_ARGS)
    assert output_files(box)["hello.txt"].decode() == expected


def test_arguments_file_wins_over_launcher_arguments(tmp_path):
    box = sandbox_with(tmp_path, "hello", arguments=["from the file"])
    status, out, _ = run(box, "from", "condor")
    assert status == 0 and "arguments (1):\n  [from the file]\n" in out


def test_input_is_unpacked_into_the_working_directory_and_named(tmp_path):
    box = sandbox_with(tmp_path, "python-wordcount",
                       input_files={"a.txt": (b"one two three\n", 0o644), "sub/b.txt": (b"two three\n", 0o644)})
    status, out, err = run(box, "--verbose")
    assert status == 0, err
    assert f"input archive: {box}/input.tar.gz" in out and '["--verbose"]' in out
    assert "a.txt: 3 words (unpacked here)" in out and "sub/b.txt: 2 words (unpacked here)" in out
    assert (box / "work" / "sub" / "b.txt").read_text() == "two three\n"
    counts = json.loads(output_files(box)["counts.json"])
    assert counts["counts"] == {"two": 2, "three": 2, "one": 1}
    assert counts["files"] == {"a.txt": 3, "sub/b.txt": 2} and counts["arguments"] == ["--verbose"]


def test_input_files_win_a_name_clash(tmp_path):
    box = sandbox_with(
        tmp_path,
        {"run.sh": (b"#!/bin/sh\ncat config.txt\n", 0o755), "config.txt": (b"from the bundle\n", 0o644)},
        input_files={"config.txt": (b"from the input\n", 0o644)},
    )
    status, out, _ = run(box)
    assert status == 0 and out == "from the input\n"


def test_failing_bundle_exits_with_its_status_and_still_packs_output(tmp_path):
    box = sandbox_with(tmp_path, "fail")
    status, out, err = run(box)
    assert status == 3
    assert out == "about to fail\n" and "fail: something went wrong (on purpose)" in err
    assert (box / "output.tar.gz").is_file() and output_files(box) == {}


def test_bundle_without_run_sh_exits_1_with_a_message(tmp_path):
    box = sandbox_with(tmp_path, {"start.sh": (b"#!/bin/sh\necho never\n", 0o755)})
    status, out, err = run(box)
    assert status == 1 and out == ""
    assert "the bundle has no run.sh" in err
    assert output_files(box) == {}


def test_unreadable_bundle_exits_1_with_a_message(tmp_path):
    box = tmp_path / "sandbox"
    box.mkdir()
    (box / "bundle.tar.gz").write_bytes(b"not an archive")
    status, _, err = run(box)
    assert status == 1 and "could not unpack bundle.tar.gz" in err
    assert (box / "output.tar.gz").is_file()


def test_run_sh_without_exec_bit_or_shebang_runs_with_sh(tmp_path):
    box = sandbox_with(tmp_path, {"run.sh": (b'echo "plain $# $1"\n', 0o644)})
    status, out, _ = run(box, "a b")
    assert status == 0 and out == "plain 1 a b\n"


def test_run_sh_without_exec_bit_keeps_its_shebang(tmp_path):
    box = sandbox_with(tmp_path, {"run.sh": (b"#!/usr/bin/env python3\nimport sys; print(sys.argv[1:])\n", 0o644)})
    status, out, err = run(box, "x y")
    assert status == 0, err
    assert out == "['x y']\n"


def test_setuid_bits_do_not_survive_unpacking(tmp_path):
    box = sandbox_with(tmp_path, {
        "run.sh": (b"#!/bin/sh\nfind . -perm -4000 -o -perm -2000\n", 0o4755),
        "tool": (b"#!/bin/sh\n", 0o6755),
    })
    status, out, err = run(box)
    assert status == 0, err
    assert out == ""
    assert os.stat(box / "work" / "tool").st_mode & 0o7777 in (0o755, 0o775)


def test_run_sh_killed_by_a_signal_exits_128_plus_the_signal(tmp_path):
    box = sandbox_with(tmp_path, {"run.sh": (b"#!/bin/sh\necho partial > \"$MODACLOUDS_BATCH_OUTPUT/p.txt\"\n"
                                             b"kill -KILL $$\n", 0o755)})
    status, _, err = run(box)
    assert status == 128 + signal.SIGKILL
    assert "run.sh ended by signal 9 (KILL): exit status 137" in err
    assert output_files(box) == {"p.txt": b"partial\n"}


@pytest.mark.parametrize("own_group", [True, False], ids=["own process group", "shared process group"])
def test_sigterm_is_forwarded_and_the_launcher_still_packs_and_exits(tmp_path, own_group):
    box = sandbox_with(tmp_path, "sleeper", arguments=["30"])
    proc = launch(box, new_session=own_group)
    try:
        wait_for_text(box / "stdout.txt", "tick 1/30")
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        status = proc.wait(10)
    finally:
        proc.kill()
    assert time.monotonic() - started < 5
    assert status == 128 + signal.SIGTERM
    err = (box / "stderr.txt").read_text()
    assert "sleeper: terminated after" in err and "run.sh ended by signal 15 (TERM)" in err
    assert (box / "output.tar.gz").is_file()
    if own_group:  # run.sh's children (sleep) heard the signal too: nothing is left
        with pytest.raises(ProcessLookupError):
            os.killpg(proc.pid, 0)


def test_sigterm_reaches_the_children_of_run_sh(tmp_path):
    # sh runs its TERM trap only once its foreground child ends: that child must hear it too.
    box = sandbox_with(tmp_path, {"run.sh": (b"#!/bin/sh\ntrap 'echo cleaned up >&2; exit 5' TERM\n"
                                             b"echo started\nsleep 300\n", 0o755)})
    proc = launch(box)
    try:
        wait_for_text(box / "stdout.txt", "started")
        time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        status = proc.wait(10)
    finally:
        proc.kill()
    assert status == 5 and "cleaned up" in (box / "stderr.txt").read_text()


def test_repeated_sigterm_does_not_cut_short_the_wait_for_run_sh(tmp_path):
    script = (b"#!/bin/sh\ntrap 'echo cleaning >&2; sleep 1; echo done > \"$MODACLOUDS_BATCH_OUTPUT/x\"; exit 7' TERM\n"
              b"echo started\nwhile :; do sleep 0.1; done\n")
    box = sandbox_with(tmp_path, {"run.sh": (script, 0o755)})
    proc = launch(box, new_session=False)
    try:
        wait_for_text(box / "stdout.txt", "started")
        proc.send_signal(signal.SIGTERM)
        wait_for_text(box / "stderr.txt", "cleaning")
        proc.send_signal(signal.SIGTERM)
        status = proc.wait(10)
    finally:
        proc.kill()
    assert status == 7, (box / "stderr.txt").read_text()
    assert output_files(box) == {"x": b"done\n"}


def test_suspend_and_continue_of_the_whole_group_only_delays_the_job(tmp_path):
    box = sandbox_with(tmp_path, "sleeper", arguments=["2"])
    proc = launch(box)
    try:
        wait_for_text(box / "stdout.txt", "tick 1/2")
        os.killpg(proc.pid, signal.SIGSTOP)  # what HTCondor's suspend does
        time.sleep(1.5)
        ticks_while_stopped = (box / "stdout.txt").read_text().count("tick")
        time.sleep(0.5)
        assert (box / "stdout.txt").read_text().count("tick") == ticks_while_stopped
        os.killpg(proc.pid, signal.SIGCONT)
        status = proc.wait(10)
    finally:
        proc.kill()
    assert status == 0, (box / "stderr.txt").read_text()
    assert output_files(box) == {"slept.txt": b"slept 2 seconds\n"}


def _launch_with_time_limit(box: Path, seconds: int) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODACLOUDS_BATCH_")}
    env["MODACLOUDS_BATCH_TIME_LIMIT"] = str(seconds)
    return subprocess.Popen([str(LAUNCHER)], cwd=box, env=env, start_new_session=True,
                            stdout=open(box / "stdout.txt", "wb"), stderr=open(box / "stderr.txt", "wb"))


def test_a_job_over_its_time_limit_is_stopped_exits_124_and_keeps_its_output(tmp_path):
    script = (b"#!/bin/sh\necho started; echo partial > \"$MODACLOUDS_BATCH_OUTPUT/partial.txt\"\n"
              b"i=0; while :; do i=$((i+1)); echo tick $i; sleep 0.2; done\n")
    box = sandbox_with(tmp_path, {"run.sh": (script, 0o755)})
    status = _launch_with_time_limit(box, 2).wait(30)
    out, err = (box / "stdout.txt").read_text(), (box / "stderr.txt").read_text()
    assert status == 124, err
    assert "started" in out and "tick 3" in out
    assert "exceeded its time limit of 2 s" in err
    assert output_files(box) == {"partial.txt": b"partial\n"}
    assert not (box / ".time-limit-exceeded").exists()


def test_a_job_that_ignores_sigterm_is_killed_after_the_grace(tmp_path):
    script = b"#!/bin/sh\ntrap '' TERM\necho stubborn\nwhile :; do sleep 1; done\n"
    box = sandbox_with(tmp_path, {"run.sh": (script, 0o755)})
    status = _launch_with_time_limit(box, 1).wait(60)
    assert status == 124
    assert "stubborn" in (box / "stdout.txt").read_text()


def test_a_job_within_its_time_limit_keeps_its_own_status(tmp_path):
    box = sandbox_with(tmp_path, {"run.sh": (b"#!/bin/sh\necho quick\nexit 3\n", 0o755)})
    started = time.monotonic()
    status = _launch_with_time_limit(box, 30).wait(30)
    assert status == 3
    assert time.monotonic() - started < 20  # the watchdog does not keep the launcher waiting
    assert "time limit" not in (box / "stderr.txt").read_text()


def test_an_output_archive_exists_even_when_the_launcher_stops_before_the_job_starts(tmp_path):
    # transfer_output_files names output.tar.gz: a missing one would hold the job.
    box = sandbox_with(tmp_path, "hello")
    (box / "work").write_text("a file where the launcher makes its work/ folder")
    status, _, _ = run(box)
    assert status == 1
    with tarfile.open(box / "output.tar.gz") as tar:
        assert tar.getnames() == []
