"""SD 2.x-style models and other sizes: v-prediction with penultimate-layer text features at a non-square
size on a tiny model from config, and non-square photos on the bundled model."""


import torch
from transformers import CLIPTextModel

from nulltext.bundled import data
from nulltext.editing import edit
from nulltext.inversion import InversionConfig
from nulltext.model import load_model
from nulltext.editing.config import EditConfig
from pivot_checks import error_and_work, null_text_against_ddim
from test_stock_pipeline import stock_reconstruction
from numerics import relative_error


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
    check = null_text_against_ddim(model, image, caption, InversionConfig.paper(num_steps=8, inner_steps=10, early_stop=0.0,
                                                                          early_stop_growth=0.0))
    nt, ours = check.null_text, check.reconstruction
    assert nt.image_size == (48, 32) and nt.latent_T.shape[-2:] == (16, 24)
    assert check.mse_null_text * 2 <= check.mse_ddim, f"latent MSE null-text {check.mse_null_text:.2e} vs DDIM {check.mse_ddim:.2e}"
    assert check.psnr >= check.vae_bound - 0.5, f"null-text PSNR {check.psnr:.2f} dB vs VAE bound {check.vae_bound:.2f} dB"
    result = edit(model, nt, [caption.replace(caption.split()[1], "purple")], EditConfig())
    assert result.images.shape == (2, 3, 32, 48) and relative_error(result.images[0], ours[0]) < 1e-3
    assert (result.images[1] - result.images[0]).abs().mean() > 1e-3
    theirs = stock_reconstruction(model, nt)  # diffusers' own pipeline, v-prediction, 48×32
    assert (ours - theirs).abs().max() < 2e-3


def test_default_optimiser_beats_the_papers_adam_at_under_half_its_work_on_v_prediction(tiny_sd2_dir):
    """As on SDXL (test_sdxl.py): the secant optimiser below the paper's Adam's latent error at ≤ ½ its UNet passes."""
    model = load_model(tiny_sd2_dir, device="cpu")
    image, caption = data.sample("test", 2, model.default_size[0])
    secant = error_and_work(model, image, caption, InversionConfig(num_steps=10))
    adam = error_and_work(model, image, caption, InversionConfig.paper(num_steps=10))
    assert secant.mse <= adam.mse and secant.passes <= adam.passes / 2, (secant, adam)


def test_bundled_model_inverts_and_edits_a_non_square_photo(bundled):
    square, caption = data.sample("test", 4, 96)
    image = _crop(square, 96, 64)
    check = null_text_against_ddim(bundled, image, caption, InversionConfig(num_steps=6, trials=4))
    inv, ours = check.null_text, check.reconstruction
    assert inv.latent_T.shape[-2:] == (16, 24)
    e_nt, e_dd, got, plain = check.mse_null_text, check.mse_ddim, check.psnr, check.ddim_psnr
    assert e_nt * 3 <= e_dd and got > plain, f"96×64: latent MSE {e_nt:.2e} vs DDIM {e_dd:.2e}, {got:.2f} vs {plain:.2f} dB"
    target = caption.replace(caption.split()[2], "circle" if caption.split()[2] != "circle" else "square")
    result = edit(bundled, inv, [target], EditConfig(blend_words=[caption.split()[2]]))
    assert result.images.shape == (2, 3, 64, 96) and relative_error(result.images[0], ours[0]) < 1e-3
    assert result.masks.shape == (1, 16, 24) and 0 < result.masks.float().mean() < 1
    changed = (result.images[1] - result.images[0]).abs().mean(0)  # (64, 96)
    mask = torch.nn.functional.interpolate(result.masks[None].float(), size=(64, 96))[0, 0] > 0
    assert changed[mask].mean() > 3 * changed[~mask].mean()  # the edit stays inside the blend region
