"""A source caption for a photo when the user has none (`nulltext invert PHOTO` without `--prompt`).

Two captioners, one call, `caption(image) -> str`:
- `BundledCaptioner`: the bundled model's world. It reads the photo with the judge
  (`nulltext.bundled.judge`: background, shape colour, shape by pixel analysis) and writes the training
  captions' first template, "a {colour} {shape} on a {background} background".
- `TransformersCaptioner`: an image-captioning model (BLIP, BLIP-2 and others `AutoModelForImageTextToText`
  loads that caption from the image alone) from a local folder or the local Hugging Face cache, never
  the network. transformers is imported only here, when such a captioner is loaded.

`load_captioner(source, model_source)` picks one: "bundled", a folder or a cached hub id, or None — the
bundled captioner for the bundled model, else a one-line error saying how to pass a caption or a captioner.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from PIL import Image

from nulltext.errors import NulltextError, first_line

BUNDLED = "bundled"


class CaptionError(NulltextError, ValueError):
    """No caption could be made; one line naming why and how to pass one."""


class Captioner(Protocol):
    name: str

    def __call__(self, image: Image.Image) -> str: ...


@dataclass(frozen=True)
class BundledCaptioner:
    """The bundled world's captioner: the judge's reading as a caption."""

    name: str = BUNDLED

    def __call__(self, image: Image.Image) -> str:
        from nulltext.bundled.judge import judge

        j = judge(image)
        if j.shape is None:
            raise CaptionError("the bundled captioner finds no circle, square or triangle in this photo: "
                               'pass its caption with --prompt "…"')
        return f"a {j.colour} {j.shape} on a {j.background} background"


@dataclass
class TransformersCaptioner:
    """An image-captioning model from transformers: greedy decoding of at most `max_new_tokens` tokens."""

    name: str
    processor: object
    model: torch.nn.Module
    max_new_tokens: int = 40

    @torch.no_grad()
    def __call__(self, image: Image.Image) -> str:
        inputs = self.processor(images=image.convert("RGB"), return_tensors="pt")
        device, dtype = next(self.model.parameters()).device, next(self.model.parameters()).dtype
        inputs = {k: v.to(device, dtype) if v.is_floating_point() else v.to(device) for k, v in inputs.items()}
        tokens = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)  # (1, tokens)
        text = " ".join(self.processor.batch_decode(tokens, skip_special_tokens=True)[0].split())
        if not text:
            raise CaptionError(f"captioner {self.name!r} wrote an empty caption for this photo: "
                               'pass its caption with --prompt "…"')
        return text


def load_captioner(source: str | Path | None, model_source: str | None = None,
                   device: str | torch.device = "cpu") -> Captioner:
    """The captioner `source` names ("bundled", a local folder or a hub id in the local cache); with none,
    the bundled captioner for the bundled model (`model_source` "bundled"), else a CaptionError."""
    if source is None:
        if model_source == BUNDLED:
            return BundledCaptioner()
        raise CaptionError('no caption for the photo: pass one with --prompt "…", or an image-captioning model '
                           "with --captioner FOLDER|HUB_ID (a local folder or the local Hugging Face cache, "
                           "e.g. Salesforce/blip-image-captioning-base)")
    if str(source) == BUNDLED:
        return BundledCaptioner()
    return _transformers_captioner(str(source), torch.device(device))


def _transformers_captioner(source: str, device: torch.device) -> TransformersCaptioner:
    """Load a captioner offline: a folder as it is, a hub id from the local cache only."""
    path = Path(source).expanduser()
    if path.exists() and not path.is_dir():
        raise CaptionError(f"captioner {source!r} is a file: pass the folder of an image-captioning model "
                           "(its config.json and weights) or a hub id in the local Hugging Face cache")
    try:
        from transformers import AutoModelForImageTextToText, AutoProcessor
        from transformers.utils import logging as hf_logging

        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            where = str(path) if path.is_dir() else source
            processor = AutoProcessor.from_pretrained(where, local_files_only=True)
            model = AutoModelForImageTextToText.from_pretrained(where, local_files_only=True)
        finally:
            hf_logging.set_verbosity(verbosity)
    except Exception as e:  # noqa: BLE001 - any failure of the loaders becomes one clear line
        raise CaptionError(f"cannot load captioner {source!r}: {first_line(e, 160)} — pass a local folder of an "
                           "image-captioning model or a hub id already in the local Hugging Face cache "
                           '(nulltext does not download captioners), or the caption with --prompt "…"') from None
    return TransformersCaptioner(source, processor, model.eval().to(device))
