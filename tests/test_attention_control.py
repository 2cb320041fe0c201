"""Prompt-to-Prompt options that must change the output, each checked against a reference computation.

A synthetic UNet with four attention resolutions (SD's 64/32/16/8 at 512 px, here 32/16/8/4) exercises
the self-attention layer filter and the local blend's pooling, which the bundled model's two levels
never reach.
"""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from nulltext.bundled import data
from nulltext.editing import edit
from nulltext.io.images import to_tensor
from nulltext.inversion import InversionConfig, invert
from nulltext.model import Model
from nulltext.editing.config import self_weights
from nulltext.editing.prompt_to_prompt import (EditConfig, LocalBlend, PromptToPrompt, edit_cross_attention, latent_mask,
                                       plan_edit)
from nulltext.editing.token_alignment import word_token_indices


@pytest.fixture(scope="module")
def four_level(tiny):
    """The tiny model's VAE and text encoder with an SD-layout UNet: cross-attention at four resolutions."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    h = tiny.default_size[1] // tiny.vae_scale_factor
    unet = UNet2DConditionModel(
        sample_size=2 * h, in_channels=tiny.latent_channels, out_channels=tiny.latent_channels,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        block_out_channels=(32, 32, 32, 32), layers_per_block=1, norm_num_groups=8,
        cross_attention_dim=tiny.text_encoder.config.hidden_size, attention_head_dim=8,
    ).requires_grad_(False).eval()
    return Model(unet, tiny.vae, tiny.text_encoder, tiny.tokenizer, tiny.scheduler_config, "four-level", "")


@pytest.fixture(scope="module")
def four_inversion(four_level):
    w, h = four_level.default_size
    image, caption = data.sample("test", 2, w)
    return invert(four_level, to_tensor(image), caption, InversionConfig(method="ddim", num_steps=5))


@pytest.fixture(scope="module")
def tiny_inversion(tiny):
    image, caption = data.sample("test", 5, tiny.default_size[0])
    return invert(tiny, to_tensor(image), caption, InversionConfig(method="ddim", num_steps=10))


def _swap(prompt: str, index: int, word: str) -> str:
    words = prompt.split()
    words[index] = word
    return " ".join(words)


class Spy(PromptToPrompt):
    """Records which layers the controller asked for, per step: {(step, is_cross): {pixels}}."""

    def __init__(self, plan, blend, record, seen):
        super().__init__(plan, blend, record)
        self.seen = seen

    def wants(self, layer, is_cross, pixels):
        answer = super().wants(layer, is_cross, pixels)
        self.seen.setdefault((self.step, is_cross), set()).add((pixels, answer))
        return answer


@pytest.mark.parametrize("min_pixels, injected", [(256, {16 * 16, 8 * 8, 4 * 4}), (0, {8 * 8, 4 * 4})])
def test_self_attention_filter_on_four_resolutions(four_level, four_inversion, monkeypatch, min_pixels, injected):
    """Self-attention is injected on layers with ≤ max(self_min_pixels, 1/16 of the latent's pixels) only."""
    seen = {}
    monkeypatch.setattr("nulltext.editing.from_inversion.PromptToPrompt", lambda plan, blend, record: Spy(plan, blend, record, seen))
    inv = four_inversion
    target = _swap(inv.prompt, 1, "green" if inv.prompt.split()[1] != "green" else "red")
    edit(four_level, inv, [target], EditConfig(self_replace=0.4, self_min_pixels=min_pixels))
    latent = inv.latent_T.shape[-2] * inv.latent_T.shape[-1]
    assert latent == 32 * 32
    self_layers = seen[(0, False)]
    assert {p for p, _ in self_layers} == {32 * 32, 16 * 16, 8 * 8, 4 * 4}  # four resolutions reached
    assert {p for p, wanted in self_layers if wanted} == injected
    assert not any(wanted for p, wanted in seen[(2, False)])  # step 2 of 5 is past self_replace = 0.4


@pytest.mark.parametrize("steps", [5, 25, 50])
def test_self_attention_weights_fade_out_linearly(steps):
    """The default: the source's self-attention in full until 50 % of the steps, then a share falling
    linearly to nothing by 90 %; `self_fade=0` is a hard switch (the authors'); a (start, end) window fades
    at its end. Against the schedule written out."""
    def written_out(first: float, end: float, fade: float) -> list[float]:
        a, b, f = round(first * steps), round(end * steps), round(fade * steps)
        f = min(f, b - a)
        return [(b - k) / (f + 1) if b - f <= k < b else 1.0 if a <= k < b else 0.0 for k in range(steps)]

    assert self_weights(EditConfig(), steps) == written_out(0.0, 0.9, 0.4)
    assert self_weights(EditConfig(self_replace=0.4, self_fade=0.0), steps) == [float(k < round(0.4 * steps)) for k in range(steps)]
    assert self_weights(EditConfig(self_replace=(0.2, 0.6), self_fade=0.2), steps) == written_out(0.2, 0.6, 0.2)
    assert self_weights(EditConfig(self_replace=0.0), steps) == [0.0] * steps  # no injection, whatever the fade
    weights = self_weights(EditConfig(), 50)
    assert weights[:25] == [1.0] * 25 and weights[45:] == [0.0] * 5  # in full until 50 %, none from 90 %
    assert all(1 > a > b > 0 for a, b in zip(weights[25:44], weights[26:45]))  # falling in between


def test_self_attention_fading_mixes_the_source_maps_in(tiny):
    """At a fading step the targets' self-attention rows are w · source + (1 − w) · their own; the
    unconditional rows and the source row pass unchanged; past the window nothing is asked for."""
    source = "a red circle on a blue background"
    targets = ["a green circle on a blue background", "a red square on a blue background"]
    config = EditConfig()
    plan = plan_edit(tiny.tokenizer, source, targets, config, 50, (8, 8))
    control = PromptToPrompt(plan, LocalBlend(None, None, (8, 8), config, 50))
    g = torch.Generator().manual_seed(0)
    probs = torch.rand(6, 2, 64, 64, generator=g).softmax(-1)  # (2(1+n), heads, pixels, pixels)
    for step, w in ((10, 1.0), (30, 15 / 21), (44, 1 / 21)):
        control.step = step
        assert control.wants("up", False, 64) and plan.self_weight[step] == pytest.approx(w)
        out = control("up", False, probs)
        assert torch.equal(out[:4], probs[:4])  # unconditional rows, then the source's conditional row
        expected = w * probs[3:4] + (1 - w) * probs[4:]  # (n, heads, pixels, pixels)
        assert torch.allclose(out[4:], expected, rtol=1e-6, atol=1e-7)
        assert torch.allclose(out.sum(-1), torch.ones(6, 2, 64))  # still probabilities
    control.step = 45
    assert not control.wants("up", False, 64)


def test_local_blend_pools_every_resolution(four_level, four_inversion, monkeypatch):
    """The blend sum is the blend word's head-mean cross-attention of every layer, resized to the latent grid."""
    inv = four_inversion
    word = inv.prompt.split()[2]  # the shape
    target = _swap(inv.prompt, 1, "green" if inv.prompt.split()[1] != "green" else "red")
    config = EditConfig(blend_words=[word])
    hw = tuple(inv.latent_T.shape[-2:])
    plan = plan_edit(four_level.tokenizer, inv.prompt, [target], config, inv.num_steps, hw)
    blend = LocalBlend(plan.blend_tokens, plan.subtract_tokens, hw, config, inv.num_steps)
    idx = word_token_indices(inv.prompt, word, four_level.tokenizer)
    expected = torch.zeros(2, *hw)
    pooled = set()
    for side in (32, 16, 8, 4):
        maps = torch.rand(2, 2, side * side, four_level.max_tokens).softmax(-1)  # (1+n, heads, pixels, tokens)
        blend.accumulate(maps)
        grid = maps.mean(1)[..., idx].sum(-1).reshape(2, 1, side, side)  # (1+n, 1, side, side)
        expected += F.interpolate(grid, size=hw, mode="bilinear", align_corners=False)[:, 0]
        pooled.add(side)
    torch.testing.assert_close(blend.blend_sum, expected)
    assert pooled == {32, 16, 8, 4}
    result = edit(four_level, inv, [target], config)
    assert result.masks.shape == (1, *hw) and result.masks.dtype == torch.bool


def test_local_blend_masks_subtract_and_start():
    """Threshold after dilation and max-normalisation; source ∪ target; minus subtract; only from blend_start."""
    config = EditConfig(blend_words=["x"], blend_threshold=0.3, blend_min_radius=1, blend_dilation=0.0, blend_start=0.4)
    blend = LocalBlend(torch.ones(2, 4), torch.ones(2, 4), (8, 8), config, num_steps=10)
    blend.blend_sum = torch.zeros(2, 8, 8)
    blend.blend_sum[0, 2, 2] = 1.0  # source word at (2, 2)
    blend.blend_sum[1, 5, 5] = 2.0  # target word at (5, 5)
    blend.subtract_sum = torch.zeros(2, 8, 8)
    blend.subtract_sum[1, 6, 6] = 1.0
    expected = torch.zeros(8, 8, dtype=torch.bool)
    expected[1:4, 1:4] = True  # 3×3 dilation of each
    expected[4:7, 4:7] = True
    expected[5:8, 5:8] = False  # minus the dilated subtract region
    assert torch.equal(blend.masks()[0], expected)
    z = torch.stack([torch.zeros(1, 8, 8), torch.ones(1, 8, 8)])  # (1+n, C, h, w): source 0, target 1
    assert blend.apply(3, z) is None  # step 3 < 0.4 · 10
    out = blend.apply(4, z)
    assert torch.equal(out[1, 0], expected.float()) and torch.equal(out[0], z[0])


def test_user_mask_alone_and_combined():
    config = EditConfig(blend_words=["x"], blend_min_radius=0, blend_dilation=0.0, blend_mask_combine="intersection")
    drawn = torch.zeros(16, 16, dtype=torch.bool)
    drawn[0:8, 0:4] = True  # image pixels; latent (8, 8) → factor 2
    user = latent_mask(drawn, (8, 8))
    assert user.sum() == 4 * 2 and user[:4, :2].all()
    words = LocalBlend(torch.ones(2, 4), None, (8, 8), config, 10, user_mask=user)
    words.blend_sum = torch.zeros(2, 8, 8)
    words.blend_sum[:, 0, 0] = 1.0
    assert words.masks()[0].sum() == 1 and words.masks()[0, 0, 0]  # intersection
    union = LocalBlend(words.blend_tokens, None, (8, 8), dataclasses.replace(config, blend_mask_combine="union"), 10,
                       user_mask=user, blend_sum=words.blend_sum)
    assert union.masks()[0].sum() == 8
    alone = LocalBlend(None, None, (8, 8), EditConfig(), 10, user_mask=user)
    assert torch.equal(alone.masks()[0], user)
    with pytest.raises(ValueError, match="draw the mask at the photo's size"):
        latent_mask(torch.zeros(15, 16, dtype=torch.bool), (8, 8))


def test_cross_attention_edit_matches_the_papers_rules(tiny):
    """Replace: M* = M · mapper; refine: aligned tokens take the source's maps, new ones keep their own;
    reweight scales the word's maps; the per-word window overrides the global one."""
    tok, L = tiny.tokenizer, tiny.max_tokens
    source = "a red circle on a blue background"
    targets = ["a green circle on a blue background", "a red circle on a dark blue background"]
    config = EditConfig(cross_replace=0.5, word_cross_replace={"green": 0.2}, reweight={"circle": 3.0})
    plan = plan_edit(tok, source, targets, config, 10, (8, 8))
    assert [t.mode for t in plan.targets] == ["replace", "refine"]
    green = word_token_indices(targets[0], "green", tok)
    assert plan.cross_alpha[:, 0, green].squeeze(-1).tolist() == [1.0] * 2 + [0.0] * 8  # green: its own 0.2
    assert plan.cross_alpha[:, 1, 1].tolist() == [1.0] * 5 + [0.0] * 5  # others: the global 0.5
    torch.manual_seed(0)
    src = torch.rand(2, 16, L).softmax(-1)  # (heads, pixels, tokens)
    own = torch.rand(2, 2, 16, L).softmax(-1)  # (n, heads, pixels, tokens)
    out = edit_cross_attention(plan, 3, src, own)  # step 3: inside the global window, outside green's
    circle0 = word_token_indices(targets[0], "circle", tok)[0]
    expected0 = src @ plan.targets[0].mapper * plan.targets[0].equalizer
    a = plan.cross_alpha[3, 0]
    torch.testing.assert_close(out[0], expected0 * a + own[0] * (1 - a))
    assert torch.equal(out[0][..., green[0]], own[0][..., green[0]])  # green's window has ended
    assert torch.allclose(out[0][..., circle0], 3.0 * src[..., circle0])
    refine = plan.targets[1]
    dark = word_token_indices(targets[1], "dark", tok)[0]
    blue_t, blue_s = word_token_indices(targets[1], "blue", tok)[0], word_token_indices(source, "blue", tok)[0]
    assert refine.alphas[dark] == 0 and refine.alphas[blue_t] == 1
    circle1 = word_token_indices(targets[1], "circle", tok)[0]
    torch.testing.assert_close(out[1][..., blue_t], src[..., blue_s])  # aligned: the source's map
    torch.testing.assert_close(out[1][..., dark], own[1][..., dark])  # new word: its own map
    torch.testing.assert_close(out[1][..., circle1], 3.0 * src[..., word_token_indices(source, "circle", tok)[0]])


def _target_change(model, inv, target, **config):
    result = edit(model, inv, [target], EditConfig(**config))
    return result.latents[1]


def test_each_option_changes_the_edit(tiny, tiny_inversion):
    """Switching an option on moves the edited latent by more than float noise (≥ 1e-3 mean), else it is ignored."""
    inv = tiny_inversion
    words = inv.prompt.split()
    target = _swap(inv.prompt, 2, "square" if words[2] != "square" else "circle")
    off = dict(cross_replace=0.0, self_replace=0.0)
    cross = dict(cross_replace=1.0, self_replace=0.0)
    variants = {  # name: (without the option, with it)
        "cross": (off, cross),
        "self": (off, dict(off, self_replace=1.0, self_min_pixels=10_000)),
        "self fade": (dict(off, self_replace=1.0, self_min_pixels=10_000, self_fade=0.0),
                      dict(off, self_replace=1.0, self_min_pixels=10_000, self_fade=0.6)),
        "word cross": (off, dict(off, word_cross_replace={target.split()[2]: 1.0})),
        # as in the authors' code, re-weighting acts inside the cross-replacement window
        "reweight": (cross, dict(cross, reweight={target.split()[2]: 4.0})),
    }
    for name, (without, with_option) in variants.items():
        base = _target_change(tiny, inv, target, **without)
        change = (_target_change(tiny, inv, target, **with_option) - base).abs().mean().item()
        assert change > 1e-3, f"{name}: {change:.2e}"
    w, h = inv.image_size
    left = torch.zeros(h, w, dtype=torch.bool)
    left[:, : w // 2] = True  # a drawn mask: the left half may change
    early = _target_change(tiny, inv, target, blend_mask=left, blend_start=0.0)
    late = _target_change(tiny, inv, target, blend_mask=left, blend_start=0.9)
    assert (early - late).abs().mean() > 1e-3  # blend_start is honoured
    # the random tiny model's word maps are flat, so a word's blend region is the whole latent and
    # subtracting another word's region leaves nothing to edit: the target becomes the source
    everything = _target_change(tiny, inv, target, blend_words=[words[2]])
    nothing = _target_change(tiny, inv, target, blend_words=[words[2]], blend_subtract=[words[-1]])
    source = edit(tiny, inv, [target], EditConfig(blend_words=[words[2]], blend_subtract=[words[-1]])).latents[0]
    assert (everything - nothing).abs().mean() > 1e-3 and torch.equal(nothing, source)
