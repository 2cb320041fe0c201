"""LoRAs on a loaded model: `--lora FILE[:SCALE]`, fused into the weights before anything runs.

Each LoRA file is read by diffusers' LoRA loaders (`lora_state_dict`: diffusers, PEFT, kohya and A1111
layouts), injected with PEFT, fused at its scale and the adapter layers removed, so the model that runs
is a plain UNet (and text encoders) with changed weights: attention processors, dtypes and speed are as
without LoRAs. The model identity covers each file's bytes and scale (`identity_entries`), so an `.nti`
made with a LoRA refuses the model without it and the other way round.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch

from nulltext.errors import first_line
from nulltext.model.errors import ModelLoadError


@dataclass(frozen=True)
class LoRA:
    """One LoRA file and the scale it is fused at (1.0: as trained)."""

    path: Path
    scale: float = 1.0

    @classmethod
    def parse(cls, spec: str | Path | tuple | LoRA) -> LoRA:
        """"FILE", "FILE:SCALE", a path, (path, scale) or a LoRA."""
        if isinstance(spec, LoRA):
            return spec
        if isinstance(spec, tuple):
            return cls(Path(spec[0]).expanduser(), float(spec[1]))
        text = str(spec)
        head, sep, tail = text.rpartition(":")
        if sep and not Path(text).exists():
            try:
                return cls(Path(head).expanduser(), float(tail))
            except ValueError:
                pass
        return cls(Path(text).expanduser())


def identity_entries(loras: list[LoRA]) -> list[list]:
    """What the model identity records of its LoRAs: each file's content hash and scale, in order."""
    return [[hashlib.sha256(lora.path.read_bytes()).hexdigest()[:16], lora.scale] for lora in loras]


def check_loras(loras: list[LoRA]) -> None:
    """Each LoRA names a readable .safetensors file and a finite scale (before any weight is read)."""
    for lora in loras:
        if not lora.path.is_file():
            raise ModelLoadError(f"LoRA {str(lora.path)!r} is not a file — pass --lora FILE[:SCALE] with a "
                                 ".safetensors LoRA file")
        if lora.path.suffix != ".safetensors":
            raise ModelLoadError(f"LoRA {str(lora.path)!r} is not a .safetensors file (pickled LoRAs can run code) "
                                 "— convert it to .safetensors")
        if not torch.isfinite(torch.tensor(lora.scale)):
            raise ModelLoadError(f"LoRA scale {lora.scale} of {str(lora.path)!r} is not a number — pass FILE:SCALE "
                                 "with a scale such as 0.8")


def fuse_loras(components: dict, loras: list[LoRA]) -> None:
    """Fuse each LoRA into the UNet and text encoders of `components` (diffusers' loaders, PEFT), in place."""
    if not loras:
        return
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    if "joint_attention_dim" in components["unet"].config:
        raise ModelLoadError("LoRAs on SD 3.x models are not fused by nulltext yet — fuse it with diffusers "
                             "(pipe.load_lora_weights, pipe.fuse_lora) and pass the pipeline or its saved folder")
    xl = components.get("text_encoder_2") is not None
    loader = StableDiffusionXLPipeline if xl else StableDiffusionPipeline
    encoders = {"text_encoder": components["text_encoder"], "text_encoder_2": components.get("text_encoder_2")}
    for k, lora in enumerate(loras):
        name = f"nulltext_lora_{k}"
        try:
            state, alphas = loader.lora_state_dict(str(lora.path))[:2]
        except Exception as e:  # noqa: BLE001 - any reading failure is one line
            raise ModelLoadError(f"cannot read LoRA {str(lora.path)!r}: {first_line(e, 160)} — pass a LoRA file "
                                 "for this model family (diffusers, PEFT, kohya or A1111 layout)") from None
        prefixes = {key.split(".", 1)[0] for key in state}
        unknown = prefixes - {"unet", *encoders}
        if unknown or not prefixes:
            raise ModelLoadError(f"LoRA {str(lora.path)!r} has weights for {sorted(unknown) or 'nothing'} this model "
                                 "does not have — pass a LoRA made for this model family")
        try:
            modules = []
            if "unet" in prefixes:
                loader.load_lora_into_unet(state, alphas, components["unet"], adapter_name=name)
                modules.append(components["unet"])
            for prefix, encoder in encoders.items():
                if prefix in prefixes and encoder is not None:
                    loader.load_lora_into_text_encoder(state, alphas, encoder, prefix=prefix, adapter_name=name)
                    modules.append(encoder)
            for module in modules:
                _fuse(module, lora.scale, name)
        except ModelLoadError:
            raise
        except Exception as e:  # noqa: BLE001 - PEFT missing or too old, a shape mismatch: one line
            raise ModelLoadError(f"cannot apply LoRA {str(lora.path)!r}: {first_line(e, 200)} — LoRAs need "
                                 "pip install 'nulltext[lora]' (peft) and a LoRA made for this model") from None


def _fuse(module: torch.nn.Module, scale: float, name: str) -> None:
    """Merge adapter `name` into `module`'s weights at `scale` and remove the adapter layers."""
    from diffusers.utils import recurse_remove_peft_layers
    from peft.tuners.tuners_utils import BaseTunerLayer

    for layer in module.modules():
        if isinstance(layer, BaseTunerLayer):
            layer.scale_layer(scale)  # multiplies the adapter's own scaling (alpha / rank) by `scale`
            layer.merge(adapter_names=[name])
    recurse_remove_peft_layers(module)
    if hasattr(module, "peft_config"):
        del module.peft_config
    if getattr(module, "_hf_peft_config_loaded", False):
        module._hf_peft_config_loaded = False
