"""Prompt-to-Prompt machinery on a tiny model: exactness, processors restored, shapes from the layer."""

import pytest
import torch

from nulltext.editing.attention import controlled
from nulltext.bundled import data
from nulltext.editing import attention_maps, edit, reconstruct
from nulltext.io.images import to_tensor
from nulltext.inversion import InversionConfig, invert
from nulltext.editing.config import EditConfig
from nulltext.editing.token_alignment import PromptMismatchError
from numerics import relative_error


@pytest.fixture(scope="module")
def inversion(tiny):
    image, caption = data.sample("test", 5, tiny.default_size[0])
    return invert(tiny, to_tensor(image), caption, InversionConfig(num_steps=10, trials=2))


def test_source_row_equals_reconstruction(tiny, inversion):
    """Row 0 is the reconstruction; source and targets share one UNet batch, so equal to float rounding."""
    target = inversion.prompt.replace(inversion.prompt.split()[1], "tiger")
    result = edit(tiny, inversion, [target, inversion.prompt], EditConfig(blend_words=["tiger"]))
    assert relative_error(result.images[0], reconstruct(tiny, inversion)[0]) < 1e-3  # measured ≤ 2e-5
    assert result.images.shape[0] == 3 and result.masks.shape == (2, *inversion.latent_T.shape[-2:])


def test_identity_edit_reproduces_reconstruction(tiny, inversion):
    result = edit(tiny, inversion, [inversion.prompt], EditConfig(cross_replace=1.0, self_replace=1.0))
    assert relative_error(result.images[1], result.images[0]) < 1e-4


def test_processors_are_restored_even_on_error(tiny, inversion):
    before = {k: type(v) for k, v in tiny.unet.attn_processors.items()}

    class Boom:
        rewrites = False

        def wants(self, layer, is_cross, pixels):
            return True

        def __call__(self, layer, is_cross, probs):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"), controlled(tiny.unet, Boom()):
        reconstruct(tiny, inversion)
    assert {k: type(v) for k, v in tiny.unet.attn_processors.items()} == before


def test_recorded_probabilities_are_distributions_of_layer_size(tiny, inversion):
    seen = {}

    class Recorder:
        rewrites = False

        def wants(self, layer, is_cross, pixels):
            return True

        def __call__(self, layer, is_cross, probs):
            seen[layer] = (is_cross, tuple(probs.shape), probs.sum(-1))
            return probs

    with controlled(tiny.unet, Recorder()):
        reconstruct(tiny, inversion)
    h, w = inversion.latent_T.shape[-2:]
    pixel_counts = {shape[2] for _, shape, _ in seen.values()}
    assert pixel_counts == {h * w, h * w // 4}  # two UNet levels, sizes read from the layers
    for is_cross, shape, sums in seen.values():
        assert shape[-1] == (tiny.max_tokens if is_cross else shape[2])
        torch.testing.assert_close(sums, torch.ones_like(sums), atol=1e-5, rtol=0)


def test_word_swap_of_unequal_lengths_names_both_counts(tiny, inversion):
    with pytest.raises(PromptMismatchError, match=r"source has 7 words, target has 8\b.*refine"):
        edit(tiny, inversion, [inversion.prompt + " today"], EditConfig(mode="replace"))


def test_attention_maps_cover_prompt_tokens(tiny, inversion):
    tokens, maps, image = attention_maps(tiny, inversion)
    assert tokens[:-1] == inversion.prompt.split() and tokens[-1] == "<|endoftext|>"
    assert maps.shape == (len(tokens), *inversion.latent_T.shape[-2:])
    assert torch.allclose(maps.flatten(1).amax(1), torch.ones(len(tokens)))
    assert torch.equal(image, reconstruct(tiny, inversion))
