"""The `Model` a user's weights become: encode text, predict noise, VAE in and out, and the checks on its
inputs (prompts, sizes). What differs between SD 1.x, 2.x, SDXL and SD 3.x is data here
(`TextConditioning`, SDXL's micro-conditioning, SD 3.x's joint text sequence and VAE shift), never a
branch in the algorithms.

SD 3.x (Esser et al. 2024) as its pipeline builds it: each CLIP encoder's penultimate features side by
side, zero-padded to the transformer's text width, then T5's features (zeros without T5) along the
sequence; the pooled vector is both CLIPs' projections side by side. The denoiser is an MMDiT
transformer whose output is the flow's velocity; its schedule comes from the scheduler config
(`nulltext.core.schedule`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from nulltext.core.conditioning import TextConditioning
from nulltext.errors import short
from nulltext.model.device import available_memory
from nulltext.model.errors import PromptError, SizeError
from nulltext.settings import utf8_problem


def _first_parameter(module: torch.nn.Module) -> torch.Tensor:
    return next(module.parameters())


@dataclass
class Model:
    """A loaded Stable Diffusion model: components, scheduler config, source and identity."""

    unet: Any  # the denoiser: a UNet2DConditionModel, or SD 3.x's SD3Transformer2DModel
    vae: Any
    text_encoder: Any
    tokenizer: Any
    scheduler_config: dict
    source: str
    identity: str
    text_encoder_2: Any = None  # SDXL: the second encoder (with projection: the pooled embedding)
    tokenizer_2: Any = None
    loras: tuple[str, ...] = ()  # "file.safetensors:scale" of each LoRA fused into the weights
    text_encoder_3: Any = None  # SD 3.x: the optional T5 encoder
    tokenizer_3: Any = None
    max_sequence_length: int = 256  # SD 3.x: T5's tokens (zeros without T5), the pipeline's default

    # The denoiser's first parameter, read live: diffusers' own `.device` / `.dtype` walk every module for
    # offloading and layer-wise casting hooks (which nulltext does not use) — 2.3–3.1 ms a read on SD 1.5's
    # UNet, 8–12 ms on SDXL's, against 0.01 ms (benchmarks/parameter_walk_benchmark.py) — and every
    # UNet pass reads them.
    @property
    def device(self) -> torch.device:
        return _first_parameter(self.unet).device

    @property
    def dtype(self) -> torch.dtype:
        return _first_parameter(self.unet).dtype

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)

    @property
    def shift_factor(self) -> float:
        """The VAE's latent shift (SD 3.x); 0 for SD 1.x/2.x and SDXL."""
        return float(self.vae.config.get("shift_factor") or 0.0)

    @property
    def joint_attention(self) -> bool:
        """True for SD 3.x's MMDiT, whose image and text tokens attend jointly; False for a UNet."""
        return "joint_attention_dim" in self.unet.config

    @property
    def latent_channels(self) -> int:
        return int(self.unet.config.in_channels)

    @property
    def default_size(self) -> tuple[int, int]:
        """(width, height) the UNet was trained at: sample_size × VAE factor."""
        s = self.unet.config.sample_size
        h, w = (s, s) if isinstance(s, int) else tuple(s)
        return (w * self.vae_scale_factor, h * self.vae_scale_factor)

    @property
    def size_multiple(self) -> int:
        """Image sides must be multiples of this: VAE factor × the UNet's own downsampling (MMDiT: its patch size)."""
        if self.joint_attention:
            return self.vae_scale_factor * int(self.unet.config.patch_size)
        return self.vae_scale_factor * 2 ** (len(self.unet.config.block_out_channels) - 1)

    @property
    def max_tokens(self) -> int:
        return int(self.tokenizer.model_max_length)

    @property
    def text_encoders(self) -> list[tuple[Any, Any]]:
        """(tokenizer, encoder) pairs whose token features are concatenated: one, or SDXL's two."""
        pairs = [(self.tokenizer, self.text_encoder)]
        return pairs if self.text_encoder_2 is None else pairs + [(self.tokenizer_2, self.text_encoder_2)]

    @property
    def text_tokens(self) -> int:
        """Length of the token embeddings the denoiser reads (SD 3.x: CLIP's tokens, then T5's)."""
        return self.max_tokens + (self.max_sequence_length if self.joint_attention else 0)

    @property
    def text_dim(self) -> int:
        """Width of the token embeddings the denoiser reads (SDXL: both encoders'; SD 3.x: the transformer's)."""
        if self.joint_attention:
            return int(self.unet.config.joint_attention_dim)
        return sum(int(enc.config.hidden_size) for _, enc in self.text_encoders)

    @property
    def pooled_dim(self) -> int | None:
        """Width of the pooled text embedding (SDXL, SD 3.x); None for models without one."""
        if self.joint_attention:
            return int(self.unet.config.pooled_projection_dim)
        return None if self.text_encoder_2 is None else int(self.text_encoder_2.config.projection_dim)

    # -- text -----------------------------------------------------------------------------------

    def check_prompt(self, prompt: str, allow_empty: bool = False) -> None:
        """Raise PromptError for an empty, over-long or non-UTF-8 prompt."""
        check_prompt_text(prompt)
        if not prompt.strip() and not allow_empty:
            raise PromptError("the prompt is empty — describe the photo, e.g. --prompt \"a cat sitting next to a mirror\"")
        n = len(self.tokenizer(prompt).input_ids)
        if n > self.max_tokens:
            raise PromptError(
                f"prompt {short(prompt)!r} is {n} tokens long; this model reads at most {self.max_tokens} "
                "(start and end included) — shorten it"
            )

    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        """Token embeddings (batch, tokens, dim) in the model's dtype; "" gives ψ("")."""
        return self.text_conditioning(prompts).tokens

    @torch.no_grad()
    def text_conditioning(self, prompts: list[str]) -> TextConditioning:
        """Everything the UNet reads of the prompts, in the model's dtype.

        SD 1.x/2.x: the encoder's last hidden state (B, tokens, dim). SDXL (as its pipeline): each
        encoder's penultimate hidden state, concatenated (B, tokens, dim₁ + dim₂), and the second
        encoder's projected pooled embedding (B, P). SD 3.x: see the module's docstring.
        """
        for p in prompts:
            self.check_prompt(p, allow_empty=True)
        if self.joint_attention:
            return self._joint_conditioning(prompts)
        if self.text_encoder_2 is None:
            return TextConditioning(self.text_encoder(self._token_ids(self.tokenizer, prompts))[0].to(self.dtype))
        features, pooled = [], None
        for tokenizer, encoder in self.text_encoders:
            out = encoder(self._token_ids(tokenizer, prompts), output_hidden_states=True)
            features.append(out.hidden_states[-2])
            pooled = out[0]  # the last encoder's projected (B, P) text embedding
        return TextConditioning(torch.cat(features, dim=-1).to(self.dtype), pooled.to(self.dtype))

    def _joint_conditioning(self, prompts: list[str]) -> TextConditioning:
        """SD 3.x's: (B, CLIP tokens + T5 tokens, joint width) and (B, P₁ + P₂), as StableDiffusion3Pipeline."""
        features, pooled = [], []
        for tokenizer, encoder in self.text_encoders:  # CLIP-L, CLIP-G
            out = encoder(self._token_ids(tokenizer, prompts), output_hidden_states=True)
            features.append(out.hidden_states[-2])
            pooled.append(out[0])
        width = self.text_dim
        clip = F.pad(torch.cat(features, dim=-1), (0, width - sum(f.shape[-1] for f in features)))
        if self.text_encoder_3 is None:
            t5 = torch.zeros(len(prompts), self.max_sequence_length, width, device=self.device, dtype=clip.dtype)
        else:
            ids = self.tokenizer_3(prompts, padding="max_length", max_length=self.max_sequence_length, truncation=True,
                                   add_special_tokens=True, return_tensors="pt").input_ids.to(self.device)
            t5 = self.text_encoder_3(ids)[0]
        return TextConditioning(torch.cat([clip.to(self.dtype), t5.to(self.dtype)], dim=-2),
                                torch.cat(pooled, dim=-1).to(self.dtype))

    def _token_ids(self, tokenizer, prompts: list[str]) -> torch.Tensor:
        return tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                         return_tensors="pt").input_ids.to(self.device)

    def null_conditioning(self) -> TextConditioning:
        """ψ(""), a batch of one: the unconditional conditioning, ∅_T's start in Algorithm 1."""
        return self.text_conditioning([""])

    def added_conditioning(self, conditioning: TextConditioning, latents: torch.Tensor) -> dict | None:
        """SDXL's `added_cond_kwargs`: the pooled embedding and the size micro-conditioning; None for SD 1.x/2.x.

        `add_time_ids` are (original height, width, crop top, left, target height, width) in pixels,
        as the SDXL pipeline builds them by default: the image size from the latent, no crop.
        """
        if self.unet.config.addition_embed_type != "text_time":
            return None
        if conditioning.pooled is None:
            raise ValueError("this SDXL model needs pooled text embeddings — pass model.text_conditioning(...)")
        h, w = (int(s) * self.vae_scale_factor for s in latents.shape[-2:])
        ids = torch.tensor([[h, w, 0, 0, h, w]], device=self.device, dtype=self.dtype).expand(latents.shape[0], -1)
        return {"text_embeds": conditioning.pooled.to(self.device, self.dtype), "time_ids": ids}

    def predict(self, latents: torch.Tensor, timestep: int, conditioning: TextConditioning | torch.Tensor) -> torch.Tensor:
        """The UNet's raw output (ε, v or x0 by the scheduler's prediction type), as float32.

        `conditioning` is a TextConditioning, or for SD 1.x/2.x its token embeddings alone.
        """
        cond = TextConditioning.of(conditioning)
        if self.joint_attention:  # SD 3.x: a float timestep per row, the pooled vector beside it
            if cond.pooled is None:
                raise ValueError("this SD 3.x model needs pooled text embeddings — pass model.text_conditioning(...)")
            t = torch.tensor(timestep, device=self.device, dtype=torch.float32).expand(latents.shape[0])
            return self.unet(hidden_states=latents.to(self.dtype), timestep=t,
                             encoder_hidden_states=cond.tokens.to(self.device, self.dtype),
                             pooled_projections=cond.pooled.to(self.device, self.dtype)).sample.float()
        t = torch.tensor(timestep, device=self.device)
        out = self.unet(latents.to(self.dtype), t, encoder_hidden_states=cond.tokens.to(self.dtype),
                        added_cond_kwargs=self.added_conditioning(cond, latents)).sample
        return out.float()

    # -- images ---------------------------------------------------------------------------------

    @torch.no_grad()
    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """z0 = (VAE posterior mean − shift factor) × scaling factor, for an image (B,3,H,W) in [-1,1]."""
        x = image.to(self.device, _first_parameter(self.vae).dtype)
        mean = self.vae.encode(x).latent_dist.mean
        return (mean if not self.shift_factor else mean - self.shift_factor) * self.scaling_factor

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Image (B,3,H,W) in [-1,1], float32, from latents; one at a time, so results do not depend on the batch."""
        z = latents.to(self.device, _first_parameter(self.vae).dtype) / self.scaling_factor
        z = z if not self.shift_factor else z + self.shift_factor
        return torch.cat([self.vae.decode(z[i : i + 1]).sample for i in range(z.shape[0])]).float().clamp(-1, 1)

    def check_size(self, size: tuple[int, int]) -> None:
        """Raise SizeError unless (width, height) fits the model's downsampling and the device's memory."""
        m = self.size_multiple
        if len(size) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in size) or min(size) <= 0:
            raise SizeError(f"image size {size!r} must be two positive whole numbers — use e.g. "
                            f"--size {self.default_size[0]}x{self.default_size[1]}")
        if size[0] % m or size[1] % m:
            raise SizeError(f"image size {size[0]}x{size[1]} is not a multiple of {m} for this model — use e.g. "
                            f"--size {self.default_size[0]}x{self.default_size[1]}")
        needed, available = self.memory_needed(size), available_memory(self.device)
        if needed > available:
            raise SizeError(f"image size {size[0]}x{size[1]} needs at least {needed / 2**30:,.1f} GiB on "
                            f"{self.device.type} with this model, {available / 2**30:,.1f} GiB is available — "
                            f"use a smaller --size, e.g. {self.default_size[0]}x{self.default_size[1]}")

    def memory_needed(self, size: tuple[int, int]) -> int:
        """A lower bound of the bytes one inversion or edit of a (width, height) image needs beyond the weights.

        The photo in its forms (uint8, float64, float32), the VAE's full-resolution activations (3 live
        feature maps of its first block's width), its mid-block attention over the latent pixels, and
        one set of attention probabilities (batch 2 × heads × pixels²) at the UNet's finest attention
        level. Nothing is allocated.
        """
        W, H = size
        f, unet = self.vae_scale_factor, self.unet.config
        bytes_per = 2 if self.dtype in (torch.float16, torch.bfloat16) else 4
        if self.joint_attention:  # every block attends over the image patches and the text tokens jointly
            tokens = (W // f) * (H // f) // int(unet.patch_size) ** 2 + self.text_tokens
            vae = W * H * 3 * int(self.vae.config.block_out_channels[0]) * 4
            return int(W * H * 3 * 13 + vae + 2 * int(unet.num_attention_heads) * tokens * tokens * bytes_per)
        pixels, latent_pixels = W * H, (W // f) * (H // f)
        photo = pixels * 3 * (1 + 8 + 4)
        vae = pixels * 3 * int(self.vae.config.block_out_channels[0]) * 4 + latent_pixels**2 * 4
        heads = unet.num_attention_heads or unet.attention_head_dim
        attention = 0
        for level, block in enumerate(unet.down_block_types):
            if "Attn" in block:
                n = latent_pixels // 4**level
                level_heads = heads[level] if isinstance(heads, (list, tuple)) else heads
                attention = max(attention, 2 * int(level_heads) * n * n * bytes_per)
        return int(photo + vae + attention)


def check_prompt_text(prompt) -> None:
    """Raise PromptError unless `prompt` is a string of valid Unicode (no undecodable bytes)."""
    if not isinstance(prompt, str):
        raise PromptError(f"the prompt must be text, got {type(prompt).__name__}")
    problem = utf8_problem(prompt)
    if problem:
        raise PromptError(f"the prompt is not valid UTF-8 ({problem}) — pass the caption as UTF-8 text")

