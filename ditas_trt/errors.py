"""The one exception type for user mistakes (bad files, bad options, mismatched artifacts)."""


class DitasError(Exception):
    """A problem the user can fix; the CLI prints its message on one line and exits with code 2."""
