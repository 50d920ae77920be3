"""The analysis layer's user-facing error."""

from deeplab.errors import DeeplabError


class AnalysisError(DeeplabError):
    """Bad analysis input (no runs, nothing to import, missing metric); the message names the culprit."""
