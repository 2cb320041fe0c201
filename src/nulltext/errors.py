"""The errors a user can cause and fix; the CLI prints each as one line and exits non-zero."""

import torch

from nulltext.ddim import ScheduleError
from nulltext.images import ImageError
from nulltext.inversion import InversionError
from nulltext.inversion_file import InversionFileError
from nulltext.model import ModelLoadError, PromptError, SizeError
from nulltext.outputs import OutputError
from nulltext.settings import SettingsError
from nulltext.token_alignment import PromptMismatchError

USER_ERRORS: tuple[type[BaseException], ...] = (
    ImageError, InversionError, InversionFileError, ModelLoadError, PromptError, PromptMismatchError,
    ScheduleError, SettingsError, SizeError, OutputError, FileExistsError,
)
# Also shown as one line by the CLI (--debug or NULLTEXT_DEBUG=1 for the traceback): bad values that reach
# the library (sizes, step ranges, scales), files that cannot be written, a GPU out of memory.
RUNTIME_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError, torch.OutOfMemoryError)
