"""Half precision on the CPU: bf16 and fp16 null-text inversion keeps ∅_t and the loss in fp32 and lands
where fp32 does; an overflow stops with one line."""

import pytest
import torch

import nulltext.inversion.null_text as inversion_module
from nulltext.core.sampling import guided_ddim as sample
from nulltext.bundled import data
from nulltext.editing import reconstruct
from nulltext.io.images import to_pil, to_tensor
from nulltext.inversion import InversionConfig, InversionError, invert
from nulltext.evaluation.metrics import psnr
from nulltext.model import load_model

CONFIG = InversionConfig(num_steps=5, trials=4)
SIZE = 32  # the bundled model at half its side: a quarter of the cost, the trained VAE's PSNR still meaningful


@pytest.fixture(scope="module")
def photo():
    return data.sample("test", 1, SIZE)


@pytest.fixture(scope="module")
def fp32_psnr(bundled, photo, computed_once):
    """The fp32 reconstruction's PSNR, once per run across xdist workers (both half-precision tests compare with it)."""
    image, caption = photo
    return computed_once(f"half precision: fp32 PSNR {CONFIG!r}",
                         lambda: psnr(to_pil(reconstruct(bundled, invert(bundled, to_tensor(image), caption, CONFIG)))[0], image))


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_inversion_matches_fp32(dtype, photo, fp32_psnr, monkeypatch):
    model = load_model(device="cpu", dtype=dtype)
    assert model.dtype == getattr(torch, dtype) and model.vae.dtype == (torch.float32 if dtype == "float16" else model.dtype)
    losses = []
    real = inversion_module._row_losses

    def recording(z, targets):  # what Algorithm 1's loss is computed in
        out = real(z, targets)
        losses.append(out.dtype)
        return out

    monkeypatch.setattr(inversion_module, "_row_losses", recording)
    image, caption = photo
    inv = invert(model, to_tensor(image), caption, CONFIG)
    assert losses and set(losses) == {torch.float32}
    assert inv.null_embeddings.dtype == torch.float32 and inv.model_dtype == dtype
    assert sum(inv.inner_iterations) > 0 and all(map(lambda v: 0 <= v < 1, inv.losses))
    got = psnr(to_pil(reconstruct(model, inv))[0], image)
    assert abs(got - fp32_psnr) <= 0.5, f"{dtype} reconstruction {got:.2f} dB vs fp32 {fp32_psnr:.2f} dB"


def test_fp16_gradient_overflow_is_one_line(photo, monkeypatch):
    """A loss scale far past fp16's range overflows the gradient: one line naming the fix, not NaN embeddings."""
    model = load_model(device="cpu", dtype="float16")
    monkeypatch.setattr(inversion_module, "loss_scale", lambda model: 2.0**60)
    image, caption = photo
    with pytest.raises(InversionError) as e:
        invert(model, to_tensor(image), caption, InversionConfig(num_steps=3, trials=2))
    message = str(e.value)
    assert "\n" not in message and "overflowed at step 1/3" in message and "--dtype float32 or bfloat16" in message


def test_sdxl_in_fp16_upcasts_its_vae_and_optimises_both_null_parts_in_fp32(tiny_xl_dir, tiny_xl):
    model = load_model(tiny_xl_dir, device="cpu", dtype="float16")
    assert model.unet.dtype == model.text_encoder_2.dtype == torch.float16 and model.vae.dtype == torch.float32
    assert model.identity == tiny_xl.identity  # the same weights, whatever the dtype
    image, caption = data.sample("test", 1, 32)
    inv = invert(model, to_tensor(image), caption, InversionConfig(num_steps=3, trials=3))
    assert inv.null_embeddings.dtype == inv.null_pooled.dtype == torch.float32
    assert all(0 <= v < float("inf") for v in inv.losses) and torch.isfinite(reconstruct(model, inv)).all()


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_replay_ends_where_the_optimiser_did(dtype, photo):
    """Sampling from an inversion in half precision runs the two guidance branches as the optimiser ran them,
    so the replay's final latent error is the optimiser's own last-step loss (in one batch of two, bf16 rounds
    differently: 1.11e-3 against 8.27e-4 on a 64 px photo, 50 steps)."""
    model = load_model(device="cpu", dtype=dtype)
    image, caption = photo
    inv = invert(model, to_tensor(image), caption, CONFIG)
    cond = model.text_conditioning([caption])
    z0 = inv.pivot[:1].to(model.device).float()  # (1, C, h, w) z*_0
    errors = {}
    for one_batch in (None, True):
        z = sample(model, inv.latent_T, cond, inv.nulls, inv.schedule(), CONFIG.guidance_scale, one_batch=one_batch)
        errors[one_batch] = float((z.float() - z0).pow(2).mean())
    print(f"\n{dtype}: optimiser's last loss {inv.losses[0]:.4e}; replay {errors[None]:.4e} (as the optimiser), "
          f"{errors[True]:.4e} (one batch of two)")
    assert abs(errors[None] - inv.losses[0]) <= 1e-3 * inv.losses[0]
