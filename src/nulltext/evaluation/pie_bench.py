"""The PIE-Bench format (Ju et al., "PnP Inversion", ICLR 2024): read it, write it, its masks and metrics.

`mapping_file.json` maps an id to an entry:

    image_path           path of the source photo, relative to the images folder (annotation_images/)
    original_prompt      the source caption; `editing_prompt` the target caption. Square brackets mark
                         the words that differ ("a [cat] sitting" → "a [dog] sitting"); they are not
                         part of the caption and are removed before use, as PIE-Bench's scripts do
    editing_instruction  the edit in words (not used by Prompt-to-Prompt)
    editing_type_id      "0" … "9" (see EDITING_TYPES)
    blended_word         "source_word target_word" for local blend, or "" (or null) for none
    mask                 the region to edit, run-length encoded over the 512×512 raster (below)

The mask, as PIE-Bench's `evaluation/evaluate.py` `mask_decode` reads it: a flat list
[start₀, length₀, start₁, length₁, …] of runs of 1s over the row-major (y · 512 + x) flattening of
the 512×512 mask; 1 = the part to be edited. A run is cut at the end of the raster. After decoding,
PIE-Bench sets the image's 1-pixel border to 1 ("to avoid annotation errors in boundary"), so the border
never counts as background; `decode_mask(border=True)` does the same.

Background-preservation metrics follow PIE-Bench's convention, so numbers compare with its tables:
both images are multiplied by (1 − mask) and PSNR, MSE, SSIM and LPIPS are computed on the whole
images in [0, 1] (the zeroed edit region counts as a perfect match, so PSNR is higher than a mean
over the background pixels alone); SSIM is torchmetrics' default (gaussian 11×11, reflection-padded
borders included), which is what PIE-Bench calls. CLIP similarity of the edited part scores the edited
image multiplied by the mask.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchmetrics.functional import mean_squared_error
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from nulltext.io.images import load_image
from nulltext.errors import NulltextError
from nulltext.evaluation.edit_cases import EditCase

RASTER = (512, 512)
EDITING_TYPES = {
    "0": "random", "1": "change object", "2": "add object", "3": "delete object", "4": "change content",
    "5": "change pose", "6": "change colour", "7": "change material", "8": "change background", "9": "change style",
}


class PieBenchError(NulltextError, ValueError):
    """A mapping file or entry that does not follow the format; says which and what."""


def decode_mask(runs: list[int], shape: tuple[int, int] = RASTER, border: bool = True) -> np.ndarray:
    """PIE-Bench's run-length mask → bool (H, W), True = edit region; `border` sets the 1-px frame as PIE-Bench does."""
    if len(runs) % 2:
        raise PieBenchError(f"a mask has {len(runs)} numbers; it must be [start, length] pairs")
    flat = np.zeros(shape[0] * shape[1], dtype=bool)
    for start, length in zip(runs[0::2], runs[1::2]):
        if start < 0 or length < 0:
            raise PieBenchError(f"mask run ({start}, {length}) is negative")
        flat[start : start + length] = True  # a run past the end stops at the end, as in PIE-Bench
    mask = flat.reshape(shape)
    if border:
        mask[0, :] = mask[-1, :] = mask[:, 0] = mask[:, -1] = True
    return mask


def encode_mask(mask: np.ndarray) -> list[int]:
    """The inverse of `decode_mask(border=False)`: bool (H, W) → [start, length, …] over the row-major raster."""
    flat = np.concatenate([[False], np.asarray(mask, dtype=bool).reshape(-1), [False]])
    edges = np.flatnonzero(flat[1:] != flat[:-1])  # run starts and ends alternate
    starts, ends = edges[0::2], edges[1::2]
    return [int(v) for pair in zip(starts, ends - starts) for v in pair]


def bracketed(prompt: str) -> list[str]:
    """The words inside square brackets, in order."""
    return [w for part in re.findall(r"\[([^\]]*)\]", prompt) for w in part.split()]


