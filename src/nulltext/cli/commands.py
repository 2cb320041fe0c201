"""The commands, `cmd_*` (one per subcommand), and the helpers only they use.

The library is imported inside each command, when it runs: `nulltext --help` stays fast.
"""

from __future__ import annotations

import dataclasses
import sys
import typing
from pathlib import Path

from nulltext.cli.common import CLIError, _load_model, _progress, _refuse_existing, _settings


def _step_bar(args, desc: str):
    """A progress callback (`nulltext.progress`) that draws a tqdm bar: one bar per loop, sized by its first
    report and closed at its last; an inversion's bar shows τ, optimiser iterations and loss, a study's its label."""
    bar = None

    def callback(report) -> None:
        nonlocal bar
        if bar is None or report.step == 1:  # a loop begins (a batch run has one per batch)
            if bar is not None:
                bar.close()  # the previous loop's, if it ended early
            bar = _progress(args, report.total, desc)
        bar.update(1)
        if report.label:
            bar.set_postfix_str(report.label)
        elif report.loss is not None:
            bar.set_postfix(t=report.timestep, iters=report.inner_iterations, loss=f"{report.loss:.2e}")
        if report.step == report.total:
            bar.close()

    return callback


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
    from nulltext.editing.config import EditConfig

    mask = None if args.mask is None else load_mask(args.mask, inversion.image_size)
    return _settings(
        EditConfig, mode=args.mode, cross_replace=args.cross, self_replace=args.self_replace, self_fade=args.self_fade,
        word_cross_replace=dict(args.word_cross or []), reweight=dict(args.reweight or []),
        blend_words=args.blend or [], blend_subtract=args.subtract or [], blend_mask=mask,
        blend_mask_combine=args.mask_combine, blend_threshold=args.threshold, blend_start=args.blend_start,
        target_null=args.target_null, composite=args.composite,
    )


def cmd_invert(args) -> None:
    from nulltext.io.images import load_image, open_regular, to_tensor
    from nulltext.inversion.config import InversionConfig
    from nulltext.inversion.null_text import invert
    from nulltext.core.schedule import make_schedule
    from nulltext.inversion.file import save_inversion

    out = Path(args.output or Path(args.photo).with_suffix(".nti").name)
    _refuse_existing([out], args)
    config = _settings(InversionConfig, method=args.method, num_steps=args.steps, guidance_scale=args.guidance,
                       learning_rate=args.lr, keep_pivot=not args.no_pivot, optimizer=args.optimizer,
                       **({} if args.inner_steps is None else
                          {"trials" if args.optimizer == "secant" else "inner_steps": args.inner_steps}))
    open_regular(args.photo).close()  # a missing or unreadable photo is refused before the model loads
    if args.captioner is not None and args.prompt not in (None, "auto"):
        raise CLIError("--captioner writes a caption for a photo without --prompt: pass one of the two")
    captioner = _captioner(args) if args.prompt in (None, "auto") else None
    model = _load_model(args)
    make_schedule(model.scheduler_config, config.num_steps)  # the scheduler's own step limit
    size = args.size or model.default_size
    model.check_size(size)
    if captioner is None:
        model.check_prompt(args.prompt)
    photo = load_image(args.photo, size, crop=args.crop)
    prompt = args.prompt
    if captioner is not None:
        prompt = captioner(photo.image)
        print(f'caption: "{prompt}" (by the {captioner.name} captioner; pass --prompt to use your own)')
        model.check_prompt(prompt)
    progress = _step_bar(args, "null-text" if config.method == "null-text" else "ddim")
    inversion = invert(model, to_tensor(photo.image), prompt, config, progress, **photo.provenance())
    save_inversion(inversion, out, force=args.force, keep_both=True)
    iters = sum(inversion.inner_iterations)
    unit = "secant trials" if config.optimizer == "secant" else "Adam iterations"
    print(f"wrote {out}  ({inversion.wall_time:.1f} s, {iters} {unit}"
               + (f", final loss {inversion.losses[0]:.2e})" if inversion.losses else ")"))


def _captioner(args):
    """The captioner for a photo without --prompt, loaded before the model (a missing one is refused first)."""
    from nulltext.captioning import BUNDLED, load_captioner
    from nulltext.model.device import resolve_device

    model_source = BUNDLED if args.model in (None, "", BUNDLED) else args.model
    return load_captioner(args.captioner, model_source, resolve_device(args.device))


