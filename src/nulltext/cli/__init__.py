"""The `nulltext` command line: parses, calls the library, prints. No algorithm lives here."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import typing
from pathlib import Path

from nulltext import __version__
from nulltext.errors import NulltextError

EXIT_ERROR = 2


class CLIError(NulltextError):
    """A user-facing one-line error."""


# ---------------------------------------------------------------------------------------------
# Parsing helpers


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


def _settings(config_class, **values):
    """Build a settings dataclass; its own checks (`__post_init__`) become one-line errors."""
    try:
        return config_class(**values)
    except ValueError as e:
        raise CLIError(str(e)) from None


# ---------------------------------------------------------------------------------------------
# Shared pieces


def _load_model(args):
    from nulltext.model import load_model

    return load_model(args.model, device=args.device, dtype=args.dtype, allow_pickle=args.allow_pickle,
                      config=getattr(args, "model_config", None))


def _progress(args, total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, disable=args.quiet, leave=False, file=sys.stderr)


def _step_bar(args, desc: str):
    """A tqdm-driven StepCallback and the bar, for sampling loops."""
    bar = {"bar": None}

    def callback(done: int, total: int) -> None:
        if bar["bar"] is None:
            bar["bar"] = _progress(args, total, desc)
        bar["bar"].update(1)
        if done == total:
            bar["bar"].close()

    return callback


def _refuse_existing(paths: list[Path], args) -> None:
    """Before the work: earlier results are never overwritten without --force, and every output can be written."""
    from nulltext.io.outputs import check_outputs

    check_outputs(paths, force=args.force)


def _open(args):
    """The model and the inversion file it must have made."""
    from nulltext.inversion.file import load_inversion

    model = _load_model(args)
    inversion = load_inversion(args.inversion, model)
    made_in, now = inversion.model_dtype, str(model.dtype).removeprefix("torch.")
    if made_in and made_in != now and not args.quiet:
        print(f"nulltext: note: {args.inversion} was inverted in {made_in}, replayed in {now}; "
              f"pass --dtype {made_in} for the exact reconstruction", file=sys.stderr)
    return model, inversion


def _edit_config(args, inversion):
    from nulltext.io.images import load_mask
    from nulltext.editing.prompt_to_prompt import EditConfig

    mask = None if args.mask is None else load_mask(args.mask, inversion.image_size)
    return _settings(
        EditConfig, mode=args.mode, cross_replace=args.cross, self_replace=args.self_replace,
        word_cross_replace=dict(args.word_cross or []), reweight=dict(args.reweight or []),
        blend_words=args.blend or [], blend_subtract=args.subtract or [], blend_mask=mask,
        blend_mask_combine=args.mask_combine, blend_threshold=args.threshold, blend_start=args.blend_start,
        target_null=args.target_null,
    )


def _metadata(model, inversion, **fields) -> dict[str, str]:
    meta = {"nulltext_version": __version__, "model": model.source, "model_identity": model.identity,
            "source_prompt": inversion.prompt}
    meta.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in fields.items()})
    return meta


# ---------------------------------------------------------------------------------------------
# Commands


def cmd_invert(args) -> None:
    from nulltext.io.images import load_image, to_tensor
    from nulltext.inversion.null_text import InversionConfig, invert
    from nulltext.core.ddim import make_schedule
    from nulltext.inversion.file import save_inversion

    out = Path(args.output or Path(args.photo).with_suffix(".nti").name)
    _refuse_existing([out], args)
    config = _settings(InversionConfig, method=args.method, num_steps=args.steps, guidance_scale=args.guidance,
                       inner_steps=args.inner_steps, learning_rate=args.lr, keep_pivot=not args.no_pivot,
                       optimizer="secant" if args.fast else "adam")
    model = _load_model(args)
    make_schedule(model.scheduler_config, config.num_steps)  # the scheduler's own step limit
    size = args.size or model.default_size
    model.check_size(size)
    model.check_prompt(args.prompt)
    photo = load_image(args.photo, size, crop=args.crop)
    bar = _progress(args, config.num_steps, "null-text" if config.method == "null-text" else "ddim")

    def callback(report) -> None:
        bar.update(1)
        bar.set_postfix(t=report.timestep, iters=report.inner_iterations, loss=f"{report.loss:.2e}")

    import numpy as np
    import torch

    inversion = invert(model, to_tensor(photo.image), args.prompt, config, callback,
                       photo=torch.from_numpy(np.asarray(photo.image).copy()), crop_box=photo.crop_box,
                       source_path=str(photo.path))
    bar.close()
    save_inversion(inversion, out, force=args.force, keep_both=True)
    iters = sum(inversion.inner_iterations)
    print(f"wrote {out}  ({inversion.wall_time:.1f} s, {iters} Adam iterations"
               + (f", final loss {inversion.losses[0]:.2e})" if inversion.losses else ")"))


def _psnr_report(model, inversion, image) -> str:
    from nulltext.io.images import to_pil, to_tensor
    from nulltext.evaluation.metrics import psnr, ssim

    if inversion.photo is None:
        return ""
    from PIL import Image

    photo = Image.fromarray(inversion.photo.numpy())
    rec = to_pil(image)[0]
    bound = to_pil(model.decode_latents(model.encode_image(to_tensor(photo))))[0]
    return (f"PSNR {psnr(rec, photo):.2f} dB, SSIM {ssim(rec, photo):.4f} against the photo; "
            f"VAE-only bound {psnr(bound, photo):.2f} dB")


def cmd_reconstruct(args) -> None:
    from nulltext.editing.from_inversion import reconstruct
    from nulltext.io.images import save_png, to_pil

    out = Path(args.output or Path(args.inversion).with_suffix(".png").name)
    _refuse_existing([out], args)
    model, inversion = _open(args)
    image = reconstruct(model, inversion, _step_bar(args, "reconstruct"))
    report = _psnr_report(model, inversion, image)
    save_png(to_pil(image)[0], out, _metadata(model, inversion, kind="reconstruction"), force=args.force,
             keep_both=True)
    print(f"wrote {out}")
    if report:
        print(report)


def cmd_edit(args) -> None:
    from nulltext.editing.from_inversion import edit
    from nulltext.io.images import make_grid, save_png, to_pil

    out = Path(args.output)
    names = [out / f"edit_{j + 1:02d}.png" for j in range(max(1, len(args.targets)))] + [out / "grid.png"]
    _refuse_existing(names, args)
    model, inversion = _open(args)
    targets = args.targets or [inversion.prompt]
    config = _edit_config(args, inversion)
    result = edit(model, inversion, targets, config, _step_bar(args, "edit"))
    images = to_pil(result.images)
    settings = {k: v for k, v in dataclasses.asdict(config).items() if k != "blend_mask"}
    if args.mask is not None:
        settings["blend_mask"] = str(args.mask)
    for j, target in enumerate(targets):
        save_png(images[j + 1], names[j], _metadata(model, inversion, kind="edit", target_prompt=target, **settings),
                 force=args.force, keep_both=True)
    labels = [f"source: {inversion.prompt}", *targets]
    save_png(make_grid(images, labels), names[-1], _metadata(model, inversion, kind="edit grid", targets=targets),
             force=args.force, keep_both=True)
    for p in names:
        print(f"wrote {p}")


def cmd_attention(args) -> None:
    from nulltext.editing.from_inversion import attention_maps
    from nulltext.io.images import make_grid, save_png
    from nulltext.io.viz import attention_tiles

    out = Path(args.output or Path(args.inversion).with_suffix(".attention.png").name)
    _refuse_existing([out], args)
    model, inversion = _open(args)
    tokens, maps, image = attention_maps(model, inversion, _step_bar(args, "attention"))
    tiles = attention_tiles(image, maps)
    save_png(make_grid(tiles, ["reconstruction", *tokens]), out, _metadata(model, inversion, kind="attention maps"),
             force=args.force, keep_both=True)
    print(f"wrote {out}")


def cmd_info(args) -> None:
    from nulltext.inversion.file import load_inversion

    inv = load_inversion(args.inversion)
    T = inv.config.num_steps
    lines = [
        f"prompt:          {inv.prompt}",
        f"method:          {inv.config.method}, {T} DDIM steps, guidance {inv.config.guidance_scale}",
        f"image:           {inv.image_size[0]}x{inv.image_size[1]}"
        + (f" from {inv.source_path} crop {inv.crop_box}" if inv.source_path else ""),
        f"model:           {inv.model_source} (weights {inv.model_identity})",
        f"latent:          {tuple(inv.latent_T.shape)}, null embeddings {tuple(inv.null_embeddings.shape)}"
        + (f", pooled {tuple(inv.null_pooled.shape)}" if inv.null_pooled is not None else "")
        + (", pivot stored" if inv.pivot is not None else ""),
        f"wall time:       {inv.wall_time:.1f} s",
    ]
    if inv.losses:
        lines.append(f"Adam iterations: {sum(inv.inner_iterations)} (max {max(inv.inner_iterations)} per step)")
        lines.append(f"final losses:    t=T {inv.losses[-1]:.2e}, t=1 {inv.losses[0]:.2e}")
    print("\n".join(lines))


def cmd_study(args) -> None:
    from nulltext.evaluation import study
    from nulltext.evaluation.study_photos import JUDGED_BY, colour_swap_judge, study_photos

    out = Path(args.output)
    bar = _progress(args, None, f"study {args.study}")

    def progress(text: str) -> None:
        bar.set_description_str(text)
        bar.update(1)

    names = ["ablation.png", "ablation.md", "ablation.json"] if args.study == "ablation" else ["guidance.md", "guidance.json"]
    _refuse_existing([out / n for n in names], args)
    model = _load_model(args)
    photos = study_photos(range(args.images), model.default_size[0])
    if args.study == "ablation":
        config = study.AblationConfig()
        if args.checkpoints:
            config.checkpoints = tuple(int(v) for v in args.checkpoints.split(","))
        result = study.run_ablation(model, photos, config, progress)
        paths = study.ablation_report(result, out, model.source, config.inversion.num_steps)
    else:
        rows = study.run_guidance_table(model, photos, colour_swap_judge, progress)
        paths = study.guidance_report(rows, out, args.images, JUDGED_BY)
    bar.close()
    for p in paths:
        print(f"wrote {p}")


def cmd_bench(args) -> None:
    from nulltext.evaluation import edit_bench
    from nulltext.inversion.null_text import InversionConfig
    from nulltext.evaluation.perceptual import PerceptualConfig
    from nulltext.editing.prompt_to_prompt import TargetNull

    out = Path(args.output)
    _refuse_existing([out / n for n in edit_bench.OUTPUTS], args)
    unknown = [m for m in args.methods if m not in edit_bench.METHODS]
    if unknown:
        raise CLIError(f"unknown method {unknown[0]!r}; choose from {', '.join(edit_bench.METHODS)}")
    wrong = [t for t in args.target_null if t not in typing.get_args(TargetNull)]
    if wrong:
        raise CLIError(f"unknown target null {wrong[0]!r}; choose from {', '.join(typing.get_args(TargetNull))}")
    if args.images and not args.pie_bench:
        raise CLIError("--images needs --pie-bench MAPPING_FILE")
    model = _load_model(args)
    config = edit_bench.BenchConfig(
        methods=tuple(args.methods), inversion=InversionConfig(num_steps=args.steps),
        target_nulls=tuple(args.target_null),
        perceptual=PerceptualConfig(lpips=args.lpips, clip=args.clip, dino=args.dino, device=str(model.device)))
    if args.pie_bench:
        from nulltext.evaluation import pie_bench

        entries = pie_bench.read_mapping(args.pie_bench, types=args.types, limit=args.limit)
        images = args.images or Path(args.pie_bench).parent / "annotation_images"
        cases, dataset, config.convention = pie_bench.pie_cases(entries, images, model.default_size), "PIE-Bench", "pie-bench"
    else:
        cases, dataset = edit_bench.make_cases(args.per_type, args.seed, model.default_size[0]), "bundled"
    bar = _progress(args, len(cases) * len(config.methods), "bench edits")

    def progress(text: str) -> None:
        bar.set_postfix_str(text)
        bar.update(1)

    result = edit_bench.run_edit_bench(model, cases, config, progress, dataset)
    bar.close()
    paths = edit_bench.bench_report(result, out)
    if not args.quiet:
        print(edit_bench.markdown_table(result))
    for name, why in result.skipped.items():
        print(f"{name}: skipped — {why}")
    for p in paths:
        print(f"wrote {p}")
    print(f"{len(cases)} cases × {len(config.methods)} methods in {result.seconds / 60:.1f} min")


def cmd_serve(args) -> None:
    try:
        from nulltext.app import launch
    except ImportError as e:
        raise CLIError(f"the web app needs Gradio ({e.name} is not installed) — pip install 'nulltext[ui]'") from None

    model = _load_model(args)
    if not args.quiet:
        print(f"nulltext: serving {model.source} at http://{args.host}:{args.port} (Ctrl-C stops)", file=sys.stderr)
    launch(model, host=args.host, port=args.port, share=args.share == "on", quiet=args.quiet)


def cmd_batch(args) -> int:
    from nulltext.batch import BatchConfig, ManifestError, prepare_output, read_manifest, run_manifest

    try:
        rows = read_manifest(args.manifest, args.images)
    except ManifestError as e:
        raise CLIError(str(e)) from None
    config = _settings(BatchConfig, batch_size=args.batch_size, redo=args.redo or args.force)
    for warning in prepare_output(args.output):  # an unwritable -o is one line before the model loads
        print(f"nulltext: warning: {warning}", file=sys.stderr)
    model = _load_model(args)
    rows_bar = _progress(args, len(rows), "rows")
    steps_bar = _progress(args, None, "steps") if args.ray is None else None  # Ray workers report rows only
    failed = []

    def on_row(record: dict) -> None:
        failed.extend([record["row"]] if record["status"] not in ("done", "duplicate") else [])
        rows_bar.update(1)
        rows_bar.set_postfix(failed=len(failed))

    def on_step(report) -> None:
        if report.step == 1:
            steps_bar.reset(total=report.total)
        steps_bar.update(1)
        steps_bar.set_postfix(iters=report.inner_iterations, loss=f"{report.loss:.2e}")

    executor = None
    if args.ray is not None:
        from nulltext.batch.ray_data import RayOptions, ray_executor

        options = _settings(RayOptions, address=None if args.ray == "local" else args.ray, workers=args.workers,
                            gpus_per_worker=args.gpus_per_worker)
        executor = ray_executor(options, args.model, args.device, args.dtype, args.output, config, args.allow_pickle)
    summary = run_manifest(model, rows, args.output, config, executor, on_row, on_step if steps_bar is not None else None,
                           on_plan=lambda pending: rows_bar.reset(total=pending))
    for bar in (steps_bar, rows_bar):
        if bar is not None:
            bar.close()
    print(summary.table())
    print(f"results: {Path(args.output) / 'results.jsonl'}")
    for warning in summary.warnings:
        print(f"nulltext: warning: {warning}", file=sys.stderr)
    return 1 if summary.failed else 0


def cmd_demo(args) -> None:
    from nulltext.demo import run_demo

    model = _load_model(args)
    result = run_demo(model, Path(args.output), force=args.force, quiet=args.quiet)
    for line in result.summary_lines():
        print(line)


# ---------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from nulltext.inversion.null_text import InversionConfig, Method
    from nulltext.editing.prompt_to_prompt import EditConfig, MaskCombine, Mode, TargetNull

    inv, ed = (lambda name: _default(InversionConfig, name)), (lambda name: _default(EditConfig, name))
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--model", default=None, help="bundled (default), a hub id, a diffusers folder or a .safetensors file")
    common.add_argument("--device", default=None, help="cuda, mps or cpu (default: the best available)")
    common.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16", "fp32", "fp16", "bf16"])
    common.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    common.add_argument("--force", action="store_true", help="overwrite existing outputs")
    common.add_argument("--allow-pickle", action="store_true",
                        help="load a pickled .ckpt model (pickles can run code: only from a source you trust)")
    common.add_argument("--model-config", default=None, metavar="FOLDER",
                        help="for a single-file --model: a local diffusers folder of the same family whose configs "
                             "describe it (no network needed)")
    common.add_argument("--debug", action="store_true", help="show the traceback of an error (or set NULLTEXT_DEBUG=1)")

    p = argparse.ArgumentParser(prog="nulltext", description=__doc__)
    p.add_argument("--version", action="version", version=f"nulltext {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("demo", parents=[common], help="bundled photo + model: invert, reconstruct, edit, one grid")
    s.add_argument("-o", "--output", default="demo-out", help="output folder")
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser("invert", parents=[common], help="invert a photo into an .nti file")
    s.add_argument("photo")
    s.add_argument("--prompt", "-p", required=True, help="a caption of the photo")
    s.add_argument("-o", "--output", help="the .nti file (default: PHOTO's name with .nti, here)")
    s.add_argument("--method", default=inv("method"), choices=list(typing.get_args(Method)),
                   help=f"inversion method (default: {inv('method')})")
    s.add_argument("--steps", type=_count(1, 1000), default=inv("num_steps"), help=f"DDIM steps (default: {inv('num_steps')})")
    s.add_argument("--guidance", type=float, default=inv("guidance_scale"),
                   help=f"classifier-free guidance scale w (default: {inv('guidance_scale')})")
    s.add_argument("--inner-steps", type=_count(0, 1000), default=inv("inner_steps"),
                   help=f"Adam iterations (with --fast: trials) per step at most (default: {inv('inner_steps')})")
    s.add_argument("--fast", action="store_true",
                   help="null-text with secant steps instead of the paper's Adam: ≈ 0.4× the time, same PSNR on "
                        "average (benchmarks/fast_inversion_benchmark.py)")
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
                   help=f"self-attention replacement (default: {ed('self_replace')})")
    s.add_argument("--reweight", type=_scale, action="append", help="WORD=SCALE, repeatable (negative and 0 allowed)")
    s.add_argument("--blend", type=_words, help="comma-separated words marking the region to edit")
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
    s.add_argument("-o", "--output", default="bench", help="output folder")
    s.set_defaults(func=cmd_bench)

    s = sub.add_parser("serve", parents=[common], help="a local web app: upload, invert, edit, attention maps")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    s.add_argument("--port", type=_count(1, 65535), default=7860, help="port (default: 7860)")
    s.add_argument("--share", choices=["off", "on"], default="off",
                   help="on: also open a temporary public gradio.live link (sends traffic off the machine)")
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
    s.set_defaults(func=cmd_info)
    return p


def _quiet_libraries() -> None:
    """diffusers' and transformers' loading bars and advice are noise on our command line."""
    import diffusers
    import transformers

    for lib in (diffusers, transformers):
        lib.utils.logging.set_verbosity_error()
        lib.utils.logging.disable_progress_bar()


# free-text arguments (not paths: a file name may hold any bytes) → how the user wrote them
_TEXT_ARGUMENTS = {"prompt": "--prompt", "targets": "a target prompt", "reweight": "--reweight", "blend": "--blend",
                   "subtract": "--subtract", "word_cross": "--word-cross"}


def _check_text_arguments(args) -> None:
    """Text that is not valid UTF-8 arrives as surrogate escapes; refuse it naming the argument."""
    from nulltext.model import utf8_problem

    for dest, name in _TEXT_ARGUMENTS.items():
        values = getattr(args, dest, None)
        for value in values if isinstance(values, list) else [values]:
            for text in value if isinstance(value, tuple) else [value]:
                problem = utf8_problem(text) if isinstance(text, str) else None
                if problem:
                    raise CLIError(f"{name} is not valid UTF-8: {problem} — pass it as UTF-8 text")


def _close_progress_bars() -> None:
    """Clear any progress bar still on screen, so a message starts on a fresh line."""
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", [])):
        bar.close()


class _TerminateAsExit:
    """SIGTERM unwinds like Ctrl-C (exit 143), so temporary files are removed on the way out."""

    def __enter__(self):
        import signal
        import threading

        self.previous = None
        if threading.current_thread() is threading.main_thread():
            def terminate(signum, frame):
                raise SystemExit(128 + signum)

            self.previous = signal.signal(signal.SIGTERM, terminate)
        return self

    def __exit__(self, *exc) -> None:
        import signal

        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    debug = bool(getattr(args, "debug", False) or os.environ.get("NULLTEXT_DEBUG"))
    try:
        _quiet_libraries()
        _check_text_arguments(args)
        with _TerminateAsExit():
            code = args.func(args)
    except KeyboardInterrupt:
        _close_progress_bars()
        print("nulltext: interrupted — files already reported as written are complete; no partial file was left",
              file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - the safety net: every error is one line unless --debug
        _close_progress_bars()
        if debug:
            raise
        from nulltext.errors import one_line, runtime_errors

        hint = "" if isinstance(e, (NulltextError, *runtime_errors())) else " (run with --debug for the traceback)"
        print(f"nulltext: error: {one_line(e)}{hint}", file=sys.stderr)
        return EXIT_ERROR
    return code or 0
