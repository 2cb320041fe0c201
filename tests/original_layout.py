"""Write a diffusers SD 1.x/2.x, SDXL or SD 3.x model as an original-format (CompVis / Stability) single-file checkpoint.

diffusers ships only the original → diffusers direction (`diffusers.loaders.single_file_utils`); its
tables of top-level names (`DIFFUSERS_TO_LDM_MAPPING`) are used as they are, and the block names are
the inverse of its `update_*_ldm_to_diffusers` renames:

UNet (under `model.diffusion_model.`), with L = layers_per_block:
    down_blocks.b.resnets.j      → input_blocks.{b(L+1) + j + 1}.0      (resnet names below)
    down_blocks.b.attentions.j   → input_blocks.{b(L+1) + j + 1}.1
    down_blocks.b.downsamplers.0.conv → input_blocks.{(b+1)(L+1)}.0.op
    mid_block.resnets.0 / attentions.0 / resnets.1 → middle_block.0 / .1 / .2
    up_blocks.b.resnets.j        → output_blocks.{b(L+1) + j}.0
    up_blocks.b.attentions.j     → output_blocks.{b(L+1) + j}.1
    up_blocks.b.upsamplers.0.conv → output_blocks.{b(L+1) + L}.{2 if the level has attention else 1}.conv
    resnets: norm1 → in_layers.0, conv1 → in_layers.2, time_emb_proj → emb_layers.1,
             norm2 → out_layers.0, conv2 → out_layers.3, conv_shortcut → skip_connection
VAE (under `first_stage_model.`), with N levels:
    encoder.down_blocks.i.resnets.j → encoder.down.i.block.j; downsamplers.0 → encoder.down.i.downsample
    decoder.up_blocks.i.resnets.j → decoder.up.{N−1−i}.block.j; upsamplers.0 → decoder.up.{N−1−i}.upsample
    mid_block.resnets.0/1 → mid.block_1/2; mid_block.attentions.0 → mid.attn_1 with group_norm → norm,
    to_q/k/v → q/k/v, to_out.0 → proj_out, weights as 1×1 convolutions; conv_shortcut → nin_shortcut
Text encoder (CLIP, SD 1.x): `cond_stage_model.transformer.text_model.` + the transformers name.
SDXL: the first encoder under `conditioner.embedders.0.transformer.text_model.`, the second in OpenCLIP's
layout under `conditioner.embedders.1.model.` (the inverse of diffusers' `convert_open_clip_checkpoint`
and its `DIFFUSERS_TO_LDM_MAPPING["openclip"]` tables): q/k/v projections stacked into one
`attn.in_proj_weight`/`in_proj_bias`, `text_projection` transposed; the UNet's added embedding is `label_emb.0`.
"""

from __future__ import annotations

import re

import torch
from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING, LDM_UNET_KEY

