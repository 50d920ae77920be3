"""The project's exception: one line that names the culprit (field, file, iteration)."""


class DeeplabError(Exception):
    """A user-facing error; the CLI prints ``str(err)`` on one line and exits non-zero."""
