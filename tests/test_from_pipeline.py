"""A diffusers pipeline the user already holds, as the model (`load_model(pipe)`): its modules shared,
not copied, and results bit-identical to loading the same weights from their folder (the same computation
on the same weights in one process); SD 1.x and SDXL."""

import dataclasses

import pytest
import torch

from nulltext.bundled import data
from nulltext.editing import edit, reconstruct
from nulltext.inversion import InversionConfig, invert
from nulltext.io.images import to_tensor
from nulltext.model import ModelLoadError, load_model

CONFIG = InversionConfig(num_steps=4, trials=3)


def _pipeline(family: str, folder):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    cls = StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline
    return cls.from_pretrained(folder)


@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_a_loaded_pipeline_is_the_model_of_its_folder(family, tiny_dir, tiny_xl_dir):
    folder = tiny_xl_dir if family == "sdxl" else tiny_dir
    pipe = _pipeline(family, folder)
    shared, loaded = load_model(pipe), load_model(folder, device="cpu")
    assert shared.unet is pipe.unet and shared.vae is pipe.vae and shared.text_encoder is pipe.text_encoder
    assert shared.text_encoder_2 is getattr(pipe, "text_encoder_2", None)  # SDXL's second encoder, or none
    assert shared.identity == loaded.identity and shared.source == f"pipeline {type(pipe).__name__}"
    image, caption = data.sample("test", 2, shared.default_size[0])
    ours, theirs = (invert(m, to_tensor(image), caption, CONFIG) for m in (shared, loaded))
    assert torch.equal(ours.null_embeddings, theirs.null_embeddings)  # bit-identical on the CPU
    assert torch.equal(reconstruct(shared, ours), reconstruct(loaded, theirs))
    # an inversion made through the pipeline replays on the folder's model (same weights identity)
    target = caption.replace(caption.split()[2], "square" if "square" not in caption else "circle")
    assert torch.equal(edit(loaded, ours, [target]).images, edit(shared, ours, [target]).images)


def test_a_pipeline_elsewhere_or_incomplete_is_refused_in_one_line(tiny_dir):
    pipe = _pipeline("sd", tiny_dir)
    with pytest.raises(ModelLoadError, match=r"pipe\.to") as e:
        load_model(pipe, dtype="float16")
    assert "\n" not in str(e.value)
    assert pipe.unet.dtype == torch.float32  # nothing was moved
    pipe.text_encoder = None
    with pytest.raises(ModelLoadError, match="has no text_encoder"):
        load_model(pipe)
