"""A TES 1.1 task as one gateway job: the request checked, its executors rendered into run.sh.

No HTTP here and no job logic: pure functions the TES dialect (``tes.py``) and its tests call.

The pool has no container runtime, so a task's file system is a folder on the worker: the
``root/`` folder of the job's working directory. Every path the task declares (inputs,
outputs, volumes, workdirs, stdin/stdout/stderr) lives under it, and where one of those
paths appears in a command word or an environment value (as the whole word or at a word
boundary, e.g. ``/data/in.txt`` or ``--in=/data/in.txt``) it is rewritten to the same path
under root/. Nothing else is rewritten, and nothing passes through a shell: every word is
single-quoted in run.sh (the rewritten part is ``"$root"``).
"""

from __future__ import annotations

import os
import posixpath
import re
import shutil
import tarfile
from dataclasses import dataclass, field as dc_field
from pathlib import Path
from typing import Any
from urllib.parse import quote as url_quote, unquote, urlsplit

import requests

from ..errors import InvalidRequest
from ..jobs.submission import url_input_name
from ..notify import targets

# Fields of a tesTask; the read-only ones a client may echo back are ignored.
TASK_FIELDS = ("name", "description", "inputs", "outputs", "resources", "executors", "volumes", "tags")
READ_ONLY_FIELDS = ("id", "state", "logs", "creation_time")
# TES 1.1's tesState words: a task echoed back may carry one, never another.
TASK_STATES = ("UNKNOWN", "QUEUED", "INITIALIZING", "RUNNING", "PAUSED", "COMPLETE", "EXECUTOR_ERROR",
               "SYSTEM_ERROR", "CANCELED", "PREEMPTED", "CANCELING")
EXECUTOR_FIELDS = ("image", "command", "workdir", "stdin", "stdout", "stderr", "env", "ignore_error")
INPUT_FIELDS = ("name", "description", "url", "path", "type", "content", "streamable")
OUTPUT_FIELDS = ("name", "description", "url", "path", "path_prefix", "type")
GLOB_CHARS = "*?["
RESOURCE_FIELDS = ("cpu_cores", "preemptible", "ram_gb", "disk_gb", "zones", "backend_parameters",
                   "backend_parameters_strict")
# backend_parameters the gateway understands (keys are case-insensitive), to the POST /jobs field.
BACKEND_PARAMETERS = {"runtime": "runtime", "time_limit": "time_limit"}
MAX_CONTENT_BYTES = 1024 * 1024  # one inline input (the spec asks for at least 128 KiB)
MAX_EXECUTORS = 100
# What a FULL view shows of each executor's stdout and stderr: the tail.
TAIL_BYTES = 64 * 1024
# Where run.sh writes each executor's record, inside the job's output folder (so it comes back).
LOG_DIR = ".tes"
ROOT_DIR = "root"
# Folders of the worker's own system: a task may not declare paths there.
SYSTEM_PREFIXES = ("/bin", "/sbin", "/usr", "/lib", "/lib32", "/lib64", "/etc", "/proc", "/sys", "/dev", "/boot")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class Task:
    """A checked TES request: what the job runs, and what the gateway keeps to answer with."""

    body: dict[str, Any]      # the request as the client gave it (read-only fields dropped)
    script: str               # run.sh
    files: dict[str, bytes]   # inline inputs, by their path in the bundle (root/...)
    job_fields: dict[str, Any]  # POST /jobs JSON fields: name, cpus, memory, disk, runtime, time_limit
    # file:// inputs: (path in the job's working directory, root/..., the gateway-side source).
    file_inputs: list[tuple[str, Path]] = dc_field(default_factory=list)
    # file:// outputs, checked: index, path, glob, prefix, dest, type (delivered after the job).
    outputs: list[dict[str, Any]] = dc_field(default_factory=list)
    # http(s) inputs: fetched by HTCondor on the execute node, moved into root/ by run.sh.
    url_inputs: tuple[str, ...] = ()


def _fail(message: str, field: str) -> InvalidRequest:
    return InvalidRequest(message, field=field)


def _text(value: Any, field: str, required: bool = False) -> str | None:
    if value is None:
        if required:
            raise _fail(f"{field} is required", field)
        return None
    if not isinstance(value, str):
        raise _fail(f"{field} must be a string", field)
    return value


