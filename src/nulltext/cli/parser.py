"""The argument parser: argument types, setting defaults read from the library's dataclasses, `build_parser`."""

from __future__ import annotations

import argparse
import dataclasses
import typing
from pathlib import Path

from nulltext import __version__
from nulltext.cli.commands import (
    cmd_attention,
    cmd_batch,
    cmd_bench,
    cmd_demo,
    cmd_edit,
    cmd_info,
    cmd_invert,
    cmd_reconstruct,
    cmd_serve,
    cmd_study,
)

DESCRIPTION = "The `nulltext` command line: parses, calls the library, prints. No algorithm lives here."


def _size(text: str) -> tuple[int, int]:
    try:
        w, _, h = text.lower().partition("x")
        return (int(w), int(h or w))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size {text!r} is not WIDTHxHEIGHT, e.g. 512x512") from None


def _count(low: int, high: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number from {low} to {high}")
        return value

    return parse


def _box(text: str) -> tuple[int, int, int, int]:
    try:
        box = tuple(int(v) for v in text.split(","))
    except ValueError:
        box = ()
    if len(box) != 4:
        raise argparse.ArgumentTypeError(f"crop box {text!r} is not LEFT,TOP,RIGHT,BOTTOM in pixels")
    return box  # type: ignore[return-value]


def _range(text: str):
    try:
        parts = [float(v) for v in text.split(",")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        return parts[0]
    if len(parts) == 2:
        return (parts[0], parts[1])
    raise argparse.ArgumentTypeError(f"{text!r} is not a fraction (0.8) or a range START,END (0.1,0.8)")


def _scale(text: str) -> tuple[str, float]:
    word, sep, value = text.rpartition("=")
    try:
        if sep and word:
            return word, float(value)
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"{text!r} is not WORD=SCALE, e.g. tiger=2")


def _words(text: str) -> list[str]:
    return [w.strip() for w in text.split(",") if w.strip()]


def _default(config_class, name: str):
    """A setting's default, read from its dataclass: the one source of defaults."""
    return next(f.default for f in dataclasses.fields(config_class) if f.name == name)


def build_parser() -> argparse.ArgumentParser:
    from nulltext.inversion.config import InversionConfig, Method, Optimizer
    from nulltext.editing.config import Composite, EditConfig, MaskCombine, Mode, TargetNull

    inv, ed = (lambda name: _default(InversionConfig, name)), (lambda name: _default(EditConfig, name))
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--model", default=None, help="bundled (default), a hub id, a diffusers folder or a .safetensors file")
    common.add_argument("--device", default=None, help="cuda, mps or cpu (default: the best available)")
    common.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16", "fp32", "fp16", "bf16"])
    common.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    common.add_argument("--force", action="store_true", help="overwrite existing outputs")
    common.add_argument("--allow-pickle", action="store_true",
                        help="load a pickled .ckpt model (pickles can run code: only from a source you trust)")
    common.add_argument("--lora", action="append", metavar="FILE[:SCALE]",
                        help="a LoRA .safetensors file fused into the model at SCALE (default 1); repeatable")
    common.add_argument("--model-config", default=None, metavar="FOLDER",
                        help="for a single-file --model: a local diffusers folder of the same family whose configs "
                             "describe it (no network needed)")
    common.add_argument("--debug", action="store_true", help="show the traceback of an error (or set NULLTEXT_DEBUG=1)")

    p = argparse.ArgumentParser(prog="nulltext", description=DESCRIPTION)
    p.add_argument("--version", action="version", version=f"nulltext {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("demo", parents=[common], help="bundled photo + model: invert, reconstruct, edit, one grid")
    s.add_argument("-o", "--output", default="demo-out", help="output folder")
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser("invert", parents=[common], help="invert a photo into an .nti file")
    s.add_argument("photo")
    s.add_argument("--prompt", "-p", default=None,
                   help='a caption of the photo (default, or "auto": the --captioner writes one, and says which)')
    s.add_argument("--captioner", default=None, metavar="FOLDER|HUB_ID",
                   help='an image-captioning model for a photo without --prompt: a local folder or a hub id in the '
                        'local Hugging Face cache (BLIP-style), or "bundled" (default for the bundled model)')
    s.add_argument("-o", "--output", help="the .nti file (default: PHOTO's name with .nti, here)")
    s.add_argument("--method", default=inv("method"), choices=list(typing.get_args(Method)),
                   help=f"inversion method (default: {inv('method')})")
    s.add_argument("--steps", type=_count(1, 1000), default=inv("num_steps"), help=f"sampling steps: DDIM, or flow-matching Euler on SD 3.x (default: {inv('num_steps')})")
    s.add_argument("--guidance", type=float, default=inv("guidance_scale"),
                   help=f"classifier-free guidance scale w (default: {inv('guidance_scale')})")
    s.add_argument("--optimizer", default=inv("optimizer"), choices=list(typing.get_args(Optimizer)),
                   help=f"how null-text optimises each step's ∅_t: secant steps (default: {inv('optimizer')}; ≈ 0.4× "
                        "the UNet work, docs/benchmarks.md) or adam, the paper's")
    s.add_argument("--fast", action="store_const", dest="optimizer", const="secant", help=argparse.SUPPRESS)
    s.add_argument("--inner-steps", type=_count(0, 1000),
                   help=f"secant trials (default: {inv('trials')}) or Adam updates (default: {inv('inner_steps')}) "
                        "per step at most")
    s.add_argument("--lr", type=float, default=inv("learning_rate"),
                   help=f"Adam learning rate at the first step (default: {inv('learning_rate')})")
    s.add_argument("--size", type=_size, help="WIDTHxHEIGHT (default: the model's native size)")
    s.add_argument("--crop", type=_box, help="LEFT,TOP,RIGHT,BOTTOM crop box (default: centre crop)")
    s.add_argument("--no-pivot", action="store_true", help="do not store the pivot trajectory")
    s.set_defaults(func=cmd_invert)

    s = sub.add_parser("reconstruct", parents=[common], help="reconstruct the photo from an .nti file")
    s.add_argument("inversion")
    s.add_argument("-o", "--output")
    s.set_defaults(func=cmd_reconstruct)

    s = sub.add_parser("edit", parents=[common], help="Prompt-to-Prompt edits of an inversion")
    s.add_argument("inversion")
    s.add_argument("targets", nargs="*", help="edited captions (default: the source caption, e.g. for --reweight)")
    s.add_argument("-o", "--output", default="edits", help="output folder")
    s.add_argument("--mode", default=ed("mode"), choices=list(typing.get_args(Mode)),
                   help=f"auto: word swap when the word counts match, else refinement (default: {ed('mode')})")
    s.add_argument("--cross", type=_range, default=ed("cross_replace"),
                   help=f"cross-attention replacement: fraction or START,END (default: {ed('cross_replace')})")
    s.add_argument("--word-cross", type=lambda t: (t.partition("=")[0], _range(t.partition("=")[2])),
                   action="append", help="per-word cross replacement, WORD=0.4 or WORD=0.1,0.6")
    s.add_argument("--self", dest="self_replace", type=_range, default=ed("self_replace"),
                   help=f"self-attention replacement: fraction or START,END (default: {ed('self_replace')})")
    s.add_argument("--self-fade", type=float, default=ed("self_fade"),
                   help="fraction of steps at the end of --self over which the injection fades out; "
                        f"--self 0.4 --self-fade 0 is the authors' (default: {ed('self_fade')})")
    s.add_argument("--reweight", type=_scale, action="append", help="WORD=SCALE, repeatable (negative and 0 allowed)")
    s.add_argument("--blend", type=_words, help="comma-separated words marking the region to edit, or 'auto': "
                                                "the words the targets change (printed)")
    s.add_argument("--subtract", type=_words, help="comma-separated words whose region stays as in the source")
    s.add_argument("--mask", type=Path, help="a PNG at the photo's size: white = where the edit may change the photo")
    s.add_argument("--mask-combine", default=ed("blend_mask_combine"), choices=list(typing.get_args(MaskCombine)),
                   help="with --blend: edit where either marks (union) or both (intersection) "
                        f"(default: {ed('blend_mask_combine')})")
    s.add_argument("--threshold", type=float, default=ed("blend_threshold"),
                   help=f"local blend mask threshold (default: {ed('blend_threshold')})")
    s.add_argument("--blend-start", type=float, default=ed("blend_start"),
                   help=f"fraction of steps before blending starts (default: {ed('blend_start')})")
    s.add_argument("--target-null", default=ed("target_null"), choices=list(typing.get_args(TargetNull)),
                   help="unconditional embedding of the edited captions: ψ(\"\") (empty) or the inversion's ∅_t as in "
                        f"the paper (inverted) (default: {ed('target_null')})")
    s.add_argument("--composite", default=ed("composite"), choices=list(typing.get_args(Composite)),
                   help="with --blend or --mask: put the photo back on every pixel the edit did not move or that lies "
                        "beyond 3/32 of the side from the mask (changed), "
                        f"or keep the decoder's output everywhere as the authors do (off) (default: {ed('composite')})")
    s.set_defaults(func=cmd_edit)

    s = sub.add_parser("attention", parents=[common], help="cross-attention maps per token as a grid PNG")
    s.add_argument("inversion")
    s.add_argument("-o", "--output")
    s.set_defaults(func=cmd_attention)

    s = sub.add_parser("study", parents=[common], help="the paper's ablation and guidance table on this model")
    s.add_argument("study", choices=["ablation", "guidance"])
    s.add_argument("--images", type=_count(1, 10000), default=20, help="test photos of the bundled data set")
    s.add_argument("--checkpoints", help="comma-separated cumulative iteration counts (ablation)")
    s.add_argument("-o", "--output", default="study", help="output folder")
    s.set_defaults(func=cmd_study)

    s = sub.add_parser("bench", parents=[common], help="benchmarks: inversion methods × Prompt-to-Prompt edits, scored")
    s.add_argument("bench", choices=["edits"])
    s.add_argument("--per-type", type=_count(1, 100000), default=30, help="bundled cases per edit type")
    s.add_argument("--methods", type=_words, default=["null-text", "negative-prompt", "direct", "ddim"],
                   help="comma-separated inversion methods")
    s.add_argument("--seed", type=int, default=0, help="seed of the bundled cases")
    s.add_argument("--steps", type=_count(1, 1000), default=50, help="DDIM steps")
    s.add_argument("--target-null", type=_words, default=["empty", "inverted"],
                   help="comma-separated: edit each inversion with ψ(\"\") (empty) and/or its ∅_t (inverted, the "
                        "paper's) on the edited captions; rows of the second are labelled \"METHOD, ∅ on targets\" "
                        "(default: empty,inverted)")
    s.add_argument("--pie-bench", metavar="MAPPING_FILE", help="run on a PIE-Bench mapping_file.json instead")
    s.add_argument("--images", help="PIE-Bench images folder (default: annotation_images/ beside the mapping file)")
    s.add_argument("--types", type=_words, help="PIE-Bench editing_type_ids to keep, e.g. 1,6")
    s.add_argument("--limit", type=_count(1, 100000), help="first N PIE-Bench entries only")
    s.add_argument("--lpips", metavar="HUB_DIR", help="torch hub dir with torchvision's SqueezeNet weights (LPIPS)")
    s.add_argument("--clip", metavar="PATH", help="local CLIP model folder, e.g. openai/clip-vit-large-patch14")
    s.add_argument("--dino", metavar="PATH", help="local DINO ViT folder, e.g. facebook/dino-vitb8 (structure distance)")
    s.add_argument("--composite", default=ed("composite"), choices=list(typing.get_args(Composite)),
                   help="edits with local blend: photo put back where the edit moved no pixel or far from the mask (changed), or the "
                        f"decoder's output (off, the authors') (default: {ed('composite')})")
    s.add_argument("--inversions", metavar="DIR", help="keep each case's inversion in DIR and reuse it on a re-run "
                   "with the same model, settings and case (for comparing edit settings)")
    s.add_argument("-o", "--output", default="bench", help="output folder")
    s.set_defaults(func=cmd_bench)

    s = sub.add_parser("serve", parents=[common], help="a local web app: upload, invert, edit, attention maps")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    s.add_argument("--port", type=_count(1, 65535), default=7860, help="port (default: 7860)")
    s.add_argument("--share", choices=["off", "on"], default="off",
                   help="on: also open a temporary public gradio.live link (sends traffic off the machine)")
    s.add_argument("--captioner", default=None, metavar="FOLDER|HUB_ID",
                   help="the image-captioning model behind the page's \"Caption it\" button (a local folder or a hub "
                        "id in the local Hugging Face cache; default: the bundled captioner on the bundled model)")
    s.set_defaults(func=cmd_serve)

    s = sub.add_parser("batch", parents=[common], help="invert and edit every row of a manifest, resumably")
    s.add_argument("manifest", help="a .jsonl or .csv manifest (image, prompt, edits, settings) or a PIE-Bench mapping_file.json")
    s.add_argument("-o", "--output", required=True, help="output folder (inversions/, edits/, results.jsonl)")
    s.add_argument("--batch-size", "-k", type=_count(1, 4096), default=4, help="photos inverted together (default: 4)")
    s.add_argument("--redo", action="store_true", help="rerun rows already finished, overwriting their files (= --force)")
    s.add_argument("--images", help="PIE-Bench images folder (default: annotation_images/ beside the mapping file)")
    s.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                   help="run on Ray Data: a local Ray with this machine's CPUs, or the cluster at ADDRESS")
    s.add_argument("--workers", type=_count(1, 100000), help="Ray actors, each with its own model (default: CPUs or GPUs)")
    s.add_argument("--gpus-per-worker", type=float, help="GPUs per Ray actor (default: 1 if the cluster has GPUs, else 0)")
    s.set_defaults(func=cmd_batch)

    s = sub.add_parser("info", help="print an .nti file's metadata")
    s.add_argument("inversion")
    s.add_argument("--debug", action="store_true", help="show the traceback of an error (or set NULLTEXT_DEBUG=1)")
    s.set_defaults(func=cmd_info, reads_no_model=True)  # no torch, no model library: milliseconds
    return p
