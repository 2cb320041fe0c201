"""The errors of loading and using a model: each one line naming the problem and the fix."""

from nulltext.errors import NulltextError


class ModelLoadError(NulltextError, RuntimeError):
    """A model that cannot be loaded; the message is one line naming the source and the fix."""


class PromptError(NulltextError, ValueError):
    """An empty, over-long or non-UTF-8 prompt; one line naming the prompt and the fix."""


class SizeError(NulltextError, ValueError):
    """An image size the model cannot use or the machine cannot hold; one line with the size and the fix."""
