#!/bin/sh
# modaclouds-batch launcher: the executable HTCondor runs for every gateway job.
#
# It starts in the job's scratch directory on the execute node, next to the files the
# gateway sent: bundle.tar.gz (always), input.tar.gz (when the user gave one) and
# arguments.sh (the job's words as a `set -- '...'` line; see docs/design.md), and for
# jobs built from data objects input-N.tar.gz and a files/ folder. Without
# arguments.sh, the launcher's own arguments are the job's. It:
#   1. creates work/, output/ and scratch/ there;
#   2. unpacks the bundle, then the input, into work/ (input files win a name clash,
#      as when unpacking both by hand), with no archived owners and no archived
#      permissions beyond the umask, so setuid/setgid bits never survive;
#   3. exports MODACLOUDS_BATCH_OUTPUT, MODACLOUDS_BATCH_SCRATCH_DIRECTORY and, with an
#      input, MODACLOUDS_BATCH_INPUT (the input archive itself), all absolute;
#   4. runs ./run.sh with the job's arguments in work/ (with /bin/sh when run.sh is not
#      executable and has no #! line), forwarding TERM, INT, HUP and QUIT to it;
#   5. always packs output/ into output.tar.gz, which HTCondor brings back, even when
#      run.sh failed or was killed (an empty one is written first of all, so it exists
#      however the launcher ends: it is the only file HTCondor transfers back);
#   6. exits with run.sh's status: 128+N when run.sh was killed by signal N (said on
#      stderr), 1 when the bundle cannot be unpacked or has no run.sh;
#   7. with MODACLOUDS_BATCH_TIME_LIMIT=N (the job's wall-time limit), stops run.sh
#      after N seconds as HTCondor would remove it (SIGTERM to its group, SIGKILL to
#      run.sh 10 s later if it is still there), packs the output as always, says so on
#      stderr and exits 124 (as coreutils' timeout does);
#   8. with MODACLOUDS_BATCH_DEDICATED_ACCOUNT=1 (the pool runs each slot's jobs as an
#      account of its own, see condor/pool/config.py), sets TMPDIR to scratch/ and
#      deletes whatever that account owns in /tmp, /var/tmp, /dev/shm and /run/lock
#      before run.sh starts and after it ends, so no file passes from one job (one
#      user) to the next.
#
# Signals: HTCondor suspends a job by stopping all its processes and resumes them with
# SIGCONT, which needs nothing from us. It removes a job with SIGTERM to this process;
# the launcher passes the signal on (to run.sh's whole process group when the launcher
# leads its own group, as under HTCondor, so run.sh's children hear it too), waits for
# run.sh to end, packs the output and exits. As for any background command of a
# non-interactive shell, run.sh starts with SIGINT and SIGQUIT ignored.
#
# POSIX sh only: it must work wherever HTCondor runs jobs. Archives were validated by
# the gateway (modaclouds_batch/jobs/bundles.py); the tar options are a second fence.

sandbox=$(pwd -P) || exit 1
# HTCondor brings back output.tar.gz and nothing else (transfer_output_files): it must
# exist however the job ends, so an empty one is there before anything can fail.
tar -czf "$sandbox/output.tar.gz" -T /dev/null 2>/dev/null || : > "$sandbox/output.tar.gz"
work=$sandbox/work
output=$sandbox/output
scratch=$sandbox/scratch
bundle=$sandbox/bundle.tar.gz
input=$sandbox/input.tar.gz

say() {
    printf 'launcher: %s\n' "$*" >&2
}

if [ -f "$sandbox/arguments.sh" ]; then
    . "$sandbox/arguments.sh" || { say "could not read arguments.sh"; exit 1; }
fi

if tar --version 2>/dev/null | grep -q 'GNU tar'; then
    untar_options="--no-same-owner --no-same-permissions --no-overwrite-dir --warning=no-timestamp"
else
    untar_options="-o"  # busybox and bsdtar: do not restore owners
fi

unpack() {
    # $untar_options is a list of plain words: split on purpose.
    # shellcheck disable=SC2086
    tar -xzf "$1" -C "$work" $untar_options || {
        say "could not unpack $(basename "$1") (see tar's message above)"
        return 1
    }
}

pack_output() {
    # The job may have left unreadable files or folders; the owner gets them back.
    chmod -R u+rwX "$output" 2>/dev/null
    if ! tar -czf "$sandbox/output.tar.gz" -C "$output" . ; then
        say "could not pack the output directory; output.tar.gz is left empty"
        tar -czf "$sandbox/output.tar.gz" -T /dev/null
    fi
}

# Files this account owns in the shared temporary folders: left by this job or by an
# earlier one that ran as the same dedicated account (and may have been another user's).
clear_shared_tmp() {
    [ "${MODACLOUDS_BATCH_DEDICATED_ACCOUNT:-}" = 1 ] || return 0
    me=$(id -u)
    [ "$me" != 0 ] || return 0  # never as root: those files are not the job's alone
    for shared in /tmp /var/tmp /dev/shm /run/lock; do
        [ -d "$shared" ] || continue
        find "$shared" -mindepth 1 -xdev -user "$me" -type d -exec chmod u+rwx {} + 2>/dev/null
        find "$shared" -mindepth 1 -xdev -user "$me" -delete 2>/dev/null
    done
    return 0
}

