#!/bin/sh
# Counts the words of the files in the job's input tarball; see wordcount.py.
exec python3 wordcount.py "$@"
