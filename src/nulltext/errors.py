"""The errors a user can cause and fix; the CLI prints each as one line and exits non-zero."""

from nulltext.images import ImageError
from nulltext.inversion import InversionError
from nulltext.inversion_file import InversionFileError
from nulltext.model import ModelLoadError, PromptError
from nulltext.token_alignment import PromptMismatchError

USER_ERRORS: tuple[type[BaseException], ...] = (
    ImageError, InversionError, InversionFileError, ModelLoadError, PromptError, PromptMismatchError,
    FileExistsError,
)
