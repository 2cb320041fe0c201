"""The study's photos and judge from the bundled model's synthetic data set.

Each test photo comes with a caption of another photo that differs in colour, shape and background
(the random-caption ablation) and a colour swap of its shape to a palette colour that is neither the
shape's nor the background's, blended on the shape's word; the judge checks the swap with the
bundled evaluator (the new colour, the same shape, the same background).
"""

from __future__ import annotations

from collections.abc import Iterable

from PIL import Image

from nulltext.bundled import data
from nulltext.bundled.judge import judge
from nulltext.evaluation.study import StudyPhoto

JUDGED_BY = "the bundled model's evaluator"
SWAP_COLOURS = ("green", "yellow", "white", "purple")


def _other_caption(index: int) -> str:
    """A caption of a later test photo that differs in colour, shape and background."""
    own = data.scene("test", index)
    for j in range(index + 1, index + 200):
        s = data.scene("test", j)
        if s.colour != own.colour and s.shape != own.shape and s.background != own.background:
            return s.caption()
    raise RuntimeError(f"no caption differing from test photo {index} in everything")


def colour_swap(scene: data.Scene) -> tuple[str, str]:
    """(target caption, new colour): the shape recoloured to a colour that is neither its own nor the background's."""
    new = next(c for c in SWAP_COLOURS if c not in (scene.colour, scene.background))
    return scene.caption().replace(f"a {scene.colour} {scene.shape}", f"a {new} {scene.shape}"), new


def study_photos(indices: Iterable[int], resolution: int) -> list[StudyPhoto]:
    """Test photos (by index) at the model's resolution, with their ablation caption and colour swap."""
    photos = []
    for index in indices:
        image, caption = data.sample("test", index, resolution)
        scene = data.scene("test", index, resolution)
        target, _ = colour_swap(scene)
        photos.append(StudyPhoto(image, caption, _other_caption(index), target, [scene.shape]))
    return photos


def colour_swap_judge(edited: Image.Image, photo: StudyPhoto) -> bool:
    """The evaluator sees the swap's colour, the photo's shape and its background."""
    source, target = photo.caption.split(), photo.edit_target.split()
    # captions read "a <colour> <shape> on a <background> background"
    colour, shape, background = target[1], source[2], source[5]
    j = judge(edited)
    return j.colour == colour and j.shape == shape and j.background == background
