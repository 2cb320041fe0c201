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


def test_an_edit_records_each_rows_attention_and_the_source_row_is_the_reconstructions(tiny, inversion):
    """`record_attention`: row 0's maps are `attention_maps` of the reconstruction (the same sampling, one UNet
    batch with the targets, so equal to float rounding); a target row has its own caption's tokens."""
    target = inversion.prompt.replace(inversion.prompt.split()[1], "green")
    result = edit(tiny, inversion, [target], record_attention=True)
    tokens, maps, _ = attention_maps(tiny, inversion)
    source_tokens, source_maps = result.attention_maps(0, tiny.tokenizer)
    assert source_tokens == tokens and relative_error(source_maps, maps) < 1e-3
    target_tokens, target_maps = result.attention_maps(1, tiny.tokenizer)
    assert target_tokens[:-1] == target.split() and target_maps.shape == maps.shape
    assert edit(tiny, inversion, [target]).attention is None  # not recorded unless asked


def test_a_blend_word_attended_to_nowhere_is_warned_of_in_one_line(tiny):
    """The rule on attention maps made by hand: per pixel, each caption word's share of the words' attention;
    a word whose share stays under half an even share everywhere is warned of, naming its peak."""
    from nulltext.editing.prompt_to_prompt import weak_blend_words

    source = "a red circle on a blue background"  # 7 word tokens between BOS and EOS
    maps = torch.ones(16, 4, 4)  # (tokens, h, w): every word an even share everywhere …
    maps[3, :2, :2] = 20.0  # … "circle" leads in one corner,
    maps[4] = 0.05  # "on" draws 0.05 / 6.05 of the words' attention at every pixel
    assert weak_blend_words(tiny.tokenizer, source, ["circle", "red"], maps) == []
    [line] = weak_blend_words(tiny.tokenizer, source, ["circle", "on", "green"], maps)  # "green": not the source's
    assert line.startswith("blend word 'on' draws at most 1% of the source caption's attention") and "14%" in line
    assert weak_blend_words(tiny.tokenizer, source, ["on"], None) == []  # no blend, nothing recorded


def test_no_word_of_a_bundled_caption_is_warned_of(bundled, bundled_null_text):
    """On the bundled model every word of the demo caption leads the attention somewhere: measured peak
    shares per token 15–18 % for "a", 21–37 % for "on", 25–61 % for colours, shapes and "background" on
    photos 829, 1, 5, 6, 0 (25 steps), against a warning below 7 % (half an even share of 14 %)."""
    inv = bundled_null_text(data.DEMO_INDEX)  # "a red circle on a blue background"
    target = inv.prompt.replace("red", "green")
    result = edit(bundled, inv, [target], EditConfig(blend_words=inv.prompt.split()))
    assert result.warnings == []
