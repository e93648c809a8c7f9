#!/bin/sh
# Says hello; shows its arguments (one per line, in brackets, so spaces and quotes are
# visible), the MODACLOUDS_BATCH_* variables and the files it was given; writes
# hello.txt (the greeting and the arguments) into the output directory.
echo "hello from $(uname -n)"
echo "arguments ($#):"
for arg in "$@"; do
    printf '  [%s]\n' "$arg"
done
echo "MODACLOUDS_BATCH_INPUT=${MODACLOUDS_BATCH_INPUT-(not set: no job-input)}"
echo "MODACLOUDS_BATCH_OUTPUT=$MODACLOUDS_BATCH_OUTPUT"
echo "MODACLOUDS_BATCH_SCRATCH_DIRECTORY=$MODACLOUDS_BATCH_SCRATCH_DIRECTORY"
echo "working directory: $(pwd)"
echo "files in the working directory:"
find . -type f | sort
{
    echo "hello, world"
    for arg in "$@"; do
        printf '%s\n' "$arg"
    done
} > "$MODACLOUDS_BATCH_OUTPUT/hello.txt"
echo "this line goes to stderr" >&2
