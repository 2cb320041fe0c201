"""Batched null-text inversion gives each photo what one-at-a-time inversion gives it."""

from __future__ import annotations

import pytest
import torch

from nulltext.inversion.batched import invert_batch
from nulltext.bundled import data
from nulltext.editing import reconstruct
from nulltext.io.images import to_pil, to_tensor
from nulltext.inversion import InversionConfig, InversionError, invert
from nulltext.evaluation.metrics import psnr
from numerics import relative_error

# 8 steps, at most 4 Adam updates, and a threshold these photos cross at different steps: photo 0
# stops after 3 updates at t = 2, photo 1 at once at t = 1 and 2, photo 2 never stops early
CONFIG = InversionConfig.paper(num_steps=8, inner_steps=4, early_stop=1.5e-2, early_stop_growth=0.0)


@pytest.fixture(scope="module")
def photos(bundled):
    return [data.sample("test", i, bundled.default_size[0]) for i in range(3)]


@pytest.fixture(scope="module")
def sequential(bundled, photos, computed_once):
    """The photos inverted one at a time, once per run across xdist workers (two tests compare with them)."""
    return computed_once(f"batch inversion: one at a time {CONFIG!r}",
                         lambda: [invert(bundled, to_tensor(image), caption, CONFIG) for image, caption in photos])


def test_batch_equals_one_at_a_time_with_different_early_stops_and_a_failing_photo(bundled, photos, sequential):
    nan_photo = torch.full_like(to_tensor(photos[0][0]), float("nan"))
    images = [to_tensor(image) for image, _ in photos] + [nan_photo]
    steps_seen = []
    batch = invert_batch(bundled, images, [c for _, c in photos] + [photos[0][1]], CONFIG,
                         callback=lambda r: steps_seen.append(r.step), on_error="keep")
    assert steps_seen == list(range(1, CONFIG.num_steps + 1))
    assert isinstance(batch[3], InversionError) and "step 1/8" in str(batch[3])  # the NaN photo left at once
    iterations = [inv.inner_iterations for inv in sequential]
    assert len({tuple(it) for it in iterations}) == 3  # the photos stop early at different steps …
    assert any(0 < n < CONFIG.inner_steps for it in iterations for n in it)  # … and after different counts
    for (image, _), alone, together in zip(photos, sequential, batch):
        assert together.inner_iterations == alone.inner_iterations
        assert torch.allclose(together.latent_T, alone.latent_T, atol=1e-4)
        assert relative_error(together.null_embeddings, alone.null_embeddings) < 1e-3  # |∅_t| ≈ 4
        p_alone = psnr(to_pil(reconstruct(bundled, alone))[0], image)
        p_together = psnr(to_pil(reconstruct(bundled, together))[0], image)
        assert p_alone > 28 and abs(p_together - p_alone) < 0.05


def test_a_batch_of_one_is_invert_bit_for_bit(bundled, photos, sequential):
    (image, caption), alone = photos[1], sequential[1]
    [together] = invert_batch(bundled, [to_tensor(image)], [caption], CONFIG)
    assert torch.equal(together.null_embeddings, alone.null_embeddings)
    assert torch.equal(together.pivot, alone.pivot) and together.losses == alone.losses


def test_a_failing_photo_raises_by_default(bundled, photos):
    nan_photo = torch.full_like(to_tensor(photos[0][0]), float("nan"))
    with pytest.raises(InversionError, match="loss became nan at step 1/8"):
        invert_batch(bundled, [nan_photo], ["a red circle"], CONFIG)


def test_sdxl_batch_optimises_each_photos_pooled_null_too(tiny_xl):
    """On SDXL the batch carries the whole unconditional bundle (tokens and pooled) per photo, as `invert` does."""
    config = InversionConfig.paper(num_steps=4, inner_steps=3)
    photos = [data.sample("test", i, tiny_xl.default_size[0]) for i in range(2)]
    alone = [invert(tiny_xl, to_tensor(image), caption, config) for image, caption in photos]
    together = invert_batch(tiny_xl, [to_tensor(image) for image, _ in photos], [c for _, c in photos], config)
    for a, b in zip(alone, together):
        assert b.null_pooled is not None and b.null_pooled.shape == a.null_pooled.shape
        assert not torch.equal(b.null_pooled[0], b.null_pooled[-1])  # optimised, not ψ("")'s copied
        # batched kernels differ in the last bits; Adam's normalised step can turn that into up to one
        # lr-sized step on an element whose gradient is near zero, so the embeddings are compared by norm
        assert relative_error(b.null_pooled, a.null_pooled) < 2e-3
        assert relative_error(b.null_embeddings, a.null_embeddings) < 2e-3
        assert b.inner_iterations == a.inner_iterations
        assert relative_error(reconstruct(tiny_xl, b), reconstruct(tiny_xl, a)) < 1e-3
