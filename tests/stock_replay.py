"""diffusers' own pipelines replaying an inversion: the pooled families' (SDXL, SD 3.x) shared replay."""

from __future__ import annotations

import torch


def stock_pooled_reconstruction(pipe, model, inversion, pooled_key: str) -> torch.Tensor:
    """The stock pipeline from latents = z*_T with ∅_t (token and pooled parts) as the negative embeddings of step t.

    `pooled_key`: the name under which the pipeline's step callback holds the [negative, positive] pooled
    embeddings ("add_text_embeds" in SDXL's, "pooled_prompt_embeds" in SD 3.x's). Returns (1, 3, H, W) in [-1, 1].
    """
    nulls, T = inversion.nulls.to(model.dtype), inversion.num_steps
    cond = model.text_conditioning([inversion.prompt])

    def next_null(pipe, i, t, tensors):  # after step i (0-based, timestep τ_{T−i}) comes ∅_{T−i−1}
        if i + 1 < T:
            null = nulls[T - i - 2]
            tensors["prompt_embeds"] = torch.cat([null.tokens, cond.tokens])
            tensors[pooled_key] = torch.cat([null.pooled, cond.pooled])
        return tensors

    w, h = inversion.image_size
    last = nulls[T - 1]
    out = pipe(prompt_embeds=cond.tokens, pooled_prompt_embeds=cond.pooled, negative_prompt_embeds=last.tokens,
               negative_pooled_prompt_embeds=last.pooled, latents=inversion.latent_T.clone(), num_inference_steps=T,
               guidance_scale=inversion.config.guidance_scale, height=h, width=w, output_type="pt",
               callback_on_step_end=next_null, callback_on_step_end_tensor_inputs=["prompt_embeds", pooled_key])
    return out.images * 2 - 1
