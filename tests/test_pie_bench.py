"""The PIE-Bench format: run-length masks against hand-worked ones, prompts, a self-written set end to end."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

from nulltext.evaluation import metrics
from nulltext.bundled import data
from nulltext.cli import main
from nulltext.evaluation.edit_bench import BenchConfig, make_case, run_edit_bench
from nulltext.inversion import InversionConfig
from nulltext.evaluation.pie_bench import (PieBenchError, background_metrics, bracketed, decode_mask, encode_mask, pie_cases,
                                plain, read_mapping, write_mapping)


def test_rle_decoding_hand_worked() -> None:
    # 4×5 raster, row-major: pixel (y, x) is index 5y + x. Runs: [0, 2) → (0,0),(0,1); [7, 10) → (1,2),(1,3),(1,4);
    # [18, 23) → (3,3),(3,4),(4,…) — cut at the end of the 20-pixel raster.
    mask = decode_mask([0, 2, 7, 3, 18, 5], shape=(4, 5), border=False)
    expected = np.array([[1, 1, 0, 0, 0],
                         [0, 0, 1, 1, 1],
                         [0, 0, 0, 0, 0],
                         [0, 0, 0, 1, 1]], dtype=bool)
    np.testing.assert_array_equal(mask, expected)
    # PIE-Bench's evaluation sets the 1-pixel frame to 1: only (2, 1..3) stays 0 of the third row
    framed = decode_mask([6, 1], shape=(4, 5))
    np.testing.assert_array_equal(framed, np.array([[1, 1, 1, 1, 1],
                                                    [1, 1, 0, 0, 1],
                                                    [1, 0, 0, 0, 1],
                                                    [1, 1, 1, 1, 1]], dtype=bool))
    assert decode_mask([], shape=(3, 3), border=False).sum() == 0
    assert decode_mask([0, 262144]).all()  # the whole 512² raster in one run
    with pytest.raises(PieBenchError, match="pairs"):
        decode_mask([1, 2, 3])


def test_rle_encoding_inverts_decoding() -> None:
    assert encode_mask(np.array([[1, 1, 0, 0, 0], [0, 0, 1, 1, 1], [0, 0, 0, 0, 0], [0, 0, 0, 1, 1]], bool)) == \
        [0, 2, 7, 3, 18, 2]
    mask = data.shape_mask(data.scene("test", 3, 512), 512)
    runs = encode_mask(mask)
    assert len(runs) // 2 == int(mask.any(1).sum())  # a convex shape: one run per row it covers
    np.testing.assert_array_equal(decode_mask(runs, border=False), mask)


def test_prompts_and_brackets() -> None:
    assert bracketed("a [red] circle on a [blue sky] background") == ["red", "blue", "sky"]
    assert plain("a [red] circle on a  [blue] background") == "a red circle on a blue background"
    assert plain("[a cat] sitting") == "a cat sitting"


def test_background_metrics_use_pie_bench_convention() -> None:
    source = Image.new("RGB", (16, 16), (100, 100, 100))
    edited = np.full((16, 16, 3), 100, dtype=np.uint8)
    edited[:8] = 255  # the top half (the edit region) changed completely
    edited[8:, :, 0] = 110  # the background is off by 10 levels in one channel
    mask = np.zeros((16, 16), dtype=bool)
    mask[:8] = True
    m = background_metrics(source, Image.fromarray(edited), mask)
    mse = (10 / 255) ** 2 * (8 * 16) / (16 * 16 * 3)  # zeroed edit region counts, as in PIE-Bench
    assert m["bg_mse"] == pytest.approx(mse, rel=1e-9)
    assert m["bg_psnr"] == pytest.approx(10 * math.log10(1 / mse), rel=1e-6)
    assert 0.0 < m["bg_ssim"] < 1.0
    # the zeroed edit region dilutes the error: PIE-Bench's MSE is the masked mean scaled by the background's share
    assert m["bg_mse"] == pytest.approx(metrics.mse(Image.fromarray(edited), source, mask=~mask) * 0.5, rel=1e-9)


def write_pie_set(root, n_per_type: int = 1) -> tuple:
    """A PIE-Bench-format set from the bundled generator: 512² PNGs, RLE masks, bracketed prompts."""
    entries, cases = {}, []
    for type_id, edit_type in (("6", "colour"), ("1", "shape")):
        for i in range(n_per_type):
            case = make_case(edit_type, i, seed=5, resolution=512)
            path = f"{type_id}_test/{edit_type}_{i}.png"
            (root / "annotation_images" / path).parent.mkdir(parents=True, exist_ok=True)
            case.source.save(root / "annotation_images" / path)
            (old, new), = case.changed
            entries[f"{type_id}{i:03d}"] = {
                "image_path": path,
                "original_prompt": case.source_prompt.replace(f" {old} ", f" [{old}] "),
                "editing_prompt": case.target_prompt.replace(f" {new} ", f" [{new}] "),
                "editing_instruction": f"make the {old} {new}", "editing_type_id": type_id,
                "blended_word": f"{old} {new}", "mask": encode_mask(case.mask),
            }
            cases.append(case)
    write_mapping(root / "mapping_file.json", entries)
    return entries, cases


def test_pie_bench_format_end_to_end(bundled, tmp_path) -> None:
    entries, truth = write_pie_set(tmp_path)
    read = read_mapping(tmp_path / "mapping_file.json")
    assert [e.key for e in read] == list(entries)
    assert [e.edit_type for e in read] == ["change colour", "change object"]
    for e, case in zip(read, truth):
        assert e.source_prompt == case.source_prompt and e.target_prompt == case.target_prompt
        assert e.changed == case.changed and e.blend_words == [w for pair in case.changed for w in pair]
        inner = (slice(1, -1), slice(1, -1))
        np.testing.assert_array_equal(e.mask[inner], case.mask[inner])  # the frame is PIE-Bench's border rule
        assert e.mask[0].all() and e.mask[:, -1].all()
    assert [e.key for e in read_mapping(tmp_path / "mapping_file.json", types=["1"])] == ["1000"]

    cases = pie_cases(read, tmp_path / "annotation_images", bundled.default_size)
    for case, t in zip(cases, truth):
        assert case.source.size == (64, 64) and case.mask.shape == (64, 64)
        small = make_case(t.edit_type, 0, seed=5, resolution=64).mask  # the same scene drawn at 64 px
        iou = (case.mask[1:-1, 1:-1] & small[1:-1, 1:-1]).sum() / (case.mask[1:-1, 1:-1] | small[1:-1, 1:-1]).sum()
        assert iou > 0.85, iou
    config = BenchConfig(methods=("direct", "ddim"), inversion=InversionConfig(num_steps=10), convention="pie-bench")
    result = run_edit_bench(bundled, cases, config, dataset="PIE-Bench")
    assert len(result.records) == 2 * 2 * 2 and all(r.error is None for r in result.records)
    assert set(result.skipped) == {"lpips", "clip", "structure_distance"}
    for r in result.records:
        assert "correct" not in r.scores and "gt_psnr" not in r.scores  # no ground truth, no judge
        assert r.scores["bg_lpips"] is None and r.scores["clip_whole"] is None
    by = {(r.case_id, r.method, r.blend): r.scores for r in result.records}
    for key in entries:  # direct inversion reconstructs; DDIM inversion sampled at w = 7.5 drifts
        assert by[key, "direct", True]["rec_psnr"] > by[key, "ddim", True]["rec_psnr"] + 2
        assert 0.0 < by[key, "direct", True]["bg_ssim"] <= 1.0 and by[key, "direct", True]["bg_mse"] > 0.0


def test_cli_bench_on_pie_bench_format(tmp_path, capsys) -> None:
    write_pie_set(tmp_path)
    out = tmp_path / "out"
    code = main(["bench", "edits", "--pie-bench", str(tmp_path / "mapping_file.json"), "--methods", "direct",
                 "--steps", "5", "--types", "6", "-o", str(out), "--quiet", "--device", "cpu"])
    assert code == 0
    text = capsys.readouterr().out
    assert "clip: skipped — no CLIP weights given" in text and "structure_distance: skipped" in text
    payload = json.loads((out / "edits.json").read_text())
    assert payload["dataset"] == "PIE-Bench" and payload["cases_per_type"] == {"change colour": 1}
    assert payload["config"]["convention"] == "pie-bench"
    assert (out / "edits.png").stat().st_size > 1000
    assert "| direct | change colour | yes | 1 |" in (out / "edits.md").read_text()
