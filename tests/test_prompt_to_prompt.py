"""Prompt-to-Prompt edits of inverted test photos on the bundled model, measured in pixels."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nulltext.bundled import data
from nulltext.editing import edit, reconstruct
from nulltext.images import to_pil, to_tensor
from nulltext.inversion import InversionConfig, invert
from nulltext.metrics import psnr
from nulltext.prompt_to_prompt import EditConfig

def dilate(mask: np.ndarray, r: int) -> np.ndarray:
    m = torch.from_numpy(mask).float()[None, None]
    return F.max_pool2d(m, 2 * r + 1, stride=1, padding=r)[0, 0].numpy() > 0.5


def erode(mask: np.ndarray, r: int) -> np.ndarray:
    return ~dilate(~mask, r)


# Test photos whose shape and background are neither green (the swap's target colour).
INDICES = [i for i in range(40) if "green" not in data.sample("test", i)[1]][:3]


@pytest.fixture(scope="module")
def cases(bundled):
    out = []
    for index in INDICES:
        scene = data.scene("test", index)
        image, caption = data.sample("test", index)
        inv = invert(bundled, to_tensor(image), caption, InversionConfig())
        inside = erode(data.shape_mask(scene, 64), 2)
        outside = ~dilate(data.shape_mask(scene, 64), 3)
        out.append((scene, inv, inside, outside))
    return out


def _rgb(images):
    return [np.asarray(im).astype(np.float64) for im in to_pil(images)]


def _colour_swap(bundled, case, **config):
    scene, inv, inside, outside = case
    target = inv.prompt.replace(f"a {scene.colour} {scene.shape}", f"a green {scene.shape}")
    result = edit(bundled, inv, [target], EditConfig(**config))
    source, edited = _rgb(result.images)
    colour = data.nearest_colour(edited[inside].mean(0))
    bg_psnr = psnr(torch.from_numpy(edited[outside]), torch.from_numpy(source[outside]), data_range=255.0)
    return colour, bg_psnr


def test_identity_edit_reproduces_the_reconstruction(bundled, cases):
    _, inv, _, _ = cases[0]
    result = edit(bundled, inv, [inv.prompt])
    rec = reconstruct(bundled, inv)
    assert torch.equal(result.images[0], rec[0])
    assert (result.images[1] - rec[0]).abs().max() < 2 / 255


def test_colour_swap_with_and_without_local_blend(bundled, cases):
    with_blend, without = [], []
    for case in cases:
        scene = case[0]
        colour, bg = _colour_swap(bundled, case, blend_words=[scene.shape])
        assert colour == "green", f"{scene.caption()}: shape became {colour} with blend"
        assert bg >= 25.0, f"{scene.caption()}: background PSNR {bg:.1f} dB with blend"
        with_blend.append(bg)
        colour, bg = _colour_swap(bundled, case)
        assert colour == "green", f"{scene.caption()}: shape became {colour} without blend"
        without.append(bg)
    print(f"\nbackground PSNR with local blend {np.round(with_blend, 1)}, without {np.round(without, 1)}")
    assert np.mean(without) >= 15.0
    assert np.mean(with_blend) > np.mean(without)


def test_reweighting_the_colour_word_weakens_the_colour(bundled, cases):
    distances = {}
    for scale in (1.0, 0.0, -2.0):
        d = []
        for scene, inv, inside, _ in cases:
            result = edit(bundled, inv, [inv.prompt], EditConfig(reweight={scene.colour: scale}))
            edited = _rgb(result.images[1:])[0]
            d.append(np.linalg.norm(edited[inside].mean(0) - np.array(data.PALETTE[scene.colour])))
        distances[scale] = float(np.mean(d))
    print(f"\nmean distance of the shape from its colour by scale: {distances}")
    assert distances[0.0] > distances[1.0] + 10 and distances[-2.0] > distances[1.0] + 20


def test_shape_swap_changes_the_shape(bundled, cases):
    from nulltext.bundled.evaluate import judge

    changed = 0
    for scene, inv, _, _ in cases:
        new = "square" if scene.shape != "square" else "circle"
        result = edit(bundled, inv, [inv.prompt.replace(scene.shape, new)], EditConfig(blend_words=[scene.shape, new]))
        j = judge(to_pil(result.images[1:])[0])
        changed += j.shape == new and j.colour == scene.colour and j.background == scene.background
    assert changed >= 2, f"{changed}/3 shape swaps judged right"
