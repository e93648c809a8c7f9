#!/bin/sh
# Says hello, shows its arguments and the files it was given, writes one output file.
echo "hello from $(hostname)"
echo "arguments ($#):"
for arg in "$@"; do
    echo "  [$arg]"
done
echo "files in the working directory:"
find . -type f | sort
echo "hello, world" > "$MODACLOUDS_BATCH_OUTPUT/hello.txt"
echo "this line goes to stderr" >&2
