"""The one exception type for mistakes a user can fix (bad paths, bad values, unverified data).

The command line prints its message on one line and exits non-zero, without a traceback.
"""


class SpikeAdvError(Exception):
    """A user-facing error: the message says what is wrong and how to fix it."""
