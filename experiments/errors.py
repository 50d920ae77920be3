"""The sweep layer's user-facing error (a DeeplabError, so CLIs print it as one line)."""

from deeplab.errors import DeeplabError


class ExperimentsError(DeeplabError):
    """A bad sweep spec, executor, or tracking set-up; the message names the culprit."""
