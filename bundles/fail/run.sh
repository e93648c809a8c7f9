#!/bin/sh
# Fails on purpose: a message on stderr and exit status 3.
echo "about to fail"
echo "something went wrong (on purpose)" >&2
exit 3