def _psnr_report(model, inversion, image) -> str:
    from nulltext.io.images import to_pil
    from nulltext.evaluation.metrics import psnr, ssim, vae_bound

    if inversion.photo is None:
        return ""
    from PIL import Image

    photo = Image.fromarray(inversion.photo.numpy())
    rec = to_pil(image)[0]
    return (f"PSNR {psnr(rec, photo):.2f} dB, SSIM {ssim(rec, photo):.4f} against the photo; "
            f"VAE-only bound {vae_bound(model, photo):.2f} dB")


def cmd_reconstruct(args) -> None:
    from nulltext.editing.from_inversion import reconstruct
    from nulltext.io.images import output_metadata, save_png, to_pil

    out = Path(args.output or Path(args.inversion).with_suffix(".png").name)
    _refuse_existing([out], args)
    model, inversion = _open(args)
    image = reconstruct(model, inversion, _step_bar(args, "reconstruct"))
    report = _psnr_report(model, inversion, image)
    save_png(to_pil(image)[0], out, output_metadata(model, inversion.prompt, "reconstruction"), force=args.force,
             keep_both=True)
    print(f"wrote {out}")
    if report:
        print(report)


def cmd_edit(args) -> None:
    from nulltext.editing.from_inversion import edit
    from nulltext.editing.word_diff import auto_blend_words, describe, unnamed_region_warnings, word_diff
    from nulltext.inversion.header import read_file_header
    from nulltext.io.images import make_grid, output_metadata, save_png, to_pil
    from nulltext.io.viz import edit_mask_overlay

    out = Path(args.output)
    n = max(1, len(args.targets))
    names = [out / f"edit_{j + 1:02d}.png" for j in range(n)] + [out / "grid.png"]
    mask_names = [out / f"edit_{j + 1:02d}_mask.png" for j in range(n)] if args.blend or args.mask else []
    _refuse_existing(names + mask_names, args)
    source = read_file_header(args.inversion).header.prompt  # the words first: milliseconds, before the model
    targets = args.targets or [source]
    if args.blend == ["auto"]:
        args.blend = auto_blend_words(source, targets)
    if not args.quiet:
        for j, target in enumerate(targets):
            print(f"edit {j + 1}: {describe(word_diff(source, target))}")
        if args.blend:
            print(f"blend words: {', '.join(args.blend)}")
        for warning in unnamed_region_warnings(source, targets):
            print(f"nulltext: warning: {warning}", file=sys.stderr)
    model, inversion = _open(args)
    config = _edit_config(args, inversion)
    result = edit(model, inversion, targets, config, _step_bar(args, "edit"))
    for warning in [] if args.quiet else result.warnings:
        print(f"nulltext: warning: {warning}", file=sys.stderr)
    images = to_pil(result.images)
    settings = {k: v for k, v in dataclasses.asdict(config).items() if k != "blend_mask"}
    if args.mask is not None:
        settings["blend_mask"] = str(args.mask)
    for j, target in enumerate(targets):
        save_png(images[j + 1], names[j], output_metadata(model, inversion.prompt, "edit", target_prompt=target, **settings),
                 force=args.force, keep_both=True)
    labels = [f"source: {inversion.prompt}", *targets]
    shown = result.shown_masks()  # where each edit may differ from the photo, so a user sees why a pixel changed
    overlays = [] if shown is None else [edit_mask_overlay(result.images[j + 1], shown[j]) for j in range(len(targets))]
    for j, overlay in enumerate(overlays[: len(mask_names)]):
        save_png(overlay, mask_names[j], output_metadata(model, inversion.prompt, "edit mask", target_prompt=targets[j]),
                 force=args.force, keep_both=True)
    grid = make_grid(images + overlays, labels + [f"changed: {t}" for t in targets[: len(overlays)]])
    save_png(grid, names[-1], output_metadata(model, inversion.prompt, "edit grid", targets=targets),
             force=args.force, keep_both=True)
    names += mask_names[: len(overlays)]
    for p in names:
        print(f"wrote {p}")


def cmd_attention(args) -> None:
    from nulltext.editing.from_inversion import attention_maps
    from nulltext.io.images import make_grid, output_metadata, save_png
    from nulltext.io.viz import attention_tiles

    out = Path(args.output or Path(args.inversion).with_suffix(".attention.png").name)
    _refuse_existing([out], args)
    model, inversion = _open(args)
    tokens, maps, image = attention_maps(model, inversion, _step_bar(args, "attention"))
    tiles = attention_tiles(image, maps)
    save_png(make_grid(tiles, ["reconstruction", *tokens]), out, output_metadata(model, inversion.prompt, "attention maps"),
             force=args.force, keep_both=True)
    print(f"wrote {out}")


