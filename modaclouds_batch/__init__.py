"""modaclouds-batch: an HTCondor batch-submission gateway."""

__version__ = "0.1.0"
