"""`nulltext serve`: a local Gradio web app over the library — upload, invert with live progress, edit, see attention.

Layout and callbacks only: every step calls the library (`invert`, `edit`, `attention_maps`, the `.nti`
file, `metrics`); no algorithm lives here. Each browser session keeps its own inversion in `gr.State`
(a `Session`), so an edit never re-inverts and two users never see each other's photos. One model job
runs at a time per process (Gradio's queue with one slot for all model events, and a lock behind it);
the others wait and see their place in the queue. Nothing leaves the machine: analytics off, system
fonts, no share link unless asked for, and the server binds 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, get_args

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported: no telemetry, no version check

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from nulltext.app_fields import drawn_mask, reweights, words  # noqa: E402
from nulltext.app_uploads import GatedBlocks  # noqa: E402
from nulltext.bundled import data  # noqa: E402
from nulltext.captioning import Captioner, load_captioner  # noqa: E402
from nulltext.editing.from_inversion import attention_maps, edit  # noqa: E402
from nulltext.editing.word_diff import auto_blend_words, edit_preview  # noqa: E402
from nulltext.io.images import load_image, output_metadata, save_png, to_pil, to_tensor  # noqa: E402
from nulltext.inversion.config import InversionConfig, Method, Optimizer  # noqa: E402
from nulltext.inversion.null_text import Inversion, invert  # noqa: E402
from nulltext.progress import StepReport  # noqa: E402
from nulltext.inversion.file import load_inversion, save_inversion  # noqa: E402
from nulltext.evaluation.metrics import psnr  # noqa: E402
from nulltext.model import Model  # noqa: E402
from nulltext.editing.config import EditConfig, Mode  # noqa: E402
from nulltext.io.viz import attention_tiles, edit_mask_overlay  # noqa: E402

MAX_UPLOAD = 20 << 20  # bytes: photos, masks and .nti files, however sent; Pillow's decompression-bomb limit guards the pixels
DISPLAY_SIDE = 256  # small model images are shown upscaled (nearest) to at least this many pixels
EXAMPLE_INDICES = (829, 0, 2, 3)  # bundled test photos: the demo's red circle first
MODEL_JOBS = "model"  # the concurrency group of every event that runs the model
KEEP_DOWNLOADS = 3600  # seconds a job's files stay in the app's folder (Gradio's cache: `delete_cache` below)
Progress = Callable[..., None]  # gr.Progress's call: progress((done, total), desc=...)


class Cancelled(Exception):
    """Raised from the inversion callback when the session's Cancel button was pressed."""


@dataclass
class Session:
    """One browser session's work: the kept inversion and the photo it came from, and its cancel flag."""

    inversion: Inversion | None = None
    photo: Image.Image | None = None
    cancel_requested: bool = False
    prefilled: set[str] = field(default_factory=set)  # blend words the page filled in from the word diff


@dataclass(frozen=True)
class JobRecord:
    """One model job as it ran: kind and monotonic start/end (the server's log; jobs never overlap)."""

    kind: str
    start: float
    end: float


