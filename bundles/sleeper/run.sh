#!/bin/sh
# Runs for N seconds (first argument, default 60), printing a tick each second,
# so suspend / continue / hold are visible in its stdout.
seconds=${1:-60}
i=0
while [ "$i" -lt "$seconds" ]; do
    i=$((i + 1))
    echo "tick $i"
    sleep 1
done
echo "slept $seconds seconds" > "$MODACLOUDS_BATCH_OUTPUT/slept.txt"
