#!/bin/sh
# The job's executable on the execute node (POSIX sh; runs in HTCondor's scratch dir).
# Unpacks the bundle (and input) into work/, provides the MODACLOUDS_BATCH_* contract,
# runs ./run.sh with the job's arguments, always packs output/ into output.tar.gz,
# and exits with run.sh's status.
sandbox=$(pwd)
work="$sandbox/work"
mkdir -p "$work" "$sandbox/output" "$sandbox/scratch" || exit 1

unpack() {
    # Archives were validated by the gateway; still refuse owners and special modes here.
    tar -xzf "$1" -C "$work" --no-same-owner --no-same-permissions --no-overwrite-dir || {
        echo "modaclouds-batch: could not unpack $(basename "$1")" >&2
        return 1
    }
}

unpack "$sandbox/bundle.tar.gz" || exit 1
if [ -f "$sandbox/input.tar.gz" ]; then
    unpack "$sandbox/input.tar.gz" || exit 1
    export MODACLOUDS_BATCH_INPUT="$sandbox/input.tar.gz"
fi
export MODACLOUDS_BATCH_OUTPUT="$sandbox/output"
export MODACLOUDS_BATCH_SCRATCH_DIRECTORY="$sandbox/scratch"

# The job's words: a `set -- '...'` line written by the gateway (see docs/design.md).
if [ -f "$sandbox/arguments.sh" ]; then
    . "$sandbox/arguments.sh"
fi

pack_output() {
    tar -czf "$sandbox/output.tar.gz" -C "$sandbox/output" . 2>/dev/null ||
        echo "modaclouds-batch: could not pack the output directory" >&2
}

cd "$work" || exit 1
if [ ! -f ./run.sh ]; then
    echo "modaclouds-batch: the bundle has no run.sh" >&2
    pack_output
    exit 1
fi

child=""
forward() {
    [ -n "$child" ] && kill -s "$1" "$child" 2>/dev/null
}
trap 'forward TERM' TERM
trap 'forward INT' INT
trap 'forward HUP' HUP

if [ -x ./run.sh ]; then
    ./run.sh "$@" &
else
    /bin/sh ./run.sh "$@" &
fi
child=$!
# wait returns early when a trapped signal arrives: keep waiting for the child itself.
while :; do
    wait "$child"
    status=$?
    kill -0 "$child" 2>/dev/null || break
done
if [ "$status" -gt 128 ]; then
    echo "modaclouds-batch: run.sh was killed by signal $((status - 128))" >&2
fi
pack_output
exit "$status"
