"""Compositing the photo back after an edit (`nulltext.editing.composite`): weights from what the edit
moved, exact photo pixels where it moved nothing, and the same behaviour at any image size."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nulltext.bundled import data
from nulltext.bundled.judge import judge
from nulltext.editing import edit
from nulltext.editing.composite import composite, composite_weights, gaussian_blur, mask_bound
from nulltext.editing.config import EditConfig
from nulltext.evaluation.metrics import psnr
from nulltext.io.images import to_pil
from nulltext.settings import SettingsError


def _scene(side: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A smooth 'reconstruction' (1, 3, side, side) and an edit of it: a block recoloured in the middle
    (RGB distance ≈ 0.5), everything else moved by 0.01 (below the gate's lower distance)."""
    g = torch.Generator().manual_seed(seed)
    rec = F.interpolate(torch.rand(1, 3, 8, 8, generator=g) * 2 - 1, size=(side, side), mode="bilinear")
    edit = rec + 0.02 * (torch.rand(1, 3, side, side, generator=g) - 0.5)
    lo, hi = side * 5 // 16, side * 11 // 16
    edit[:, :, lo:hi, lo:hi] = torch.tensor([0.9, -0.9, 0.0])[:, None, None]
    return rec, edit.clamp(-1, 1)


def test_weights_are_one_where_the_edit_moved_and_zero_where_it_did_not():
    rec, edited = _scene(64)
    w = composite_weights(edited, rec, EditConfig())  # (1, 1, 64, 64)
    assert w.shape == (1, 1, 64, 64) and float(w.min()) >= 0 and float(w.max()) <= 1
    assert float(w[0, 0, 24:40, 24:40].min()) > 0.99  # the recoloured block, away from its edge
    far = torch.ones(64, 64, dtype=torch.bool)
    far[17:47, 17:47] = False  # 3 px or more from the block
    assert float(w[0, 0][far].max()) == 0.0  # nothing moved there: weight exactly 0
    photo = torch.rand(1, 3, 64, 64) * 2 - 1
    out = composite(edited, photo, w)
    assert torch.equal(out[..., far], photo[..., far])  # the photo's own pixels, bit for bit
    assert torch.allclose(out[..., 24:40, 24:40], edited[..., 24:40, 24:40], atol=0.02)


def test_weights_mean_the_same_at_any_image_size():
    """The feather is a fraction of the side: at 4× the size, the weights pooled back to 64 px agree."""
    rec, edited = _scene(64)
    small = composite_weights(edited, rec, EditConfig())
    big = composite_weights(F.interpolate(edited, scale_factor=4, mode="nearest"),
                            F.interpolate(rec, scale_factor=4, mode="nearest"), EditConfig())
    pooled = F.avg_pool2d(big, 4)
    assert (pooled - small).norm() / small.norm() < 0.1  # measured 0.050