def _path(value: Any, field: str) -> str:
    """An absolute, normalised path of the task (not / itself, not in the worker's system folders)."""
    text = _text(value, field, required=True)
    if not text.startswith("/") or "\0" in text:
        raise _fail(f"{field} must be an absolute path such as /data/file1", field)
    norm = posixpath.normpath(text)
    if norm.startswith("//"):
        norm = "/" + norm.lstrip("/")
    if norm == "/" or "/../" in norm + "/":
        raise _fail(f"{field} must name a file or folder below /, e.g. /data/file1", field)
    if any(norm == p or norm.startswith(p + "/") for p in SYSTEM_PREFIXES):
        raise _fail(f"{field} {norm} is in a system folder of the worker; use a path such as /data/...", field)
    return norm


def _within(path: Path, folders: tuple[Path, ...]) -> bool:
    real = Path(os.path.realpath(path))
    return any(real == folder or folder in real.parents for folder in folders)


def file_url_path(url: str, field: str, folders: tuple[Path, ...]) -> Path:
    """A file:// URL (or a bare absolute path) as a path inside one of ``folders``, or a 400."""
    parts = urlsplit(url)
    if parts.scheme in ("s3", "gs", "ftp", "http", "https"):
        raise _fail(f"{field}: {parts.scheme}:// URLs are not supported yet; use file:// (in the folders the "
                    "gateway allows) or inline content", field)
    if parts.scheme not in ("", "file") or parts.netloc not in ("", "localhost"):
        raise _fail(f"{field}: only file:// URLs (and inline content) are supported", field)
    path = unquote(parts.path)
    if not path.startswith("/") or "\0" in path:
        raise _fail(f"{field} must be an absolute file:// URL such as file:///data/in.txt", field)
    if not folders:
        raise _fail(f"{field}: this gateway allows no file:// URLs (its tes_file_folders setting is empty)", field)
    if not _within(Path(path), folders):
        raise _fail(f"{field}: {path} is outside the folders the gateway allows for file:// URLs: "
                    f"{', '.join(str(f) for f in folders)}", field)
    return Path(os.path.realpath(path))


