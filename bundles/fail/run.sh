#!/bin/sh
# Fails on purpose: a line on stdout, a message on stderr, and exit status 3,
# so the job ends "failed" with exit_status 3.
echo "about to fail"
echo "fail: something went wrong (on purpose)" >&2
exit 3
