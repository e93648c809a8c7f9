"""`modaclouds-batch submit | jobs | status | logs | download | hold | release | ...`:
the gateway's HTTP API from a terminal, as thin click wrappers around BatchClient.

Output that pipes: results go to stdout (a job id, the job's stdout, a table, or JSON with
``--json``); progress and state changes go to stderr, live on a terminal and as plain
lines otherwise. Exit codes: 0 ok, 1 error, 2 usage; when following a job to its end
(``submit --wait``), 3 if it failed and 4 if it was removed or never ran
(submission_error).
"""

from __future__ import annotations

import contextlib
import functools
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator, NoReturn

import click

from .client import ACTIONS, TOKEN_ENV, BatchClient, BatchError, Job

EXIT_ERROR = 1
EXIT_JOB_FAILED = 3
EXIT_JOB_DID_NOT_RUN = 4
EXIT_INTERRUPTED = 130  # as a shell reports Ctrl-C
EXIT_CODES = {"completed": 0, "failed": EXIT_JOB_FAILED, "removed": EXIT_JOB_DID_NOT_RUN,
              "submission_error": EXIT_JOB_DID_NOT_RUN}
# Plain (non-terminal) upload progress: one line each time another quarter is sent.
PLAIN_PROGRESS_STEP = 25
ACTION_HELP = {
    "hold": "Hold a job: it stays queued (or stops running) until released.",
    "release": "Release a held job: it is queued again.",
    "remove": "Remove a job from the queue (it produces no outputs).",
    "suspend": "Pause a running job on its execute node.",
    "continue": "Resume a suspended job.",
}


def _client(ctx: click.Context) -> BatchClient:
    return BatchClient((ctx.obj or {}).get("url"), home=(ctx.obj or {}).get("home"))


def _fail(message: str) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(EXIT_ERROR)