@dataclass
class WebApp:
    """The app's callbacks over one loaded model; `build()` lays them out as a Gradio page."""

    model: Model
    captioner: Captioner | None = None  # for "Caption it"; None: the bundled captioner on the bundled model, else none
    max_upload: int = MAX_UPLOAD  # bytes, for every way a file can reach the server
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="nulltext-app-")))
    log: list[JobRecord] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    # -----------------------------------------------------------------------------------------
    # callbacks (plain methods of explicit inputs, so tests call them without a browser)

    def example(self, name: str) -> tuple[Image.Image | None, str]:
        """A bundled example photo at the model's size and its caption."""
        index = _example_index(name)
        if index is None:
            return None, ""
        image, caption = data.sample("test", index, self.model.default_size[0])
        return image, caption

    def caption(self, photo_path: str | None) -> str:
        """A caption of the uploaded photo by the app's captioner (the source caption to invert with)."""
        with _one_line_errors():
            if not photo_path:
                raise gr.Error("upload a photo or pick an example first")
            photo = load_image(photo_path, self.model.default_size)
            with self._model_job("caption"):
                return (self.captioner or load_captioner(None, self.model.source))(photo.image)

    def word_changes(self, session: Session, targets: str, blend: str) -> tuple[Session, str, str]:
        """The targets' word changes (shown) and `--blend auto`'s words, filled into the blend box unless typed over."""
        prompts = [t.strip() for t in (targets or "").splitlines() if t.strip()]
        if session.inversion is None or not prompts:
            return session, blend, ""
        lines, words = edit_preview(session.inversion.prompt, prompts)
        if (blend or "").strip() in {"", *session.prefilled}:  # not words the user typed
            blend = ", ".join(words)
            session.prefilled.add(blend)
        return session, blend, "  \n".join(lines)

    def cancel(self, session: Session) -> str:
        """Ask the running inversion of this session to stop after its current step."""
        session.cancel_requested = True
        return "Cancelling after the current step…"

    def arm(self, session: Session) -> None:
        """A new inversion starts with the cancel flag down (runs unqueued, before the job waits its turn)."""
        session.cancel_requested = False

    def invert(self, session: Session, photo_path: str | None, caption: str, method: str, steps: float,
               guidance: float, trials: float, optimizer: str = "secant", progress: Progress = gr.Progress()):
        """Invert the uploaded photo with its caption; per-step progress with the loss; Cancel stops within a step."""
        with _one_line_errors():
            if not photo_path:
                raise gr.Error("upload a photo or pick an example first")
            caption = (caption or "").strip()
            if not caption:
                raise gr.Error("type a caption of the photo (what it shows, e.g. 'a red circle on a blue background')")
            if method not in get_args(Method):
                raise gr.Error(f"unknown inversion method {method!r} — use one of {', '.join(get_args(Method))}")
            if optimizer not in get_args(Optimizer):
                raise gr.Error(f"unknown optimiser {optimizer!r} — use one of {', '.join(get_args(Optimizer))}")
            config = InversionConfig(method=method, num_steps=int(steps), guidance_scale=float(guidance), optimizer=optimizer,
                                     **{"trials" if optimizer == "secant" else "inner_steps": int(trials)})
            self.model.check_prompt(caption)
            photo = load_image(photo_path, self.model.default_size)  # decompression bombs → one-line ImageError

            def step(report: StepReport) -> None:
                progress((report.step, report.total),
                         desc=f"null-text step {report.step}/{report.total} · loss {report.loss:.2e}")
                if session.cancel_requested:
                    raise Cancelled(f"inversion cancelled after step {report.step}/{report.total}")

            if session.cancel_requested:
                return _cancelled(session, "inversion cancelled before it started")
            progress(0.0, desc=f"{method}: DDIM inversion (the pivot)")
            with self._model_job("invert"):
                try:
                    inversion = invert(self.model, to_tensor(photo.image), caption, config, step,
                                       **photo.provenance(Path(photo_path).name))
                except Cancelled as stop:
                    return _cancelled(session, str(stop))
                progress(1.0, desc="attention maps and reconstruction")
                tokens, maps, reconstruction = attention_maps(self.model, inversion)
            session.inversion, session.photo, session.cancel_requested = inversion, photo.image, False
            nti = self._write_inversion(inversion)
            rec = to_pil(reconstruction)[0]
            status = (f"Inverted in {inversion.wall_time:.1f} s ({method}, {config.num_steps} steps): "
                      f"reconstruction PSNR **{psnr(rec, photo.image):.2f} dB** against the photo.")
            return (session, status, [(_show(photo.image), "photo"), (_show(rec), "reconstruction")],
                    _attention_gallery(reconstruction, maps, tokens), [str(nti)], _mask_canvas(photo.image))

    def load_nti(self, session: Session, nti_path: str | None, progress: Progress = gr.Progress()):
        """Go on editing a photo inverted earlier: an uploaded `.nti` file, checked against the loaded model."""
        with _one_line_errors():
            if not nti_path:
                raise gr.Error("choose an .nti file written by `nulltext invert` or this app")
            inversion = load_inversion(nti_path, self.model)
            progress(0.0, desc="attention maps and reconstruction")
            with self._model_job("load"):
                tokens, maps, reconstruction = attention_maps(self.model, inversion)
            rec = to_pil(reconstruction)[0]
            photo = None if inversion.photo is None else Image.fromarray(inversion.photo.numpy())
            session.inversion, session.photo = inversion, photo or rec
            status = f"Loaded an inversion of “{inversion.prompt}” ({inversion.config.method}, {inversion.num_steps} steps)"
            if photo is not None:
                status += f": reconstruction PSNR **{psnr(rec, photo):.2f} dB** against its photo."
            gallery = ([(_show(photo), "photo")] if photo is not None else []) + [(_show(rec), "reconstruction")]
            return (session, status, inversion.prompt, gallery, _attention_gallery(reconstruction, maps, tokens),
                    _mask_canvas(session.photo))

    def edit(self, session: Session, targets: str, mode: str, cross: float, self_replace: float, reweight: str,
             blend: str, keep: str, mask, progress: Progress = gr.Progress()):
        """Prompt-to-Prompt edits of the kept inversion (no re-inversion): gallery, first edit, downloads."""
        with _one_line_errors():
            inversion = session.inversion
            if inversion is None:
                raise gr.Error("invert a photo first (step 2), or upload an .nti file")
            prompts = [t.strip() for t in (targets or "").splitlines() if t.strip()]
            if not prompts:
                raise gr.Error("type at least one target caption, e.g. the caption with one word changed")
            if mode not in get_args(Mode):
                raise gr.Error(f"unknown edit mode {mode!r} — use auto, replace or refine")
            blend_words = words(blend)
            if blend_words == ["auto"]:  # the words the targets change
                blend_words = auto_blend_words(inversion.prompt, prompts)
            config = EditConfig(mode=mode, cross_replace=float(cross), self_replace=float(self_replace),
                                reweight=reweights(reweight), blend_words=blend_words, blend_subtract=words(keep),
                                blend_mask=drawn_mask(mask, inversion.image_size))

            def step(report: StepReport) -> None:
                progress((report.step, report.total), desc=f"edit step {report.step}/{report.total}")

            with self._model_job("edit"):
                result = edit(self.model, inversion, prompts, config, step, record_attention=True)
            images = to_pil(result.images)
            files = self._write_edits(inversion, prompts, images[1:], config)
            shown = result.shown_masks()  # where each edit may differ from the photo: a user sees why a pixel changed
            overlays = [] if shown is None else \
                [(_show(edit_mask_overlay(result.images[j + 1], shown[j])), f"changed: {p}") for j, p in enumerate(prompts)]
            gallery = ([(_show(session.photo), "photo")] if session.photo is not None else []) + \
                [(_show(images[0]), "reconstruction")] + [(_show(im), p) for im, p in zip(images[1:], prompts)] + overlays
            maps = [tile for j, p in enumerate(prompts, 1)
                    for tile in _attention_gallery(result.images[j : j + 1], *result.attention_maps(j, self.model.tokenizer)[::-1], p)]
            note = " ".join([f"Edited: {len(prompts)} target caption(s).", *(f"⚠ {w}." for w in result.warnings)])
            return gallery, images[1], [str(p) for p in files], note, maps

    # -----------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _model_job(self, kind: str) -> Iterator[None]:
        """Hold the model for one job (the queue already runs one at a time; the lock makes it a guarantee)."""
        with self._lock:
            start = time.monotonic()
            try:
                yield
            finally:
                self.log.append(JobRecord(kind, start, time.monotonic()))

    def _job_dir(self) -> Path:
        """A fresh folder for one job's downloads; Gradio copies them into its cache, so hour-old folders go."""
        for old in self.workdir.glob("job-*"):
            if time.time() - old.stat().st_mtime > KEEP_DOWNLOADS:
                shutil.rmtree(old, ignore_errors=True)
        return Path(tempfile.mkdtemp(prefix="job-", dir=self.workdir))

    def _write_inversion(self, inversion: Inversion) -> Path:
        name = _slug(inversion.prompt) or "photo"
        return save_inversion(inversion, self._job_dir() / f"{name}.nti")

    def _write_edits(self, inversion: Inversion, prompts: list[str], images: list[Image.Image],
                     config: EditConfig) -> list[Path]:
        """The edited PNGs with the edit's parameters in their text chunks (as `nulltext edit` writes them)."""
        folder = self._job_dir()
        settings = {k: v for k, v in dataclasses.asdict(config).items() if k != "blend_mask"}
        settings["blend_mask"] = "drawn in the app" if config.blend_mask is not None else None
        paths = []
        for j, (image, target) in enumerate(zip(images, prompts)):
            meta = output_metadata(self.model, inversion.prompt, "edit", target_prompt=target,
                                   inversion_method=inversion.config.method, num_steps=inversion.num_steps, **settings)
            paths.append(save_png(image, folder / f"edit_{j + 1:02d}_{_slug(target) or 'edit'}.png", meta))
        return paths

    # -----------------------------------------------------------------------------------------
    # layout

    def build(self) -> gr.Blocks:
        """The page: 1 photo, 2 invert, 3 edit, 4 results and attention; model events share one queue slot."""
        inv = InversionConfig()
        ed = EditConfig()
        names = [_example_name(i) for i in EXAMPLE_INDICES]
        with GatedBlocks(title="nulltext — edit photos with words", analytics_enabled=False,
                       delete_cache=(KEEP_DOWNLOADS, 24 * KEEP_DOWNLOADS)) as page:
            session = gr.State(lambda: Session())  # a fresh Session per browser session
            loras = f" with LoRA {', '.join(f'`{x}`' for x in self.model.loras)}" if self.model.loras else ""
            gr.Markdown("# nulltext\nEdit a photo with words: Null-text Inversion + Prompt-to-Prompt "
                        f"on `{self.model.source}`{loras}. Invert once, then edit as often as you like.", elem_id="model-line")
            with gr.Row():
                with gr.Column():
                    gr.Markdown("### 1 · Photo")
                    example = gr.Dropdown(names, value=None, label="Example photo (bundled)")
                    photo = gr.Image(label="Photo", type="filepath", sources=["upload"], image_mode=None, format="png",
                                     height=DISPLAY_SIDE, elem_id="photo")
                    caption = gr.Textbox(label="Caption of the photo", placeholder="a red circle on a blue background",
                                         elem_id="caption")
                    caption_button = gr.Button("Caption it", size="sm", elem_id="caption-it")
                    method = gr.Radio(list(get_args(Method)), value=inv.method, label="Inversion method")
                    with gr.Accordion("Advanced", open=False):
                        steps = gr.Slider(1, 200, value=inv.num_steps, step=1, label="DDIM steps", elem_id="steps")
                        guidance = gr.Slider(1.0, 15.0, value=inv.guidance_scale, step=0.5, label="Guidance scale w")
                        optimizer = gr.Radio(list(get_args(Optimizer)), value=inv.optimizer, label="Null-text optimiser "
                                             "(secant: ≈ 0.4× the paper's UNet work; adam: the paper's)")
                        inner = gr.Slider(0, 50, value=inv.trials, step=1, elem_id="inner",
                                          label="Secant trials or Adam updates per step at most (null-text)")
                    gr.Markdown("### 2 · Invert")
                    with gr.Row():
                        invert_button = gr.Button("Invert", variant="primary", elem_id="invert")
                        cancel_button = gr.Button("Cancel", variant="stop", elem_id="cancel")
                    status = gr.Markdown(elem_id="status")
                    attention = gr.Gallery(label="Cross-attention per token (source caption)", columns=5, height="auto",
                                           format="png", elem_id="attention")
                    nti_in = gr.File(label="…or continue from an .nti file", file_types=[".nti"], type="filepath")
                with gr.Column():
                    gr.Markdown("### 3 · Edit")
                    targets = gr.Textbox(label="Target captions, one per line", lines=2, elem_id="targets",
                                         placeholder="a green circle on a blue background")
                    mode = gr.Radio(list(get_args(Mode)), value=ed.mode, label="Mode")
                    changes = gr.Markdown(elem_id="changes")
                    blend = gr.Textbox(label="Blend words (edit only where these words attend; filled in with the "
                                             "changed words; auto: the changed words)", placeholder="circle",
                                       elem_id="blend")
                    with gr.Accordion("More edit controls", open=False):
                        cross = gr.Slider(0.0, 1.0, value=ed.cross_replace, step=0.05, label="Cross-attention replacement (fraction of steps)")
                        self_replace = gr.Slider(0.0, 1.0, value=ed.self_replace, step=0.05, label="Self-attention replacement (fraction of steps)")
                        reweight = gr.Textbox(label="Re-weights", placeholder="red=-3, circle=2")
                        keep = gr.Textbox(label="Keep words (their region stays as in the photo)")
                        mask = gr.ImageEditor(label="Mask: paint where the edit may change the photo (optional)",
                                              sources=[], type="numpy", format="png", layers=False, transforms=[],
                                              brush=gr.Brush(colors=["#ffffff"], color_mode="fixed"))
                    edit_button = gr.Button("Edit", variant="primary", elem_id="edit")
                    edited = gr.Image(label="Edited", type="pil", format="png", interactive=False, height=DISPLAY_SIDE,
                                      elem_id="edited")
                    edit_status = gr.Markdown(elem_id="edit-status")
                    target_attention = gr.Gallery(label="Cross-attention per token (target captions)", columns=5,
                                                  height="auto", format="png", elem_id="target-attention")
                    gr.Markdown("### 4 · Results")
                    gallery = gr.Gallery(label="Photo, reconstruction and edits", columns=4, height="auto", format="png",
                                         elem_id="gallery")
                    downloads = gr.File(label="Downloads: the .nti inversion and the edited PNGs (parameters in the PNG text)",
                                        file_count="multiple", interactive=False)

            page.name(photo, "photo"), page.name(nti_in, ".nti file"), page.name(mask, "mask")  # for their errors
            example.change(self.example, [example], [photo, caption], api_name="example", queue=False)
            caption_button.click(self.caption, [photo], [caption], api_name="caption",
                                 concurrency_limit=1, concurrency_id=MODEL_JOBS)
            targets.change(self.word_changes, [session, targets, blend], [session, blend, changes],
                           api_name="word_changes", queue=False, trigger_mode="always_last")
            armed = invert_button.click(self.arm, [session], None, queue=False, api_visibility="private")
            armed.then(self.invert, [session, photo, caption, method, steps, guidance, inner, optimizer],
                       [session, status, gallery, attention, downloads, mask], api_name="invert",
                       concurrency_limit=1, concurrency_id=MODEL_JOBS)
            cancel_button.click(self.cancel, [session], [status], api_name="cancel", queue=False)
            nti_in.upload(self.load_nti, [session, nti_in], [session, status, caption, gallery, attention, mask],
                          api_name="load_nti", concurrency_limit=1, concurrency_id=MODEL_JOBS)
            edit_button.click(self.edit, [session, targets, mode, cross, self_replace, reweight, blend, keep, mask],
                              [gallery, edited, downloads, edit_status, target_attention], api_name="edit",
                              concurrency_limit=1, concurrency_id=MODEL_JOBS)
        page.queue(default_concurrency_limit=1)
        return page


