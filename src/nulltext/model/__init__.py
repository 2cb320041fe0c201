"""Loading a Stable Diffusion model, and what the rest of nulltext asks of it.

`load_model(source)` takes the bundled model (default), a hub id, a local diffusers folder, or a
single .safetensors/.ckpt checkpoint, and returns a `Model`: the UNet, VAE, text encoder(s),
tokenizer(s) and a DDIM scheduler built from the model's own scheduler config, on one device and
dtype, with a stable identity of the weights. Sizes, the VAE scaling factor and the prediction type
come from the model's configs, never from constants.

Model families (DESIGN.md): what differs between SD 1.x, SD 2.x and SDXL is kept here, as data the
algorithms receive. `text_conditioning` gives a `TextConditioning` (token embeddings and, for SDXL,
the pooled embedding); `null_conditioning` the unconditional ψ("") every family starts from (the
paper's ∅_T; SDXL's pipeline would use zeros when given no negative prompt, a worse start for the
optimisation: see README, "Model families"); `predict` adds SDXL's size micro-conditioning
(`add_time_ids`) derived from the latent. SD 2.x needs nothing
extra: its diffusers text encoder is already cut at OpenCLIP's penultimate layer (23 of 24 layers),
so its last hidden state is the penultimate feature the model was trained on.

The package: `compute` (the Model), `loading` (load_model and its sources), `refusals` (architectures
nulltext does not drive, refused in one line), `device` (device, dtype, memory).
"""

from nulltext.model.compute import Model, check_prompt_text, utf8_problem
from nulltext.model.errors import ModelLoadError, PromptError, SizeError
from nulltext.model.device import DTYPES, available_memory, default_device, resolve_dtype
from nulltext.model.loading import BUNDLED, bundled_model_path, from_pipeline, load_model, weights_identity
from nulltext.model.refusals import SUPPORTED_PIPELINES, SUPPORTED_TEXT, UNSUPPORTED_PIPELINES, check_architecture

__all__ = ["BUNDLED", "DTYPES", "SUPPORTED_PIPELINES", "SUPPORTED_TEXT", "UNSUPPORTED_PIPELINES", "Model",
           "ModelLoadError", "PromptError", "SizeError", "available_memory", "bundled_model_path", "check_architecture",
           "check_prompt_text", "default_device", "from_pipeline", "load_model", "resolve_dtype", "utf8_problem", "weights_identity"]
