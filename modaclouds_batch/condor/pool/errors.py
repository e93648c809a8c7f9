"""The one exception the pool tooling raises to its callers."""


class PoolError(Exception):
    """Something the operator must fix, said in one line (the CLI prints it as is).

    Raised instead of letting a subprocess or OS error escape, so `modaclouds-batch pool`
    never shows a stack trace for a condition the user can act on (not root, no disk
    space, a daemon that did not start: the message names the log to read).
    """
