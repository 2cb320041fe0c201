"""An inversion file drives the stock diffusers StableDiffusionPipeline to the same reconstruction."""

import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline

from budget import EDIT_STEPS
from nulltext.inversion import InversionConfig
from nulltext.editing import reconstruct


def stock_reconstruction(model, inversion):
    """Guided sampling by diffusers' own pipeline: latents = z*_T, negative embeddings = ∅_t per step."""
    pipe = StableDiffusionPipeline(
        vae=model.vae, text_encoder=model.text_encoder, tokenizer=model.tokenizer, unet=model.unet,
        scheduler=DDIMScheduler.from_config(inversion.scheduler_config), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    nulls, T = inversion.null_embeddings.to(model.dtype), inversion.num_steps
    cond = model.encode_text([inversion.prompt])

    def next_null(pipe, i, t, tensors):  # after step i (0-based, timestep τ_{T−i}) comes ∅_{T−i−1}
        if i + 1 < T:
            tensors["prompt_embeds"] = torch.cat([nulls[T - i - 2 : T - i - 1], cond])
        return tensors

    w, h = inversion.image_size
    out = pipe(prompt_embeds=cond, negative_prompt_embeds=nulls[T - 1 : T], latents=inversion.latent_T.clone(),
               num_inference_steps=T, guidance_scale=inversion.config.guidance_scale, height=h, width=w,
               output_type="pt", callback_on_step_end=next_null, callback_on_step_end_tensor_inputs=["prompt_embeds"])
    return out.images * 2 - 1  # (1, 3, H, W) in [-1, 1]


def test_stock_pipeline_reproduces_our_reconstruction(bundled, bundled_null_text):
    inversion = bundled_null_text(1, InversionConfig.paper(num_steps=EDIT_STEPS))  # the paper's Adam; shared
    ours = reconstruct(bundled, inversion)
    theirs = stock_reconstruction(bundled, inversion)
    assert (ours - theirs).abs().max() < 2e-3  # same sampler, two implementations
    # and it is the null embeddings that make it: the stock pipeline with ψ("") drifts far more
    plain = inversion.null_embeddings.clone()
    plain[:] = bundled.encode_text([""]).float()
    inversion.null_embeddings = plain
    drift = (stock_reconstruction(bundled, inversion) - ours).abs().mean()
    assert drift > 20 * (ours - theirs).abs().mean()
