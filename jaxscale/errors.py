"""User-facing errors.

Raise :class:`UsageError` for anything the *user* can fix (bad config key, missing dataset, bad
flag, unreadable input file). The CLI prints ``jaxscale: error: <message>`` on one line and exits
with code 2; no traceback. The message must name the problem *and* the fix.
"""


class UsageError(Exception):
    """A problem with the user's input (config, flags, files); CLI exit code 2."""

    exit_code = 2


class DataMissingError(UsageError):
    """A dataset is not present locally and downloading was not requested."""
