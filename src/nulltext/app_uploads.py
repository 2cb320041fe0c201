"""The web app's file fields: a request may hand the server only files it uploaded, each within the limit.

Gradio checks a file field's path against its upload folder only when the value carries Gradio's `meta`
marker; without it, `gr.Image` opens whatever path the request names, and it decodes an inline `data:`
URL of any size. So the page is a `GatedBlocks`, which checks every file a request's values carry
before Gradio touches any of them (before its upload-folder check, its copy into the cache, a URL
download or a preprocess):
    - a path must be a file this server received as an upload or wrote itself (it is in one of the
      page's temp-file sets, which Gradio fills as it takes uploads and caches outputs) and must lie
      in Gradio's upload folder once resolved (`..` and links resolved); it must be a regular file
      (no FIFO, device or folder) within the upload limit;
    - an inline `data:` URL is measured from its base64 length before anything decodes it; only
      `gr.Image` reads one (other fields read the path, which must then be an upload as above).
Every failure of Gradio's preprocessing (not an image, a decompression bomb, a bad layer) becomes one
line in the page that names no server path.

(A component subclass with its own `preprocess` would do the same per field, but Gradio writes a
`.pyi` stub beside the module of every component class it sees; a `gr.Blocks` subclass writes none.)
"""

from __future__ import annotations

import os
import stat
from typing import Any, Iterator

import gradio as gr
from gradio.exceptions import ComponentProcessingError
from gradio.utils import get_upload_folder
from PIL import Image

FILE_FIELDS = (gr.Image, gr.File, gr.ImageEditor)  # the input components whose values name files


class GatedBlocks(gr.Blocks):
    """gr.Blocks whose events take files only as uploads this server received, within `max_file_size`.

    `max_file_size` is the limit `launch(max_file_size=…)` sets for uploads; the same bytes bound inline
    files. `name(component, what)` gives a file field the word its errors use ("photo", "mask", …).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._names: dict[int, str] = {}

    def name(self, component: gr.components.Component, what: str) -> gr.components.Component:
        self._names[component._id] = what
        return component

    async def preprocess_data(self, block_fn, inputs: list[Any], state, explicit_call: bool = False):
        for block, value in zip(block_fn.inputs, inputs):
            if isinstance(block, FILE_FIELDS):
                for file in _file_objects(value):
                    self.check(file, self._names.get(block._id, "file"), reads_inline=isinstance(block, gr.Image))
        try:
            return await super().preprocess_data(block_fn, inputs, state, explicit_call)
        except ComponentProcessingError as error:  # each of the app's events has at most one file field
            fields = [self._names.get(b._id, "file") for b in block_fn.inputs if isinstance(b, FILE_FIELDS)]
            raise _unreadable(fields[0] if fields else "input", error.__cause__) from None

    def check(self, file: dict, what: str, reads_inline: bool = False) -> None:
        """Raise a one-line gr.Error unless `file` (a request's file object) is an upload this server received."""
        limit = self.max_file_size
        url, path = file.get("url"), file.get("path")
        if isinstance(url, str) and url.startswith("data:"):
            size = len(url.rsplit(",", 1)[-1]) * 3 // 4  # decoded bytes, measured before decoding
            if limit is not None and size > limit:
                raise _refused(f"the {what} sent inline is {_mb(size)}, over the {_mb(limit)} upload limit — "
                               "send a smaller file")
            if reads_inline:
                return  # gr.Image decodes the URL and never opens the path
        if not isinstance(path, str) or not self._received(path):
            raise _refused(f"the {what} is not a file uploaded to this server — upload it (the app opens no "
                           "path a request names)")
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            raise _refused(f"the {what} is not a regular file — upload a file")
        if limit is not None and info.st_size > limit:
            raise _refused(f"the {what} is {_mb(info.st_size)}, over the {_mb(limit)} upload limit — upload a smaller file")

    def _received(self, path: str) -> bool:
        folder = os.path.realpath(get_upload_folder())
        real = os.path.realpath(path)
        if os.path.commonpath([folder, real]) != folder:
            return False
        return any(path in files or real in files for files in self.temp_file_sets)


def _file_objects(value: Any) -> Iterator[dict]:
    """Every object in a request's value that names a file (a `path` or a `url`), however deeply nested."""
    if isinstance(value, dict):
        if "path" in value or "url" in value:
            yield value
        else:
            for item in value.values():
                yield from _file_objects(item)
    elif isinstance(value, list):
        for item in value:
            yield from _file_objects(item)


def _unreadable(what: str, cause: BaseException | None) -> gr.Error:
    """A preprocessing failure as one line naming no path (a PIL message names the server's temp file)."""
    if isinstance(cause, Image.DecompressionBombError):
        return _refused(f"the {what} has more pixels than the app decodes — upload a smaller image")
    return _refused(f"the {what} is not an image the app can read — upload a PNG, JPEG or WebP file")


def _refused(message: str) -> gr.Error:
    return gr.Error(message, print_exception=False)


def _mb(size: int) -> str:
    return f"{size / 2**20:.3g} MB"
