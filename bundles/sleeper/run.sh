#!/bin/sh
# Runs for N seconds (first argument, default 60), printing a timestamped tick each
# second: a suspended job visibly stops ticking, and a continued one resumes. On
# SIGTERM (the job is removed) it says where it stopped and exits 143.
seconds=${1:-60}
case $seconds in
    '' | *[!0-9]*)
        echo "sleeper: the argument must be a whole number of seconds, not '$seconds'" >&2
        exit 2
        ;;
esac
i=0
trap 'echo "sleeper: terminated after $i of $seconds ticks" >&2; exit 143' TERM
while [ "$i" -lt "$seconds" ]; do
    i=$((i + 1))
    echo "tick $i/$seconds $(date -u +%H:%M:%S)"
    sleep 1
done
echo "slept $seconds seconds" > "$MODACLOUDS_BATCH_OUTPUT/slept.txt"