def _optimiser(config) -> str:
    """How the file's ∅_t were optimised, in words: the optimiser and its budget per step."""
    if config.optimizer == "adam":
        return f"adam optimiser (≤ {config.inner_steps} updates a step)"
    last = ", the last step past the threshold" if config.refine_last_step else ""
    return f"secant optimiser (≤ {config.trials} trials a step{last})"


def cmd_info(args) -> None:
    """The file's header and tensor table only (no torch, no tensor read): milliseconds on any file."""
    from nulltext.inversion.header import read_file_header

    file = read_file_header(args.inversion)
    h, shapes = file.header, {name: shape for name, (_, shape) in file.tensors.items()}
    T = h.config.num_steps
    flow = h.scheduler_config.get("_class_name") == "FlowMatchEulerDiscreteScheduler"  # SD 3.x
    sampler = "flow-matching Euler" if flow else "DDIM"
    lines = [
        f"prompt:          {h.prompt}",
        f"method:          {h.config.method}, {T} {sampler} steps, guidance {h.config.guidance_scale}"
        + (f", {_optimiser(h.config)}" if h.config.method == "null-text" else ""),
        f"image:           {h.image_size[0]}x{h.image_size[1]}"
        + (f" from {h.source_path} crop {h.crop_box}" if h.source_path else ""),
        f"model:           {h.model_source} (weights {h.model_identity})",
        f"latent:          {shapes.get('latent_T')}, null embeddings {shapes.get('null_embeddings')}"
        + (f", pooled {shapes['null_pooled']}" if "null_pooled" in shapes else "")
        + (", pivot stored" if "pivot" in shapes else "") + (", photo stored" if "photo" in shapes else ""),
        f"wall time:       {h.wall_time:.1f} s",
    ]
    if h.losses:
        lines.append(f"iterations:      {sum(h.inner_iterations)} (max {max(h.inner_iterations)} per step)")
        lines.append(f"final losses:    t=T {h.losses[-1]:.2e}, t=1 {h.losses[0]:.2e}")
    print("\n".join(lines))


def cmd_study(args) -> None:
    from nulltext.evaluation import study
    from nulltext.evaluation.study_photos import JUDGED_BY, colour_swap_judge, study_photos

    out = Path(args.output)
    progress = _step_bar(args, f"study {args.study}")
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
    for p in paths:
        print(f"wrote {p}")


def cmd_bench(args) -> None:
    from nulltext.evaluation import edit_bench
    from nulltext.inversion.config import InversionConfig
    from nulltext.evaluation.perceptual import PerceptualConfig
    from nulltext.editing.config import EditConfig, TargetNull

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
        target_nulls=tuple(args.target_null), edit=EditConfig(composite=args.composite),
        perceptual=PerceptualConfig(lpips=args.lpips, clip=args.clip, dino=args.dino, device=str(model.device)))
    if args.pie_bench:
        from nulltext.evaluation import pie_bench

        entries = pie_bench.read_mapping(args.pie_bench, types=args.types, limit=args.limit)
        images = args.images or Path(args.pie_bench).parent / "annotation_images"
        cases, dataset, config.convention = pie_bench.pie_cases(entries, images, model.default_size), "PIE-Bench", "pie-bench"
    else:
        cases, dataset = edit_bench.make_cases(args.per_type, args.seed, model.default_size[0]), "bundled"
    result = edit_bench.run_edit_bench(model, cases, config, _step_bar(args, "bench edits"), dataset,
                                        args.inversions)
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

    captioner = _captioner(args) if args.captioner is not None else None
    model = _load_model(args)
    if not args.quiet:
        print(f"nulltext: serving {model.source} at http://{args.host}:{args.port} (Ctrl-C stops)", file=sys.stderr)
    launch(model, host=args.host, port=args.port, share=args.share == "on", quiet=args.quiet, captioner=captioner)


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
    on_step = _step_bar(args, "steps") if args.ray is None else None  # Ray workers report rows only
    failed = []

    def on_row(record: dict) -> None:
        failed.extend([record["row"]] if record["status"] not in ("done", "duplicate") else [])
        rows_bar.update(1)
        rows_bar.set_postfix(failed=len(failed))

    executor = None
    if args.ray is not None:
        from nulltext.batch.ray_data import RayOptions, ray_executor

        options = _settings(RayOptions, address=None if args.ray == "local" else args.ray, workers=args.workers,
                            gpus_per_worker=args.gpus_per_worker)
        executor = ray_executor(options, args.model, args.device, args.dtype, args.output, config, args.allow_pickle,
                                args.lora)
    summary = run_manifest(model, rows, args.output, config, executor, on_row, on_step,
                           on_plan=lambda pending: rows_bar.reset(total=pending))
    rows_bar.close()
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