def reports_errors(command: Callable) -> Callable:
    """BatchError -> `error: <the gateway's message>` on stderr and exit status 1."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except BatchError as exc:
            message = str(exc)
            if exc.status == 401:
                message += (f" (set {TOKEN_ENV} to your API token; on the gateway's own machine the "
                            "local admin token in <home>/admin-token is used: --home names that home)")
            _fail(message)

    return wrapper


def _echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2))


def _size(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def describe(job: Job) -> str:
    """One line for a state change: `12:00:03 running on slot1@node (reason)`."""
    text = f"{time.strftime('%H:%M:%S')} {job['job_status']}"
    if job["job_status"] == "running" and job.get("remote_host"):
        text += f" on {job['remote_host']}"
    if job.get("state_reason"):
        text += f": {job['state_reason']}"
    return text


class Display:
    """Progress on stderr: live (rich) on a terminal, plain lines when piped or logged."""

    def __init__(self):
        from rich.console import Console

        self.console = Console(stderr=True, highlight=False)
        self.live = self.console.is_terminal and not self.console.is_dumb_terminal

    def line(self, text: str) -> None:
        if self.live:
            self.console.print(text, markup=False)
        else:
            click.echo(text, err=True)

    @contextlib.contextmanager
    def upload(self, label: str) -> Iterator[Callable[[int, int], None]]:
        """A ``progress(sent, total)`` callback for BatchClient.submit."""
        started = time.monotonic()
        total_seen = [0]
        if self.live:
            from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn,
                                       TimeRemainingColumn, TransferSpeedColumn)

            with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(binary_units=True),
                          TransferSpeedColumn(), TimeRemainingColumn(), console=self.console) as bar:
                task = bar.add_task(label, total=None)

                def progress(sent: int, total: int) -> None:
                    total_seen[0] = total
                    bar.update(task, completed=sent, total=total)

                yield progress
        else:
            shown = [-1]

            def progress(sent: int, total: int) -> None:
                total_seen[0] = total
                percent = 100 * sent // total if total else 100
                step = percent // PLAIN_PROGRESS_STEP * PLAIN_PROGRESS_STEP
                if step > shown[0]:
                    shown[0] = step
                    click.echo(f"{label}: {step}% of {_size(total)}", err=True)

            yield progress
        self.line(f"uploaded {_size(total_seen[0])} in {time.monotonic() - started:.1f} s")

    @contextlib.contextmanager
    def following(self, job_id: str) -> Iterator[Callable[[Job], None]]:
        """An ``on_change(job)`` callback for BatchClient.wait: one line per state change,
        and on a terminal a spinner showing the current state."""
        if not self.live:
            yield lambda job: self.line(describe(job))
            return
        with self.console.status(f"job {job_id}", spinner="dots") as status:
            def on_change(job: Job) -> None:
                self.line(describe(job))
                status.update(f"job {job_id}: {job['job_status']}")

            yield on_change


def _follow(client: BatchClient, display: Display, job_id: str) -> Job:
    """Follow a job to its end; Ctrl-C stops following (the job goes on) and says how to resume."""
    try:
        with display.following(job_id) as on_change:
            return client.wait(job_id, on_change=on_change)
    except KeyboardInterrupt:
        click.echo(f"\nstopped following job {job_id}; it goes on in the pool. Follow it again with: "
                   f"modaclouds-batch wait {job_id}", err=True)
        sys.exit(EXIT_INTERRUPTED)


def _write_artifact(client: BatchClient, job_id: str, name: str, *, err: bool = False) -> None:
    text = sys.stderr if err else sys.stdout
    text.flush()  # what was echoed before comes first
    for chunk in client.iter_artifact(job_id, name):
        text.buffer.write(chunk)
    text.buffer.flush()


def _download(client: BatchClient, display: Display, job_id: str, directory: Path) -> list[Path]:
    files = client.download_output(job_id, directory)
    display.line(f"downloaded {len(files)} file(s) into {directory}")
    return files


def _submit_fields(**options: str | None) -> dict[str, str]:
    """CLI options -> POST /jobs form fields (``time_limit`` -> ``job-time-limit``); unset ones dropped."""
    return {"job-" + key.replace("_", "-"): value for key, value in options.items() if value not in (None, "")}


@click.command()
@click.argument("bundle", type=click.Path(exists=True, path_type=Path))
@click.option("--input", "input_", type=click.Path(exists=True, path_type=Path),
              help="Input folder or .tar.gz, unpacked into the job's working directory.")
@click.option("--args", "args", help="Arguments for run.sh, split like a shell would: --args \"-n 3 'two words'\".")
@click.option("--name", help="Job name (default: the bundle's name).")
@click.option("--notify", help="URL the gateway POSTs to when the job ends (see docs/webhooks.md).")
@click.option("--cpus", help="CPUs the job needs on one worker (default 1).")
@click.option("--memory", help="Memory the job needs: 512MB, 8GB (default 128MB).")
@click.option("--disk", help="Scratch disk the job needs: 2GB (default 1GB).")
@click.option("--time-limit", help="Stop run.sh after this long: seconds or 1h30m; its output so far is kept.")
@click.option("--runtime", help="A runtime some worker must offer, e.g. python3.")
@click.option("--ttl", help="Seconds after which the job is removed and cleaned up (not a time limit).")
@click.option("--after", multiple=True, metavar="JOB_ID",
              help="Start only once this job (or array) completed; repeatable. If it fails, this job is removed.")
@click.option("--after-any", multiple=True, metavar="JOB_ID",
              help="Start only once this job (or array) ended, however it ended; repeatable.")
@click.option("--wait", is_flag=True, help="Follow the job until it ends, then print its stdout.")
@click.option("--download", type=click.Path(file_okay=False, path_type=Path),
              help="Once the job ends, unpack its outputs into this folder (implies --wait).")
@click.option("--json", "as_json", is_flag=True, help="Print the job as JSON (the final view with --wait).")
@click.pass_context
@reports_errors
def submit(ctx, bundle: Path, input_: Path | None, args, name, notify, cpus, memory, disk, time_limit,
           runtime, ttl, after, after_any, wait, download, as_json) -> None:
    """Submit BUNDLE (a folder holding run.sh, or a .tar.gz) as a job.

    Prints the job id (or the job as JSON). With --wait, follows the state until the job
    ends and prints its stdout; exits 3 if it failed, 4 if it was removed.
    """
    client, display = _client(ctx), Display()
    with display.upload(f"uploading {bundle.name}") as progress:
        job = client.submit(bundle, input=input_, args=args, name=name, notify=notify, progress=progress,
                            fields=_submit_fields(cpus=cpus, memory=memory, disk=disk, time_limit=time_limit,
                                                  runtime=runtime, ttl=ttl, after=",".join(after),
                                                  after_any=",".join(after_any)))
    display.line(f"submitted job {job['id']} ({job['name']}, backend id {job['backend_id']})")
    if not (wait or download):
        _echo_json(job) if as_json else click.echo(job["id"])
        return
    job = _follow(client, display, job["id"])
    files = _download(client, display, job["id"], download) if download and job["outputs_ready"] else []
    if as_json:
        _echo_json({**job, "downloaded": [str(f) for f in files]} if download else job)
    elif download:
        for path in files:
            click.echo(str(path))
    elif job["outputs_ready"]:
        _write_artifact(client, job["id"], "stdout")
    if job["job_status"] == "failed" and not as_json:
        _write_artifact(client, job["id"], "stderr", err=True)
    sys.exit(EXIT_CODES.get(job["job_status"], EXIT_ERROR))


@click.command("jobs")
@click.option("--status", multiple=True, help="Only jobs in this state (repeat, or comma-separated).")
@click.option("--name", help="Only jobs with this name, or matching this glob (run-*).")
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True, help="At most this many.")
@click.option("--all", "all_", is_flag=True, help="Every matching job, page after page.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@click.pass_context
@reports_errors
def jobs(ctx, status, name, limit, all_, as_json) -> None:
    """List jobs, newest first."""
    states = [s for value in status for s in value.split(",") if s] or None
    found = _client(ctx).jobs(status=states, name=name, limit=None if all_ else limit)
    if as_json:
        _echo_json(found)
        return
    click.echo(f"{'ID':36}  {'STATUS':16}  {'BACKEND':>7}  {'CREATED':27}  NAME")
    for job in found:
        click.echo(f"{job['id']:36}  {job['job_status']:16}  {job['backend_id'] or '':>7}  "
                   f"{job['created_at']:27}  {job['name']}")


@click.command()
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Print the job's detailed view as JSON.")
@click.pass_context
@reports_errors
def status(ctx, job_id, as_json) -> None:
    """Show one job: its state, why, when, and what can be done with it.

    JOB_ID is the job's id, 4 or more of its first characters, or its backend id."""
    client = _client(ctx)
    job = client.job(client.resolve(job_id))
    if as_json:
        _echo_json(job)
        return
    rows = [
        ("id", job["id"]), ("name", job["name"]), ("owner", job.get("owner")),
        ("status", job["job_status"]), ("reason", job.get("state_reason")),
        ("backend", f"{job['backend_id']} ({job.get('backend_job_status')})"),
        ("arguments", shlex.join(job.get("arguments") or [])), ("created", job.get("created_at")),
        ("started", job.get("start_date")), ("completed", job.get("completion_date")),
        ("exit status", job.get("exit_status")), ("host", job.get("remote_host")),
        ("outputs", "ready" if job.get("outputs_ready") else "not yet"),
        ("actions", ", ".join(job["links"]["actions"]) or "none"),
    ]
    for label, value in rows:
        if value not in (None, ""):
            click.echo(f"{label + ':':13}{value}")