finish() {
    clear_shared_tmp
    pack_output
    # Whatever modes the archives or the job set, HTCondor must be able to clean up.
    chmod -R u+rwX "$work" "$scratch" 2>/dev/null
    exit "$1"
}

mkdir -p "$work" "$output" "$scratch" || exit 1
export MODACLOUDS_BATCH_OUTPUT="$output"
export MODACLOUDS_BATCH_SCRATCH_DIRECTORY="$scratch"
if [ "${MODACLOUDS_BATCH_DEDICATED_ACCOUNT:-}" = 1 ]; then
    export TMPDIR="$scratch"
    clear_shared_tmp
fi
unset MODACLOUDS_BATCH_INPUT

if [ ! -f "$bundle" ]; then
    say "bundle.tar.gz is missing from $sandbox"
    finish 1
fi
unpack "$bundle" || finish 1
if [ -f "$input" ]; then
    unpack "$input" || finish 1
    export MODACLOUDS_BATCH_INPUT="$input"
fi
# More inputs named by data id (input-1.tar.gz, input-2.tar.gz, ...), in order.
n=1
while [ -f "$sandbox/input-$n.tar.gz" ]; do
    unpack "$sandbox/input-$n.tar.gz" || finish 1
    n=$((n + 1))
done
# Command jobs: the binary and input files, by their names, into the working directory.
if [ -d "$sandbox/files" ]; then
    cp -R "$sandbox/files/." "$work/" || { say "could not place the job's files"; finish 1; }
fi
# Belt and braces for tars that keep them: no setuid, setgid or sticky bits, and the
# job can read and write everything it was given.
chmod -R u+rwX,u-s,g-s,o-t "$work" 2>/dev/null

cd "$work" || finish 1
if [ ! -f run.sh ]; then
    say "the bundle has no run.sh at its root; its entry point must be ./run.sh"
    finish 1
fi
if [ ! -x run.sh ] && [ "$(dd if=run.sh bs=2 count=1 2>/dev/null)" = "#!" ]; then
    chmod u+x run.sh  # honour the #! line even if the archive lost the exec bit
fi

# Does the launcher lead its own process group (HTCondor starts jobs that way)?
# Then a forwarded signal can go to the whole group: run.sh and all its children.
own_group=no
if [ -r "/proc/$$/stat" ]; then
    pgrp=$(sed 's/.*) //' "/proc/$$/stat" | cut -d' ' -f3)
    [ "$pgrp" = "$$" ] && own_group=yes
fi

child=
caught=
forward() {
    caught=$1
    [ -n "$child" ] || return 0
    if [ "$own_group" = yes ]; then
        trap '' "$1"  # the launcher is in the group too: ignore its own copy
        kill -s "$1" 0 2>/dev/null
        trap "forward $1" "$1"
    else
        kill -s "$1" "$child" 2>/dev/null
    fi
}
for sig in TERM INT HUP QUIT; do
    trap "forward $sig" "$sig"
done

if [ -x run.sh ]; then
    ./run.sh "$@" &
else
    /bin/sh ./run.sh "$@" &
fi
child=$!
[ -n "$caught" ] && forward "$caught"  # a signal that came before run.sh started

# The wall-time limit: a watchdog that ignores the signals it sends to the group and
# sleeps a second at a time, so it leaves no sleeper behind once run.sh has ended.
watchdog=
timed_out=$sandbox/.time-limit-exceeded
case "${MODACLOUDS_BATCH_TIME_LIMIT:-}" in
    ''|*[!0-9]*) ;;
    *)
        (
            trap '' TERM INT HUP QUIT
            waited=0
            while [ "$waited" -lt "$MODACLOUDS_BATCH_TIME_LIMIT" ]; do
                sleep 1
                kill -0 "$child" 2>/dev/null || exit 0
                waited=$((waited + 1))
            done
            : > "$timed_out"
            kill -s TERM $$ 2>/dev/null
            sleep 10
            kill -s KILL "$child" 2>/dev/null
        ) &
        watchdog=$!
        ;;
esac

# wait returns early (status > 128) when a trapped signal arrives: keep waiting until
# run.sh itself has ended, then take its status.
while :; do
    wait "$child"
    status=$?
    [ -n "$caught" ] || break
    caught=
    kill -0 "$child" 2>/dev/null && continue
    # run.sh ended around the signal: ask once more for its own status, which a shell
    # that already reported it answers with 127.
    wait "$child"
    again=$?
    [ "$again" -ne 127 ] && status=$again
    break
done

[ -n "$watchdog" ] && kill -s KILL "$watchdog" 2>/dev/null
if [ -f "$timed_out" ]; then
    rm -f "$timed_out"
    say "run.sh exceeded its time limit of $MODACLOUDS_BATCH_TIME_LIMIT s and was stopped (exit status 124)"
    finish 124
fi
if [ "$status" -gt 128 ] && [ "$status" -lt 192 ]; then
    say "run.sh ended by signal $((status - 128)) ($(kill -l "$status" 2>/dev/null || echo '?')): exit status $status"
fi
finish "$status"