def _object(value: Any, field: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _fail(f"{field} must be an object", field)
    return value


def _check_read_only(body: dict[str, Any]) -> None:
    """The read-only fields a client echoes back are ignored, but only when they are what
    the schema says they are (a task read back and posted again has them so)."""
    _text(body.get("id"), "id")
    _text(body.get("creation_time"), "creation_time")
    _list(body.get("logs"), "logs")
    state = _text(body.get("state"), "state")
    if state is not None and state not in TASK_STATES:
        raise _fail(f"state {state[:40]!r} is not a TES state ({', '.join(TASK_STATES)}); it is read-only: "
                    "leave it out", "state")


def _list(value: Any, field: str) -> list:
    if value is None:
        return []
    if not isinstance(value, list):
        raise _fail(f"{field} must be an array", field)
    return value


def _unknown(obj: dict, known: tuple[str, ...], field: str) -> None:
    extra = sorted(set(obj) - set(known))
    if extra:
        raise _fail(f"unknown field {field}.{extra[0]}; a {field} has {', '.join(known)}", f"{field}.{extra[0]}")


def _string_map(value: Any, field: str) -> dict[str, str]:
    mapping = _object(value, field)
    for key, item in mapping.items():
        if not isinstance(item, str):
            raise _fail(f"{field}.{key} must be a string", f"{field}.{key}")
    return dict(mapping)


def parse_task(body: Any, folders: tuple[Path, ...] = (), allow_private: bool = False) -> Task:
    """The TES request checked and translated, or an InvalidRequest naming the field.

    ``folders``: where file:// inputs may be read and file:// outputs written (real paths);
    ``allow_private``: http(s) outputs may go to private addresses (as webhooks may)."""
    if not isinstance(body, dict):
        raise InvalidRequest('the body must be a tesTask object, e.g. {"executors": [{"image": "alpine", '
                             '"command": ["echo", "hello"]}]}')
    _unknown({k: v for k, v in body.items() if k not in READ_ONLY_FIELDS}, TASK_FIELDS, "task")
    _check_read_only(body)
    kept = {k: body[k] for k in TASK_FIELDS if body.get(k) is not None}
    name = _text(body.get("name"), "name")
    _text(body.get("description"), "description")
    _string_map(body.get("tags"), "tags")
    volumes = [_path(v, f"volumes[{i}]") for i, v in enumerate(_list(body.get("volumes"), "volumes"))]

    outputs = [parse_output(item, i, folders, allow_private)
               for i, item in enumerate(_list(body.get("outputs"), "outputs"))]

    files: dict[str, bytes] = {}
    file_inputs: list[tuple[str, Path]] = []
    url_inputs: list[tuple[str, str, str]] = []  # (sandbox name, url, path in the task)
    input_paths = []
    for i, item in enumerate(_list(body.get("inputs"), "inputs")):
        field = f"inputs[{i}]"
        item = _object(item, field)
        _unknown(item, INPUT_FIELDS, "input")
        path = _path(item.get("path"), f"{field}.path")
        kind = item.get("type") or "FILE"
        if kind not in ("FILE", "DIRECTORY"):
            raise _fail(f"{field}.type is FILE or DIRECTORY", f"{field}.type")
        content = _text(item.get("content"), f"{field}.content")
        for key in ("name", "description"):
            _text(item.get(key), f"{field}.{key}")
        if item.get("streamable") is not None and not isinstance(item["streamable"], bool):
            raise _fail(f"{field}.streamable must be true or false", f"{field}.streamable")
        member = ROOT_DIR + path
        if member in files or any(member == m for m, _ in file_inputs) or path in {p for _, _, p in url_inputs}:
            raise _fail(f"{field}.path {path} is given twice", f"{field}.path")
        if not content:
            url = _text(item.get("url"), f"{field}.url", required=True)
            if url.startswith(("http://", "https://")):
                name = url_input_name(url)
                if kind != "FILE" or name is None or name in {n for n, _, _ in url_inputs}:
                    raise _fail(f"{field}.url: an http(s) input is a FILE whose URL has no query, no $, comma, "
                                "quote or space, and ends in a file name no other http(s) input of the task has",
                                f"{field}.url")
                url_inputs.append((name, url, path))
                input_paths.append(path)
                continue
            source = file_url_path(url, f"{field}.url", folders)
            if kind == "FILE" and not source.is_file() or kind == "DIRECTORY" and not source.is_dir():
                raise _fail(f"{field}.url: {source} is not a readable {kind.lower()} on the gateway", f"{field}.url")
            if not os.access(source, os.R_OK):
                raise _fail(f"{field}.url: the gateway cannot read {source}", f"{field}.url")
            file_inputs.append((member, source))
            input_paths.append(path)
            continue
        if kind == "DIRECTORY":
            raise _fail(f"{field}: inline content makes a FILE, not a DIRECTORY", f"{field}.type")
        data = content.encode("utf-8")
        if len(data) > MAX_CONTENT_BYTES:
            raise _fail(f"{field}.content is larger than {MAX_CONTENT_BYTES} bytes", f"{field}.content")
        files[member] = data
        input_paths.append(path)

    executors = _list(body.get("executors"), "executors")
    if not executors:
        raise _fail('executors is required: at least one {"image": ..., "command": [...]}', "executors")
    if len(executors) > MAX_EXECUTORS:
        raise _fail(f"a task has at most {MAX_EXECUTORS} executors", "executors")
    checked = []
    for i, item in enumerate(executors):
        field = f"executors[{i}]"
        item = _object(item, field)
        _unknown(item, EXECUTOR_FIELDS, "executor")
        _text(item.get("image"), f"{field}.image", required=True)
        command = item.get("command")
        if not isinstance(command, list) or not command or not all(isinstance(w, str) for w in command):
            raise _fail(f"{field}.command must be a non-empty array of strings (argv)", f"{field}.command")
        if any("\0" in w for w in command):
            raise _fail(f"{field}.command words may not hold NUL", f"{field}.command")
        env = _string_map(item.get("env"), f"{field}.env")
        for key, value in env.items():
            if not _ENV_NAME.match(key) or "\0" in value:
                raise _fail(f"{field}.env name {key!r} must be a shell variable name", f"{field}.env")
        if item.get("ignore_error") is not None and not isinstance(item["ignore_error"], bool):
            raise _fail(f"{field}.ignore_error must be true or false", f"{field}.ignore_error")
        paths = {key: _path(item[key], f"{field}.{key}") if item.get(key) is not None else None
                 for key in ("workdir", "stdin", "stdout", "stderr")}
        checked.append({"command": command, "env": env, "ignore_error": bool(item.get("ignore_error")), **paths})

    declared = {*input_paths, *volumes, *(out["declared"] for out in outputs)}
    for ex in checked:
        declared.update(p for key in ("workdir", "stdin", "stdout", "stderr") if (p := ex[key]))
    job_fields = resource_fields(_object(body.get("resources"), "resources"))
    if name:
        job_fields["name"] = name[:200].strip() or "TES task"
    else:
        job_fields["name"] = "TES task"
    script = render_script(checked, volumes, sorted(declared, key=len, reverse=True), outputs, url_inputs)
    return Task(body=kept, script=script, files=files, job_fields=job_fields, file_inputs=file_inputs,
                outputs=outputs, url_inputs=tuple(url for _, url, _ in url_inputs))


def parse_output(item: Any, index: int, folders: tuple[Path, ...], allow_private: bool = False) -> dict[str, Any]:
    """One tesOutput: a path (globs as POSIX sh has them, with path_prefix) to a file:// URL."""
    field = f"outputs[{index}]"
    item = _object(item, field)
    _unknown(item, OUTPUT_FIELDS, "output")
    for key in ("name", "description"):
        _text(item.get(key), f"{field}.{key}")
    kind = item.get("type") or "FILE"
    if kind not in ("FILE", "DIRECTORY"):
        raise _fail(f"{field}.type is FILE or DIRECTORY", f"{field}.type")
    raw = _text(item.get("path"), f"{field}.path", required=True)
    glob = any(c in raw for c in GLOB_CHARS)
    path = _path(raw, f"{field}.path")
    url = _text(item.get("url"), f"{field}.url", required=True)
    if url.startswith(("http://", "https://")):
        try:
            dest = targets.check_url(url, allow_private=allow_private)
        except targets.UnsafeTarget as exc:
            raise _fail(f"{field}.url {exc}", f"{field}.url") from None
    else:
        dest = str(file_url_path(url, f"{field}.url", folders))
    declared = path
    prefix = None
    if glob:
        prefix = _text(item.get("path_prefix"), f"{field}.path_prefix")
        if not prefix or not path.startswith(prefix) or any(c in prefix for c in GLOB_CHARS):
            raise _fail(f"{field}.path_prefix is required with a wildcard path: the part of the path before the "
                        f"wildcards, removed from each match", f"{field}.path_prefix")
        prefix = _path(prefix, f"{field}.path_prefix") if prefix.rstrip("/") else prefix
        declared = prefix.rstrip("/") or path
    return {"index": index, "path": path, "glob": glob, "prefix": prefix, "dest": dest, "type": kind,
            "declared": declared}


def resource_fields(resources: dict) -> dict[str, Any]:
    """tesResources onto POST /jobs' resource fields (jobs/resources.py checks the values)."""
    _unknown(resources, RESOURCE_FIELDS, "resources")
    fields: dict[str, Any] = {}
    cores = resources.get("cpu_cores")
    if cores is not None:
        if isinstance(cores, bool) or not isinstance(cores, int):
            raise _fail("resources.cpu_cores must be a whole number", "resources.cpu_cores")
        fields["cpus"] = cores
    for key, target in (("ram_gb", "memory"), ("disk_gb", "disk")):
        value = resources.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise _fail(f"resources.{key} must be a positive number of GB", f"resources.{key}")
        fields[target] = f"{value}g"
    for key in ("preemptible", "backend_parameters_strict"):
        if resources.get(key) is not None and not isinstance(resources[key], bool):
            raise _fail(f"resources.{key} must be true or false", f"resources.{key}")
    zones = _list(resources.get("zones"), "resources.zones")
    if not all(isinstance(z, str) for z in zones):
        raise _fail("resources.zones must be an array of strings", "resources.zones")
    params = _string_map(resources.get("backend_parameters"), "resources.backend_parameters")
    unsupported = sorted(k for k in params if k.lower() not in BACKEND_PARAMETERS)
    if unsupported and resources.get("backend_parameters_strict"):
        raise _fail(f"backend_parameters {', '.join(unsupported)} not supported (backend_parameters_strict is "
                    f"true); the gateway understands {', '.join(BACKEND_PARAMETERS)}",
                    "resources.backend_parameters")
    for key, value in params.items():
        if key.lower() in BACKEND_PARAMETERS:
            fields[BACKEND_PARAMETERS[key.lower()]] = value
    return fields


def kept_resources(resources: dict | None) -> dict | None:
    """The resources to answer with: unsupported backend_parameters are neither stored nor returned."""
    if not resources:
        return resources
    params = {k: v for k, v in (resources.get("backend_parameters") or {}).items()
              if k.lower() in BACKEND_PARAMETERS}
    kept = {k: v for k, v in resources.items() if k != "backend_parameters"}
    if params:
        kept["backend_parameters"] = params
    return kept


# --- run.sh -------------------------------------------------------------------------------

def quote(text: str) -> str:
    """One shell word that the shell expands nothing in."""
    return "'" + text.replace("'", "'\\''") + "'"


def _boundary_pattern(declared: list[str]) -> re.Pattern | None:
    if not declared:
        return None
    alternatives = "|".join(re.escape(p) for p in declared)
    return re.compile(rf"(?<![^\s=:'\"(,;])(?:{alternatives})(?![^/\s'\";:,)|&<>])")


def rooted(word: str, pattern: re.Pattern | None) -> str:
    """``word`` as a shell word, each declared path in it moved under "$root"."""
    if pattern is None:
        return quote(word)
    parts, last = [], 0
    for match in pattern.finditer(word):
        if match.start() > last:
            parts.append(quote(word[last:match.start()]))
        parts.append('"$root"' + quote(match.group(0)))
        last = match.end()
    if last < len(word) or not parts:
        parts.append(quote(word[last:]))
    return "".join(parts)


SCRIPT_HEAD = """#!/bin/sh
# A GA4GH TES task, rendered by the gateway: its executors in order, each in a subshell.
# Every declared path lives under root/; each executor's start, end, exit code and the
# tails of its stdout and stderr are written to $MODACLOUDS_BATCH_OUTPUT/.tes/.
root=$(pwd -P)/root
logs=$MODACLOUDS_BATCH_OUTPUT/.tes
streams=$(pwd -P)/.tes-streams
mkdir -p "$root" "$logs" "$streams" || exit 1
now() { date -u +%Y-%m-%dT%H:%M:%SZ; }
status=0
"""


def glob_word(pattern: str) -> str:
    """A path pattern as a shell word: the wildcards active, everything else quoted."""
    parts = re.split(r"([*?]|\[[^\]/]*\])", pattern)
    return "".join(part if i % 2 else (quote(part) if part else "") for i, part in enumerate(parts))


def render_outputs(outputs: list[dict]) -> str:
    """After the executors: each output's matches copied into .tes/outputs/N/ (paths under root/ kept)."""
    lines = []
    for out in outputs:
        n = out["index"]
        target = f'"$logs/outputs/{n}"'
        rel = out["path"].lstrip("/")
        lines.append(f"\n# output {n}\nmkdir -p {target} || exit 1\n")
        if out["glob"]:
            lines.append(
                f'( cd "$root" && found=0 && for f in {glob_word(rel)}; do [ -e "$f" ] || continue; found=1; '
                f'tar -cf - -- "$f" | (cd {target} && tar -xf -) || exit 1; done; [ "$found" = 1 ] || '
                f': > "$logs/outputs/{n}.missing" ) || exit 1\n')
        else:
            lines.append(
                f'if [ -e "$root"{quote(out["path"])} ]; then ( cd "$root" && tar -cf - -- {quote(rel)} | '
                f'(cd {target} && tar -xf -) ) || exit 1; else : > "$logs/outputs/{n}.missing"; fi\n')
    return "".join(lines)


def render_script(executors: list[dict], volumes: list[str], declared: list[str],
                  outputs: list[dict] | None = None, url_inputs: list[tuple[str, str, str]] = ()) -> str:
    pattern = _boundary_pattern(declared)
    lines = [SCRIPT_HEAD]
    for name, _, path in url_inputs:
        # HTCondor fetched it into the sandbox (the launcher runs run.sh in sandbox/work).
        lines.append(f'mkdir -p "$root"{quote(posixpath.dirname(path))} && mv -- ../{quote(name)} "$root"{quote(path)} '
                     f'|| {{ echo "input {quote(path)} did not arrive from its URL" >&2; exit 1; }}\n')
    folders = set(volumes)
    for ex in executors:
        if ex["workdir"]:
            folders.add(ex["workdir"])
        for key in ("stdout", "stderr"):
            if ex[key]:
                folders.add(posixpath.dirname(ex[key]))
    for folder in sorted(folders):
        if folder != "/":
            lines.append(f'mkdir -p "$root"{quote(folder)} || exit 1\n')
    for index, ex in enumerate(executors):
        n = str(index)
        stdout = f'"$root"{quote(ex["stdout"])}' if ex["stdout"] else f'"$streams/{n}.stdout"'
        stderr = f'"$root"{quote(ex["stderr"])}' if ex["stderr"] else f'"$streams/{n}.stderr"'
        stdin = f'"$root"{quote(ex["stdin"])}' if ex["stdin"] else "/dev/null"
        workdir = f'"$root"{quote(ex["workdir"])}' if ex["workdir"] else '"$root"'
        exports = "".join(f"    export {key}={rooted(value, pattern)}\n" for key, value in ex["env"].items())
        argv = " ".join(rooted(word, pattern) for word in ex["command"])
        lines.append(
            f"\n# executor {n}\n"
            f'now > "$logs/{n}.start"\n'
            f"(\n"
            f"    cd {workdir} || exit 126\n"
            f"{exports}"
            f"    exec {argv}\n"
            f") < {stdin} > {stdout} 2> {stderr}\n"
            f"code=$?\n"
            f'now > "$logs/{n}.end"\n'
            f'echo "$code" > "$logs/{n}.exit"\n'
            f'tail -c {TAIL_BYTES} {stdout} > "$logs/{n}.stdout" 2>/dev/null\n'
            f'tail -c {TAIL_BYTES} {stderr} > "$logs/{n}.stderr" 2>/dev/null\n'
        )
        if ex["ignore_error"]:
            lines.append(f'[ "$code" -eq 0 ] || echo "executor {n} exited $code (ignore_error)" >&2\n')
        else:
            lines.append(f'[ "$code" -eq 0 ] || {{ echo "executor {n} exited $code" >&2; exit "$code"; }}\n')
    lines.append(render_outputs(outputs or []))
    lines.append("exit $status\n")
    return "".join(lines)


# --- what the executors left --------------------------------------------------------------

def executor_logs(output_archive: Path, executors: int, full: bool) -> list[dict[str, Any]]:
    """One tesExecutorLog per executor that ran, read from the job's output archive."""
    try:
        with tarfile.open(output_archive, "r:gz") as tar:
            found: dict[str, bytes] = {}
            for member in tar.getmembers():
                name = member.name[2:] if member.name.startswith("./") else member.name
                if member.isfile() and name.startswith(LOG_DIR + "/") and member.size <= TAIL_BYTES + 1024:
                    handle = tar.extractfile(member)
                    found[name[len(LOG_DIR) + 1:]] = handle.read() if handle else b""
    except (OSError, tarfile.TarError):
        return []
    logs = []
    for index in range(executors):
        code = found.get(f"{index}.exit", b"").strip()
        if not code.lstrip(b"-").isdigit():
            break
        log: dict[str, Any] = {"exit_code": int(code)}
        for key, suffix in (("start_time", "start"), ("end_time", "end")):
            value = found.get(f"{index}.{suffix}", b"").decode("utf-8", "replace").strip()
            if value:
                log[key] = value
        if full:
            for key in ("stdout", "stderr"):
                log[key] = found.get(f"{index}.{key}", b"").decode("utf-8", "replace")
        logs.append(log)
    return logs



# --- outputs, delivered on the gateway's side ---------------------------------------------

def _safe_relative(name: str) -> str | None:
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if not parts or any(p == ".." for p in parts):
        return None
    return "/".join(parts)


PUT_TIMEOUT = 60.0


def _put(url: str, stream, size: int, allow_private: bool) -> str | None:
    """PUT one file; None when the server took it, else why not."""
    try:
        targets.check_url(url, allow_private=allow_private)  # resolved now: no private address unless allowed
        resp = requests.put(url, data=stream, headers={"Content-Length": str(size)}, timeout=PUT_TIMEOUT,
                            allow_redirects=False)
    except (targets.UnsafeTarget, requests.RequestException) as exc:
        return f"PUT {url} failed: {exc}"
    if not 200 <= resp.status_code < 300:
        return f"PUT {url} answered {resp.status_code}"
    return None


def _join_url(base: str, relative: str) -> str:
    return base.rstrip("/") + "/" + "/".join(url_quote(part) for part in relative.split("/"))


def deliver_outputs(output_archive: Path, outputs: list[dict], folders: tuple[Path, ...],
                    allow_private: bool = False) -> dict[str, Any]:
    """Copy each output's files from the job's output archive to its file:// URL, or PUT
    them to its http(s) URL (a folder or a glob: the URL with each file's relative path).

    The archive comes from the worker, so it is untrusted: only regular files, no '..', each
    target inside the output's destination and the allowed folders. Returns
    ``{"files": [tesOutputFileLog...], "error": None or why}``."""
    files: list[dict[str, str]] = []
    try:
        tar = tarfile.open(output_archive, "r:gz")
    except (OSError, tarfile.TarError) as exc:
        return {"files": [], "error": f"the job's output archive cannot be read: {exc}"}
    with tar:
        members = {}
        for member in tar.getmembers():
            name = _safe_relative(member.name)
            if name:
                members[name] = member
        for out in outputs:
            n = out["index"]
            base = f"{LOG_DIR}/outputs/{n}/"
            if f"{LOG_DIR}/outputs/{n}.missing" in members:
                return {"files": files, "error": f"output {out['path']} was not produced by the task"}
            if out["dest"].startswith(("http://", "https://")):
                error = _put_output(tar, members, base, out, files, allow_private)
                if error:
                    return {"files": files, "error": error}
                continue
            dest = Path(out["dest"])
            if not _within(dest, folders):
                return {"files": files, "error": f"output {out['path']}: {dest} is no longer in an allowed folder"}
            rel_path = out["path"].lstrip("/")
            for name, member in sorted(members.items()):
                if not name.startswith(base) or not member.isfile():
                    continue
                inner = name[len(base):]  # the path under root/, without its leading /
                if out["glob"]:
                    prefix = out["prefix"].lstrip("/")
                    if not inner.startswith(prefix):
                        continue
                    target = dest / inner[len(prefix):].lstrip("/")
                elif inner == rel_path:
                    target = dest
                elif inner.startswith(rel_path + "/"):
                    target = dest / inner[len(rel_path) + 1:]
                else:
                    continue
                if not _within(target.parent if target.parent.exists() else dest, folders) or \
                        not (Path(os.path.realpath(target)) == Path(os.path.realpath(dest)) or
                             Path(os.path.realpath(dest)) in Path(os.path.realpath(target)).parents):
                    return {"files": files, "error": f"output {out['path']}: {target} is outside {dest}"}
                try:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    if target.is_symlink():
                        target.unlink()
                    with tar.extractfile(member) as src, open(target, "wb") as sink:
                        shutil.copyfileobj(src, sink)
                except OSError as exc:
                    return {"files": files, "error": f"output {out['path']}: could not write {target}: {exc}"}
                files.append({"url": target.as_uri(), "path": "/" + inner, "size_bytes": str(member.size)})
    return {"files": files, "error": None}


def _matches(out: dict, inner: str) -> str | None:
    """The part of ``inner`` (a path under root/) to append to the output's URL; '' for the path itself."""
    rel_path = out["path"].lstrip("/")
    if out["glob"]:
        prefix = out["prefix"].lstrip("/")
        return inner[len(prefix):].lstrip("/") if inner.startswith(prefix) else None
    if inner == rel_path:
        return ""
    if inner.startswith(rel_path + "/"):
        return inner[len(rel_path) + 1:]
    return None


def _put_output(tar, members: dict, base: str, out: dict, files: list, allow_private: bool) -> str | None:
    for name, member in sorted(members.items()):
        if not name.startswith(base) or not member.isfile():
            continue
        inner = name[len(base):]
        rest = _matches(out, inner)
        if rest is None:
            continue
        url = _join_url(out["dest"], rest) if rest else out["dest"]
        with tar.extractfile(member) as stream:
            error = _put(url, stream, member.size, allow_private)
        if error:
            return f"output {out['path']}: {error}"
        files.append({"url": url, "path": "/" + inner, "size_bytes": str(member.size)})
    return None