# ---------------------------------------------------------------------------------------------
# helpers of the page (presentation and parsing only)


class _one_line_errors:
    """Library errors become gr.Error with their first line (the page shows it; the app keeps serving)."""

    def __enter__(self):
        return self

    def __exit__(self, kind, error, tb):
        if error is None or isinstance(error, gr.Error):
            return False
        from nulltext.errors import NulltextError, one_line, runtime_errors

        if isinstance(error, NulltextError):
            raise gr.Error(one_line(error), print_exception=False) from None
        if isinstance(error, (*runtime_errors(), RuntimeError)):
            raise gr.Error(one_line(error)) from None
        return False


def _cancelled(session: Session, message: str):
    session.cancel_requested = False
    return (session, f"**{message[0].upper() + message[1:]}**; the earlier inversion (if any) is kept.",
            gr.skip(), gr.skip(), gr.skip(), gr.skip())


def _example_name(index: int) -> str:
    return f"{data.sample('test', index, 8)[1]} (test photo {index})"


def _example_index(name: str | None) -> int | None:
    match = re.search(r"\(test photo (\d+)\)$", name or "")
    return int(match.group(1)) if match and int(match.group(1)) in EXAMPLE_INDICES else None


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:60]


def _show(image: Image.Image) -> Image.Image:
    """Upscale a small image by a whole factor (nearest) so the page shows its pixels, not a blur."""
    factor = max(1, -(-DISPLAY_SIDE // max(1, image.width)))
    return image if factor == 1 else image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST)


def _attention_gallery(image: torch.Tensor, maps: torch.Tensor, tokens: list[str], caption: str = "reconstruction"):
    tiles = attention_tiles(image, maps)
    return [(_show(t), label) for t, label in zip(tiles, [caption, *tokens])]


def _mask_canvas(photo: Image.Image):
    """The mask editor's background: the photo, shown large enough to paint on."""
    return {"background": np.asarray(_show(photo)), "layers": [], "composite": None}


def system_theme() -> gr.themes.Base:
    """A theme with system fonts only: the page loads no web font."""
    return gr.themes.Base(font=["ui-sans-serif", "system-ui", "sans-serif"],
                          font_mono=["ui-monospace", "Consolas", "monospace"])


CSS = """img { image-rendering: pixelated; }
#photo img, #edited img { width: 100%; height: 100%; object-fit: contain; }"""


def launch(model: Model, host: str = "127.0.0.1", port: int | None = 7860, share: bool = False,
           quiet: bool = False, block: bool = True, max_upload: int = MAX_UPLOAD, captioner: Captioner | None = None):
    """Build and launch the app; returns (page, WebApp) once serving when `block` is False.

    `show_error` is off: the page shows the one-line gr.Error messages the app raises, and any other
    failure only as "Error" (its text may name server paths; the server's log has it).
    """
    app = WebApp(model, captioner=captioner, max_upload=max_upload)
    page = app.build()
    page.launch(server_name=host, server_port=port, share=share, quiet=quiet, prevent_thread_lock=not block,
                max_file_size=max_upload, theme=system_theme(), css=CSS, ssr_mode=False, mcp_server=False,
                show_error=False, footer_links=["api"])
    return page, app
