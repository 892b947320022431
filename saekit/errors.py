"""One exception type for problems a user can fix.

The CLI prints these as a single line (no traceback), so the message must name the problem and the fix.
"""


class SaekitError(Exception):
    """A user-facing error: bad input, a missing or corrupted file, an impossible config."""