def test_the_edit_reaches_over_thin_remnants_next_to_what_it_moved():
    """A removed shape's thin edge that the decoder blurred (in the reconstruction, not in the photo) barely
    moves under the edit; within `composite_reach` of a moved pixel it takes the edit, not the photo's old
    shape. Farther out nothing changes, and at any size the reach is the same fraction of the side."""
    for side in (64, 256):
        rec, edited = _scene(side)
        k = side // 64  # pixels per 64th of the side
        lo = side * 5 // 16
        edited[:, :, lo - k : lo, lo : side * 11 // 16] = rec[:, :, lo - k : lo, lo : side * 11 // 16] + 0.03  # moved < 0.05
        rim = (slice(None), slice(None), slice(lo - k, lo), slice(lo + 4 * k, side * 11 // 16 - 4 * k))
        reach = composite_weights(edited, rec, EditConfig())
        none = composite_weights(edited, rec, EditConfig(composite_reach=0.0))
        print(f"\n{side} px: rim weight {float(reach[rim].mean()):.3f} with reach, {float(none[rim].mean()):.3f} without")
        assert float(reach[rim].mean()) > 0.75 and float(none[rim].mean()) < 0.25  # measured: see the print
        far = torch.ones(side, side, dtype=torch.bool)
        far[lo - 4 * k : side * 11 // 16 + 4 * k, lo - 4 * k : side * 11 // 16 + 4 * k] = False
        assert float(reach[0, 0][far].max()) == 0.0  # 4/64 of the side from the block: the photo


def test_far_from_the_blend_mask_the_photo_comes_back_whatever_the_decoder_moved():
    """The decoder moves pixels far outside local blend's latent mask (its group norms see the whole latent):
    there the weights are 0 with the bound, so the photo comes back; without it the far pixels take the edit.
    The margin is a fraction of the side: at 64 and 256 px the weights agree once pooled back to 64 px."""
    weights = {}
    for side in (64, 256):
        rec, edited = _scene(side)
        k = side // 64
        edited[:, :, : 3 * k, -3 * k :] = rec[:, :, : 3 * k, -3 * k :] + 0.7  # a corner the decoder moved (0.6 away)
        cells = side // 4  # a latent 4× smaller than the image, as on the bundled model
        masks = torch.zeros(1, cells, cells, dtype=torch.bool)  # the blend mask: the block, one cell wider
        masks[:, cells * 5 // 16 - 1 : cells * 11 // 16 + 1, cells * 5 // 16 - 1 : cells * 11 // 16 + 1] = True
        bounded = composite_weights(edited, rec, EditConfig(), masks)
        free = composite_weights(edited, rec, EditConfig(composite_margin=None), masks)
        corner = (slice(None), slice(None), slice(0, 3 * k), slice(side - 3 * k, side))
        assert float(free[corner].min()) > 0.9 and float(bounded[corner].max()) == 0.0  # the photo's, exactly
        block = (slice(None), slice(None), slice(side * 3 // 8, side * 5 // 8), slice(side * 3 // 8, side * 5 // 8))
        assert float(bounded[block].min()) > 0.99  # the edit inside the mask untouched
        outside = mask_bound(masks, (side, side), EditConfig().composite_margin)[0, 0] == 0  # (H, W)
        edge, margin = (cells * 11 // 16 + 1) * 4, round(EditConfig().composite_margin * side)  # the mask's edge, μ in px
        assert not bool(outside[side // 2, edge + margin - 1]) and bool(outside[side // 2, edge + margin])
        weights[side] = bounded
    pooled = F.avg_pool2d(weights[256], 4)
    print(f"\nweights at 256 px pooled to 64 against 64 px: {float((pooled - weights[64]).norm() / weights[64].norm()):.3f}")
    assert (pooled - weights[64]).norm() / weights[64].norm() < 0.1  # measured: see the print


def test_gaussian_blur_keeps_mass_and_constants():
    x = torch.zeros(1, 1, 33, 33)
    x[0, 0, 16, 16] = 1.0
    y = gaussian_blur(x, 2.0)
    assert abs(float(y.sum()) - 1.0) < 1e-6 and float(y[0, 0, 16, 16]) < 0.1
    assert torch.allclose(gaussian_blur(torch.full((1, 3, 9, 9), 0.3), 1.5), torch.full((1, 3, 9, 9), 0.3))


@pytest.mark.parametrize("bad, message", [
    (dict(composite="always"), "unknown composite"),
    (dict(composite_change=(0.2, 0.1)), "0 ≤ low < high"),
    (dict(composite_feather=2.0), "composite feather"),
    (dict(composite_reach=-0.1), "composite reach"),
    (dict(composite_margin=1.5), "composite margin"),
    (dict(self_fade=1.5), "self fade"),
])
def test_bad_composite_settings_are_refused(bad, message):
    with pytest.raises(SettingsError, match=message):
        EditConfig(**bad)


INDEX = next(i for i in range(40) if not {"green", "black"} & set(data.sample("test", i)[1].split()))


def test_blended_edit_puts_the_photo_back_where_nothing_changed(bundled, bundled_null_text):
    """A colour swap with local blend on a test photo: the shape turns green in both; with compositing
    every pixel of weight 0 is the photo's own, and that is nearly all of the background 3 px or more from
    the shape; without it the background is the decoder's (the reconstruction's level); the weights cover
    the shape."""
    inv = bundled_null_text(INDEX)
    scene = data.scene("test", INDEX)
    shape = data.shape_mask(scene, 64)
    far = ~(F.max_pool2d(torch.from_numpy(shape).float()[None, None], 7, stride=1, padding=3)[0, 0].numpy() > 0.5)
    target = inv.prompt.replace(f"a {scene.colour} {scene.shape}", f"a green {scene.shape}")
    photo = inv.photo.numpy()
    results = {}
    for mode in ("changed", "off"):
        result = edit(bundled, inv, [target], EditConfig(blend_words=[scene.shape], composite=mode))
        edited = to_pil(result.images)[1]
        results[mode] = (result, np.asarray(edited), judge(edited))
    on, off = results["changed"], results["off"]
    assert on[2].colour == off[2].colour == "green" and on[2].shape == off[2].shape == scene.shape
    w = on[0].weights[0, 0].numpy()  # (H, W)
    assert off[0].weights is None and on[0].weights.shape == (1, 1, 64, 64)
    untouched = w == 0.0
    assert np.array_equal(on[1][untouched], photo[untouched])  # weight 0: the photo's own pixels, bit for bit
    # measured: 3279 of the 3283 pixels 3 px or more from the shape (the other 4 moved by one level at the border)
    assert (untouched & far).sum() > 0.95 * far.sum()
    # beyond the blend mask's bound (and the feather's 2 px) nothing of the edit is left, whatever the decoder did
    bounded = mask_bound(on[0].masks, (64, 64), EditConfig().composite_margin + 2 / 64)[0, 0].numpy() == 0
    print(f"\n{bounded.sum()} pixels beyond the blend mask's bound (measured 2160 of 4096)")
    assert bounded.sum() > 1000 and (w[bounded] == 0.0).all() and np.array_equal(on[1][bounded], photo[bounded])
    bg_on, bg_off = (psnr(x[far].astype(np.float64), photo[far].astype(np.float64), data_range=255.0) for x in (on[1], off[1]))
    print(f"\nbackground 3 px from the shape: {bg_on:.1f} dB with compositing, {bg_off:.1f} dB without")
    assert 25 < bg_off < 60 and bg_on > bg_off + 15  # measured 85.1 vs 45.5 dB
    inner = ~(F.max_pool2d(torch.from_numpy(~shape).float()[None, None], 5, stride=1, padding=2)[0, 0].numpy() > 0.5)
    assert w[inner].mean() > 0.95  # the shape changed colour
    assert torch.equal(on[0].latents, off[0].latents)  # compositing acts after decoding only


def test_inversion_keeps_its_photo(bundled_null_text):
    image, _ = data.sample("test", INDEX, 64)
    assert np.array_equal(bundled_null_text(INDEX).photo.numpy(), np.asarray(image))