@click.command()
@click.argument("job_id")
@click.option("--stderr", "which", flag_value="stderr", help="Print stderr instead of stdout.")
@click.option("--stdout", "which", flag_value="stdout", default=True, hidden=True)
@click.option("--follow", "-f", is_flag=True,
              help="Print what the job prints as it prints it (like tail -f), until it ends.")
@click.pass_context
@reports_errors
def logs(ctx, job_id, which, follow) -> None:
    """Print a job's stdout (or stderr): what it printed so far while it runs, all of it once it ended."""
    client = _client(ctx)
    job_id = client.resolve(job_id)
    if follow:
        try:
            for chunk in client.follow_artifact(job_id, which):
                sys.stdout.buffer.write(chunk)
                sys.stdout.buffer.flush()
        except KeyboardInterrupt:
            click.echo(f"stopped following; the job goes on. Follow it again: modaclouds-batch logs -f {job_id}",
                       err=True)
            ctx.exit(130)
        return
    _write_artifact(client, job_id, which)


@click.command()
@click.argument("job_id")
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path),
              help="Where to unpack the outputs (default: ./<job id>-output).")
@click.option("--json", "as_json", is_flag=True, help="Print {job_id, dir, files} as JSON.")
@click.pass_context
@reports_errors
def download(ctx, job_id, directory, as_json) -> None:
    """Unpack a finished job's outputs into a folder; prints the files written."""
    client = _client(ctx)
    job_id = client.resolve(job_id)
    directory = directory or Path(f"{job_id}-output")
    files = _download(client, Display(), job_id, directory)
    if as_json:
        _echo_json({"job_id": job_id, "dir": str(directory), "files": [str(f) for f in files]})
    else:
        for path in files:
            click.echo(str(path))


def _action_command(action: str) -> click.Command:
    @click.command(action, help=ACTION_HELP[action])
    @click.argument("job_id")
    @click.option("--json", "as_json", is_flag=True, help="Print the gateway's answer as JSON.")
    @click.pass_context
    @reports_errors
    def command(ctx, job_id, as_json) -> None:
        client = _client(ctx)
        job_id = client.resolve(job_id)
        answer = client.act(job_id, action)
        if as_json:
            _echo_json(answer)
        else:
            click.echo(f"{action} accepted for job {job_id} (now {answer['job_status']})")

    return command


@click.command("wait")
@click.argument("job_ids", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="Print the final views as a JSON array.")
@click.pass_context
@reports_errors
def wait(ctx, job_ids, as_json) -> None:
    """Wait for jobs already submitted to end, showing their state changes.

    Exits with the worst outcome: 0 all completed, 3 one failed, 4 one was removed or never ran."""
    client, display = _client(ctx), Display()
    finished = [_follow(client, display, client.resolve(ref)) for ref in job_ids]
    if as_json:
        _echo_json(finished)
    else:
        for job in finished:
            click.echo(f"{job['id']} {job['job_status']}")
    sys.exit(max(EXIT_CODES.get(job["job_status"], EXIT_ERROR) for job in finished))


COMMANDS = (submit, wait, jobs, status, logs, download, *(_action_command(action) for action in ACTIONS))
