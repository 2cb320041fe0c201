"""SD 2.x-style models and other sizes: v-prediction with penultimate-layer text features at a non-square
size on a tiny model from config, and non-square photos on the bundled model."""

import dataclasses

import torch
from transformers import CLIPTextModel

from nulltext.bundled import data
from nulltext.editing import edit, reconstruct
from nulltext.images import to_pil, to_tensor
from nulltext.inversion import InversionConfig, invert
from nulltext.metrics import psnr
from nulltext.model import load_model
from nulltext.prompt_to_prompt import EditConfig
from nulltext.sampling import guided_ddim
from test_stock_pipeline import stock_reconstruction


def _crop(image, width, height):
    """The centre width × height of a square photo."""
    left, top = (image.width - width) // 2, (image.height - height) // 2
    return image.crop((left, top, left + width, top + height))


def test_text_features_are_the_penultimate_layer(tiny_sd2_dir):
    """The folder's encoder (one layer short of the full one, as SD 2.x is stored) gives the full encoder's
    penultimate hidden state after its final layer norm: what SD 2.x was trained on."""
    model = load_model(tiny_sd2_dir, device="cpu")
    full = CLIPTextModel.from_pretrained(tiny_sd2_dir.parent / "full_text_encoder").eval()
    prompt = "a red circle on a blue background"
    ids = model.tokenizer([prompt], padding="max_length", max_length=model.max_tokens, return_tensors="pt").input_ids
    with torch.no_grad():
        out = full(ids, output_hidden_states=True)
        penultimate = full.final_layer_norm(out.hidden_states[-2])
    ours = model.text_conditioning([prompt])
    assert ours.pooled is None and model.text_encoder.config.num_hidden_layers == full.config.num_hidden_layers - 1
    torch.testing.assert_close(ours.tokens, penultimate, atol=1e-6, rtol=1e-6)
    assert not torch.allclose(ours.tokens, out.last_hidden_state, atol=1e-3)  # the last layer differs


def test_v_prediction_at_a_non_square_size_inverts_edits_and_replays(tiny_sd2_dir):
    model = load_model(tiny_sd2_dir, device="cpu")
    assert model.scheduler_config["prediction_type"] == "v_prediction"
    square, caption = data.sample("test", 2, 48)
    image = _crop(square, 48, 32)
    x = to_tensor(image)  # (1, 3, 32, 48)
    config = InversionConfig(num_steps=8, inner_steps=10, early_stop=0.0, early_stop_growth=0.0)
    nt = invert(model, x, caption, config)
    dd = invert(model, x, caption, dataclasses.replace(config, method="ddim"))
    assert nt.image_size == (48, 32) and nt.latent_T.shape[-2:] == (16, 24)
    z0, cond = model.encode_image(x), model.text_conditioning([caption])
    with torch.no_grad():
        e_nt = ((guided_ddim(model, nt.latent_T, cond, nt.nulls, nt.schedule(), 7.5) - z0) ** 2).mean().item()
        e_dd = ((guided_ddim(model, dd.latent_T, cond, dd.nulls, dd.schedule(), 7.5) - z0) ** 2).mean().item()
    assert e_nt * 2 <= e_dd, f"latent MSE null-text {e_nt:.2e} vs DDIM {e_dd:.2e}"
    bound = psnr(to_pil(model.decode_latents(z0))[0], image)
    ours = reconstruct(model, nt)
    got = psnr(to_pil(ours)[0], image)
    assert got >= bound - 0.5, f"null-text PSNR {got:.2f} dB vs VAE bound {bound:.2f} dB"
    result = edit(model, nt, [caption.replace(caption.split()[1], "purple")], EditConfig())
    assert result.images.shape == (2, 3, 32, 48) and (result.images[0] - ours[0]).abs().max() < 1e-4
    assert (result.images[1] - result.images[0]).abs().mean() > 1e-3
    theirs = stock_reconstruction(model, nt)  # diffusers' own pipeline, v-prediction, 48×32
    assert (ours - theirs).abs().max() < 2e-3


def test_bundled_model_inverts_and_edits_a_non_square_photo(bundled):
    square, caption = data.sample("test", 4, 96)
    image = _crop(square, 96, 64)
    config = InversionConfig(num_steps=6, inner_steps=4)
    inv = invert(bundled, to_tensor(image), caption, config)
    assert inv.latent_T.shape[-2:] == (16, 24)
    dd = invert(bundled, to_tensor(image), caption, dataclasses.replace(config, method="ddim"))
    z0, cond = bundled.encode_image(to_tensor(image)), bundled.text_conditioning([caption])
    with torch.no_grad():
        z_nt = guided_ddim(bundled, inv.latent_T, cond, inv.nulls, inv.schedule(), 7.5)
        z_dd = guided_ddim(bundled, dd.latent_T, cond, dd.nulls, dd.schedule(), 7.5)
    e_nt, e_dd = ((z_nt - z0) ** 2).mean().item(), ((z_dd - z0) ** 2).mean().item()
    ours = reconstruct(bundled, inv)
    got, plain = psnr(to_pil(ours)[0], image), psnr(to_pil(bundled.decode_latents(z_dd))[0], image)
    assert e_nt * 3 <= e_dd and got > plain, f"96×64: latent MSE {e_nt:.2e} vs DDIM {e_dd:.2e}, {got:.2f} vs {plain:.2f} dB"
    target = caption.replace(caption.split()[2], "circle" if caption.split()[2] != "circle" else "square")
    result = edit(bundled, inv, [target], EditConfig(blend_words=[caption.split()[2]]))
    assert result.images.shape == (2, 3, 64, 96) and (result.images[0] - ours[0]).abs().max() < 1e-4
    assert result.masks.shape == (1, 16, 24) and 0 < result.masks.float().mean() < 1
    changed = (result.images[1] - result.images[0]).abs().mean(0)  # (64, 96)
    mask = torch.nn.functional.interpolate(result.masks[None].float(), size=(64, 96))[0, 0] > 0
    assert changed[mask].mean() > 3 * changed[~mask].mean()  # the edit stays inside the blend region