_RESNET = (("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("time_emb_proj", "emb_layers.1"),
           ("norm2", "out_layers.0"), ("conv2", "out_layers.3"), ("conv_shortcut", "skip_connection"))


def _unet_key(key: str, config) -> str:
    L = config.layers_per_block
    top = {**DIFFUSERS_TO_LDM_MAPPING["unet"]["layers"], **DIFFUSERS_TO_LDM_MAPPING["unet"]["addition_embed_type"]}
    if key in top:
        return top[key]

    def resnet(rest: str) -> str:
        for old, new in _RESNET:
            rest = rest.replace(old, new)
        return rest

    def up_slot(b: int) -> int:  # an up block's upsampler follows its resnet (and its attention, if any)
        return 2 if "CrossAttn" in config.up_block_types[b] else 1

    # diffusers name → original name; `n` is the block index, `j` the layer in it, `r` the rest of the key
    rules = [
        (r"down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", lambda n, j, r: f"input_blocks.{n * (L + 1) + j + 1}.0.{resnet(r)}"),
        (r"down_blocks\.(\d+)\.attentions\.(\d+)\.(.+)", lambda n, j, r: f"input_blocks.{n * (L + 1) + j + 1}.1.{r}"),
        (r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", lambda n, r: f"input_blocks.{(n + 1) * (L + 1)}.0.op.{r}"),
        (r"mid_block\.resnets\.(\d+)\.(.+)", lambda j, r: f"middle_block.{2 * j}.{resnet(r)}"),
        (r"mid_block\.attentions\.0\.(.+)", lambda r: f"middle_block.1.{r}"),
        (r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", lambda n, j, r: f"output_blocks.{n * (L + 1) + j}.0.{resnet(r)}"),
        (r"up_blocks\.(\d+)\.attentions\.(\d+)\.(.+)", lambda n, j, r: f"output_blocks.{n * (L + 1) + j}.1.{r}"),
        (r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)",
         lambda n, r: f"output_blocks.{n * (L + 1) + L}.{up_slot(n)}.conv.{r}"),
    ]
    for pattern, original in rules:
        if m := re.fullmatch(pattern, key):
            return original(*(int(g) if g.isdigit() else g for g in m.groups()))
    raise KeyError(f"no original-format name for UNet tensor {key}")


def _vae_key(key: str, value: torch.Tensor, levels: int) -> tuple[str, torch.Tensor]:
    top = DIFFUSERS_TO_LDM_MAPPING["vae"]
    if key in top:
        return top[key], value
    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(\w+)(?:\.0)?\.(weight|bias)", key):
        name = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out": "proj_out"}[m[2]]
        if m[3] == "weight" and value.ndim == 2:
            value = value[:, :, None, None]  # (out, in) → (out, in, 1, 1): a 1×1 convolution
        return f"{m[1]}.mid.attn_1.{name}.{m[3]}", value
    key = key.replace("conv_shortcut", "nin_shortcut")
    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d)\.(.+)", key):
        return f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3]}", value
    if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        return f"encoder.down.{m[1]}.block.{m[2]}.{m[3]}", value
    if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.(.+)", key):
        return f"encoder.down.{m[1]}.downsample.{m[2]}", value
    if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        return f"decoder.up.{levels - 1 - int(m[1])}.block.{m[2]}.{m[3]}", value
    if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.+)", key):
        return f"decoder.up.{levels - 1 - int(m[1])}.upsample.{m[2]}", value
    raise KeyError(f"no original-format name for VAE tensor {key}")


def _unet_vae_and_clip(unet, vae, text_encoder, clip_prefix: str) -> dict[str, torch.Tensor]:
    """UNet and VAE under their original names, and a transformers CLIP text model under `clip_prefix`."""
    out = {LDM_UNET_KEY + _unet_key(k, unet.config): v for k, v in unet.state_dict().items()}
    levels = len(vae.config.block_out_channels)
    for k, v in vae.state_dict().items():
        name, value = _vae_key(k, v, levels)
        out["first_stage_model." + name] = value
    for k, v in text_encoder.state_dict().items():
        name = k if k.startswith("text_model.") else "text_model." + k  # transformers ≥ 5.6 dropped the wrapper
        out[clip_prefix + name] = v
    return out


def original_state_dict(unet, vae, text_encoder) -> dict[str, torch.Tensor]:
    """The three models' weights under original SD 1.x checkpoint names (fresh contiguous tensors)."""
    out = _unet_vae_and_clip(unet, vae, text_encoder, "cond_stage_model.transformer.")
    return {k: v.detach().contiguous().clone() for k, v in out.items()}


def _open_clip(text_encoder, prefix: str) -> dict[str, torch.Tensor]:
    """A transformers CLIPTextModelWithProjection's weights in OpenCLIP's names under `prefix`."""
    tables = DIFFUSERS_TO_LDM_MAPPING["openclip"]
    top, renames = tables["layers"], tables["transformer"]
    state, out = text_encoder.state_dict(), {}
    for key, value in state.items():
        if key in top:
            out[prefix + top[key]] = value.T if key == "text_projection.weight" else value
        elif m := re.fullmatch(r"text_model\.encoder\.layers\.(\d+)\.self_attn\.q_proj\.(weight|bias)", key):
            stem = f"text_model.encoder.layers.{m[1]}.self_attn."
            stacked = torch.cat([state[f"{stem}{p}_proj.{m[2]}"] for p in "qkv"])  # (3·dim, …)
            out[f"{prefix}transformer.resblocks.{m[1]}.attn.in_proj_{m[2]}"] = stacked
        elif re.search(r"self_attn\.[kv]_proj\.", key):
            continue  # stacked with q above
        else:
            name = key
            for diffusers_name, original in renames.items():
                if not diffusers_name.startswith("transformer."):
                    name = name.replace(diffusers_name, original)
            out[prefix + "transformer." + name] = value
    return out


def original_sdxl_state_dict(unet, vae, text_encoder, text_encoder_2) -> dict[str, torch.Tensor]:
    """The four models' weights under original SDXL checkpoint names (fresh contiguous tensors)."""
    out = _unet_vae_and_clip(unet, vae, text_encoder, "conditioner.embedders.0.transformer.")
    out.update(_open_clip(text_encoder_2, "conditioner.embedders.1.model."))
    return {k: v.detach().contiguous().clone() for k, v in out.items()}