def plain(prompt: str) -> str:
    """The caption without PIE-Bench's brackets (and without the double spaces they may leave)."""
    return " ".join(prompt.replace("[", " ").replace("]", " ").split())


@dataclass
class PieEntry:
    key: str
    image_path: str
    source_prompt: str  # brackets removed
    target_prompt: str
    changed: list[tuple[str, str]]  # bracketed words of the source and the target, paired in order ("" if none)
    instruction: str
    edit_type: str  # EDITING_TYPES name
    blend_words: list[str]
    mask: np.ndarray  # (512, 512) bool, True = edit, border set
    type_id: str = ""  # editing_type_id as written ("0" … "9")


def read_mapping(path: str | Path, types: list[str] | None = None, limit: int | None = None) -> list[PieEntry]:
    """Entries of a mapping_file.json, in file order; `types` keeps only those editing_type_ids."""
    path = Path(path)
    entries = []
    for key, item in load_mapping(path).items():
        entry = parse_entry(path, key, item)
        if types is not None and entry.type_id not in types:
            continue
        entries.append(entry)
        if limit is not None and len(entries) >= limit:
            break
    return entries


def load_mapping(path: str | Path) -> dict:
    """The raw id → entry object of a mapping_file.json; PieBenchError naming the file if it is not one."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8-sig"))
    except OSError as e:
        raise PieBenchError(f"cannot read the PIE-Bench mapping file {path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise PieBenchError(f"the PIE-Bench mapping file {path} is not UTF-8 text — save it as UTF-8") from None
    except json.JSONDecodeError as e:
        raise PieBenchError(f"the PIE-Bench mapping file {path} is not JSON ({e.msg} at line {e.lineno} column "
                            f"{e.colno}) — pass PIE-Bench's mapping_file.json") from None
    except RecursionError:
        raise PieBenchError(f"the PIE-Bench mapping file {path} is nested too deeply to be a mapping file — pass "
                            "PIE-Bench's mapping_file.json") from None
    except ValueError:  # a number past Python's 4300-digit limit for int(str)
        raise PieBenchError(f"the PIE-Bench mapping file {path} holds a number of thousands of digits — pass "
                            "PIE-Bench's mapping_file.json") from None
    if not isinstance(raw, dict):
        raise PieBenchError(f"the PIE-Bench mapping file {path} holds a JSON {_kind(raw)}; it must be an object "
                            "of id → entry — pass PIE-Bench's mapping_file.json")
    return raw


def parse_entry(path: str | Path, key: str, item) -> PieEntry:
    """One mapping-file entry; PieBenchError naming the file, the entry and the field that is wrong.

    A null or missing `blended_word` means no blend words (as "" does), as does a missing
    `editing_instruction` (not used here); every other field must have PIE-Bench's type.
    """
    where = f"{Path(path).name} entry {key!r}"
    if not isinstance(item, dict):
        raise PieBenchError(f"{where} is a JSON {_kind(item)}; it must be an object with image_path, "
                            "original_prompt, editing_prompt, editing_type_id and mask")
    for name, example in (("image_path", "'0_random_140/000000000000.jpg'"), ("original_prompt", "'a [cat] sitting'"),
                          ("editing_prompt", "'a [dog] sitting'")):
        if not isinstance(item.get(name), str):
            raise PieBenchError(f"{where}: {name} must be a string like {example}, got {_kind(item.get(name))}")
    type_id, blend = item.get("editing_type_id"), item.get("blended_word")
    if isinstance(type_id, bool) or not isinstance(type_id, (str, int)):
        raise PieBenchError(f"{where}: editing_type_id must be a string like '1', got {_kind(type_id)}")
    if blend is not None and not isinstance(blend, str):
        raise PieBenchError(f"{where}: blended_word must be a string like 'cat dog' (or \"\" or null for no blend "
                            f"words), got {_kind(blend)}")
    instruction = item.get("editing_instruction") or ""
    if not isinstance(instruction, str):
        raise PieBenchError(f"{where}: editing_instruction must be a string, got {_kind(instruction)}")
    runs = item.get("mask")
    if not isinstance(runs, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in runs):
        raise PieBenchError(f"{where}: mask must be a list of [start, length] whole numbers, got {_kind(runs)}")
    try:
        mask = decode_mask(runs)
    except PieBenchError as e:
        raise PieBenchError(f"{where}: {e}") from None
    src, tgt = bracketed(item["original_prompt"]), bracketed(item["editing_prompt"])
    n = max(len(src), len(tgt))
    type_id = str(type_id)
    return PieEntry(key=key, image_path=item["image_path"], source_prompt=plain(item["original_prompt"]),
                    target_prompt=plain(item["editing_prompt"]),
                    changed=[(src[i] if i < len(src) else "", tgt[i] if i < len(tgt) else "") for i in range(n)],
                    instruction=instruction, edit_type=EDITING_TYPES.get(type_id, type_id),
                    blend_words=(blend or "").split(), mask=mask, type_id=type_id)


def _kind(value) -> str:
    """The JSON name of a value's type, for errors."""
    return {dict: "object", list: "list", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number" if isinstance(value, (int, float)) else type(value).__name__)


def load_photo(entry: PieEntry, images_dir: str | Path, size: tuple[int, int]) -> tuple[Image.Image, np.ndarray]:
    """The source photo at the model's size (centre crop + resize) and the mask resized alike (nearest)."""
    photo = load_image(Path(images_dir) / entry.image_path, size)
    mask_image = Image.fromarray(entry.mask)  # the mask is on the 512² raster of PIE-Bench's 512² photos
    if photo.original_size != RASTER:
        mask_image = mask_image.resize(photo.original_size, Image.Resampling.NEAREST)
    left, top, right, bottom = photo.crop_box
    mask_image = mask_image.crop((left, top, right, bottom)).resize(size, Image.Resampling.NEAREST)
    return photo.image, np.asarray(mask_image, dtype=bool)


def write_mapping(path: str | Path, entries: dict[str, dict]) -> Path:
    """Write a mapping_file.json atomically (used to build PIE-Bench-format sets)."""
    from nulltext.io.outputs import publish

    return publish(Path(path), lambda tmp: tmp.write_text(json.dumps(entries, indent=1) + "\n"), force=True)


def _unit(image: Image.Image, keep: np.ndarray | None) -> torch.Tensor:
    """(1, 3, H, W) float64 in [0, 1], multiplied by `keep` when given."""
    x = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0).permute(2, 0, 1)[None]
    return x if keep is None else x * torch.from_numpy(np.asarray(keep, dtype=np.float64))


def background_metrics(source: Image.Image, edited: Image.Image, mask: np.ndarray) -> dict[str, float]:
    """PIE-Bench's "unedit part" PSNR, MSE and SSIM: both images × (1 − mask), whole-image torchmetrics."""
    keep = ~np.asarray(mask, dtype=bool)
    if not keep.any():
        return {"bg_psnr": float("nan"), "bg_mse": float("nan"), "bg_ssim": float("nan")}
    x, y = _unit(edited, keep), _unit(source, keep)
    return {"bg_psnr": peak_signal_noise_ratio(x, y, data_range=1.0).item(),
            "bg_mse": mean_squared_error(x.reshape(-1), y.reshape(-1)).item(),
            "bg_ssim": structural_similarity_index_measure(x, y, data_range=1.0).item()}


def pie_cases(entries: list[PieEntry], images_dir: str | Path, size: tuple[int, int]):
    """Benchmark cases (`edit_bench.EditCase`, no ground truth) of PIE-Bench entries at the model's size."""
    cases = []
    for e in entries:
        photo, mask = load_photo(e, images_dir, size)
        cases.append(EditCase(e.key, e.edit_type, photo, e.source_prompt, e.target_prompt, mask, e.changed,
                              e.blend_words))
    return cases
