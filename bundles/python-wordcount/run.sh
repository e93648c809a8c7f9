#!/bin/sh
# Counts the words of every input file; writes counts.json into the output directory.
exec python3 wordcount.py "$@"