# SD 3.x's MMDiT (the inverse of diffusers' `convert_sd3_transformer_checkpoint_to_diffusers`), under
# `model.diffusion_model.`: each block's image ("x_block") and text ("context_block") halves, q/k/v stacked
# into one `qkv`, the adaLN modulations of the last context block and of the final layer in (shift, scale) order.
_SD3_TOP = {"pos_embed.pos_embed": "pos_embed", "pos_embed.proj": "x_embedder.proj",
            "time_text_embed.timestep_embedder.linear_1": "t_embedder.mlp.0",
            "time_text_embed.timestep_embedder.linear_2": "t_embedder.mlp.2",
            "time_text_embed.text_embedder.linear_1": "y_embedder.mlp.0",
            "time_text_embed.text_embedder.linear_2": "y_embedder.mlp.2",
            "context_embedder": "context_embedder", "proj_out": "final_layer.linear", "norm_out.linear": "final_layer.adaLN_modulation.1"}
_SD3_BLOCK = {"attn.to_out.0": "x_block.attn.proj", "attn.to_add_out": "context_block.attn.proj",
              "attn.norm_q": "x_block.attn.ln_q", "attn.norm_k": "x_block.attn.ln_k",
              "attn.norm_added_q": "context_block.attn.ln_q", "attn.norm_added_k": "context_block.attn.ln_k",
              "attn2.to_out.0": "x_block.attn2.proj", "attn2.norm_q": "x_block.attn2.ln_q", "attn2.norm_k": "x_block.attn2.ln_k",
              "norm1.linear": "x_block.adaLN_modulation.1", "norm1_context.linear": "context_block.adaLN_modulation.1",
              "ff.net.0.proj": "x_block.mlp.fc1", "ff.net.2": "x_block.mlp.fc2",
              "ff_context.net.0.proj": "context_block.mlp.fc1", "ff_context.net.2": "context_block.mlp.fc2"}
_SD3_QKV = {"attn.to_": "x_block.attn.qkv", "attn.add_": "context_block.attn.qkv", "attn2.to_": "x_block.attn2.qkv"}


def _swap_halves(t: torch.Tensor) -> torch.Tensor:
    """(scale, shift) ↔ (shift, scale): diffusers' `swap_scale_shift`, its own inverse."""
    a, b = t.chunk(2, dim=0)
    return torch.cat([b, a], dim=0)


def original_sd3_state_dict(transformer, vae) -> dict[str, torch.Tensor]:
    """An SD 3.x transformer and VAE under original (Stability) checkpoint names; the text encoders are left out,
    as in SD 3 Medium's smallest file (diffusers then takes them from the config folder)."""
    state, out, last = transformer.state_dict(), {}, transformer.config.num_layers - 1
    for key, value in state.items():
        stem, kind = key.rsplit(".", 1)
        if stem in _SD3_TOP or key in _SD3_TOP:
            name = _SD3_TOP[key] if key in _SD3_TOP else f"{_SD3_TOP[stem]}.{kind}"
            out[name] = _swap_halves(value) if stem == "norm_out.linear" else value
            continue
        m = re.fullmatch(r"transformer_blocks\.(\d+)\.(.+)", stem)
        i, rest = int(m[1]), m[2]
        qkv = next(((p, o) for p, o in _SD3_QKV.items() if rest in (p + "q", p + "k", p + "v", p + "q_proj", p + "k_proj", p + "v_proj")), None)
        if qkv is not None:
            if rest.endswith(("q", "q_proj")):  # stack q, k, v once, at q
                parts = [state[f"transformer_blocks.{i}.{qkv[0]}{c}{'_proj' if rest.endswith('_proj') else ''}.{kind}"] for c in "qkv"]
                out[f"joint_blocks.{i}.{qkv[1]}.{kind}"] = torch.cat(parts)
            continue
        swap = rest == "norm1_context.linear" and i == last
        out[f"joint_blocks.{i}.{_SD3_BLOCK[rest]}.{kind}"] = _swap_halves(value) if swap else value
    out = {LDM_UNET_KEY + k: v for k, v in out.items()}
    levels = len(vae.config.block_out_channels)
    for k, v in vae.state_dict().items():
        name, value = _vae_key(k, v, levels)
        out["first_stage_model." + name] = value
    return {k: v.detach().contiguous().clone() for k, v in out.items()}
