"""`nulltext demo`: the bundled photo on a model — invert, reconstruct, four kinds of edit, one grid.

The photo is a test-split image of the bundled model's data set, shipped with the package; its
caption is in the PNG's text. Each edit shows one Prompt-to-Prompt ability: a colour swap, a shape
swap, a background swap with local blend, and a re-weighting.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from nulltext.editing.from_inversion import edit, reconstruct
from nulltext.io.images import load_image, make_grid, output_metadata, read_png_metadata, save_png, to_pil, to_tensor
from nulltext.inversion.null_text import Inversion, InversionConfig, invert
from nulltext.inversion.file import save_inversion
from nulltext.evaluation.metrics import psnr, vae_bound
from nulltext.model import Model
from nulltext.io.outputs import check_outputs
from nulltext.editing.config import EditConfig

DEMO_PHOTO = Path(__file__).parent / "bundled" / "photo.png"


@dataclass(frozen=True)
class DemoEdit:
    label: str
    target: str
    config: EditConfig


def demo_edits() -> list[DemoEdit]:
    """The demo's edits of "a red circle on a blue background"."""
    return [
        DemoEdit("colour swap", "a green circle on a blue background", EditConfig(blend_words=["circle"])),
        DemoEdit("shape swap", "a red square on a blue background", EditConfig(blend_words=["circle", "square"])),
        DemoEdit("background swap + blend", "a red circle on a purple background", EditConfig(blend_words=["background"])),
        DemoEdit("reweight red=-3", "a red circle on a blue background", EditConfig(reweight={"red": -3.0})),
    ]


@dataclass
class DemoResult:
    grid: Path
    inversion: Path
    psnr: float
    vae_psnr: float
    wall_time: float
    outputs: list[Path] = field(default_factory=list)

    def summary_lines(self) -> list[str]:
        return [f"wrote {self.grid}",
                f"reconstruction PSNR {self.psnr:.2f} dB (VAE-only bound {self.vae_psnr:.2f} dB); "
                f"inversion took {self.wall_time:.1f} s"]


def invert_demo_photo(model: Model, quiet: bool = False) -> tuple[Image.Image, Inversion]:
    """The bundled photo at the model's size and its null-text inversion (paper defaults), with a progress bar."""
    prompt = read_png_metadata(DEMO_PHOTO)["caption"]
    photo = load_image(DEMO_PHOTO, model.default_size)
    config = InversionConfig()
    bar = tqdm(total=config.num_steps, desc="null-text", disable=quiet, leave=False)

    def progress(report) -> None:
        bar.update(1)
        bar.set_postfix(iters=report.inner_iterations, loss=f"{report.loss:.2e}")

    inversion = invert(model, to_tensor(photo.image), prompt, config, progress,
                       **photo.provenance(DEMO_PHOTO.name))
    bar.close()
    return photo.image, inversion


def demo_grid(model: Model, photo: Image.Image, inversion: Inversion, quiet: bool = False
              ) -> tuple[Image.Image, float, float]:
    """The labelled grid (photo, reconstruction, the demo edits), reconstruction PSNR and the VAE-only bound."""
    rec = to_pil(reconstruct(model, inversion))[0]
    images, labels = [photo, rec], ["photo: " + inversion.prompt, "reconstruction"]
    for e in tqdm(demo_edits(), desc="edits", disable=quiet, leave=False):
        result = edit(model, inversion, [e.target], e.config)
        images.append(to_pil(result.images[1:])[0])
        labels.append(f"{e.label}: {e.target}")
    return make_grid(images, labels, columns=3), psnr(rec, photo), vae_bound(model, photo)


def run_demo(model: Model, out_dir: Path, force: bool = False, quiet: bool = False) -> DemoResult:
    """Invert the bundled photo, reconstruct it, run the demo edits, write a labelled grid and the .nti file."""
    out_dir = Path(out_dir)
    grid_path, nti_path = out_dir / "demo_grid.png", out_dir / "demo.nti"
    check_outputs([grid_path, nti_path], force=force)  # before the work: exists, a folder, not writable
    photo, inversion = invert_demo_photo(model, quiet)
    save_inversion(inversion, nti_path, force=force, keep_both=True)
    grid, rec_psnr, vae_psnr = demo_grid(model, photo, inversion, quiet)
    meta = output_metadata(model, inversion.prompt, "demo grid")
    save_png(grid, grid_path, meta, force=force, keep_both=True)
    return DemoResult(grid_path, nti_path, rec_psnr, vae_psnr, inversion.wall_time, [grid_path, nti_path])
