"""`nulltext invert` as a user runs it, against the authors' notebook loop: process start to written file.

    python benchmarks/end_to_end_benchmark.py [--images 10] [-o docs/fast_inversion]

For each of N test photos of the bundled model, in turn: `nulltext invert PHOTO --prompt CAPTION` with
its defaults, timed as a process from start to written file; then, in this process (model already
loaded, not timed), the faithful port of the authors' notebook (`inversion_benchmark.authors_null_text`,
as published: the UNet's weights still require gradients; and with it frozen), timed from the DDIM
inversion to the last ∅_t. Reconstruction PSNR of both (guided sampling from z*_T with their ∅_t, w = 7.5).
Also `nulltext --help` and `nulltext info FILE` as processes, and where our process's time goes
(start-up and loading = process time − the inversion's own wall time stored in the file). Ratios are
within one run, photo by photo. Writes end_to_end.md, .json and .png (per photo: our process split into
start-up and inversion, the notebook's time, and the target of 0.25× the notebook's);
`--plot-from end_to_end.json` redraws the plot of an earlier run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from inversion_benchmark import authors_null_text  # noqa: E402

from nulltext.bundled import data  # noqa: E402
from nulltext.core.conditioning import TextConditioning  # noqa: E402
from nulltext.core.schedule import make_schedule  # noqa: E402
from nulltext.core.sampling import guided_ddim  # noqa: E402
from nulltext.editing import reconstruct  # noqa: E402
from nulltext.evaluation.metrics import psnr  # noqa: E402
from nulltext.inversion import InversionConfig, ddim_invert, load_inversion  # noqa: E402
from nulltext.io.images import to_pil, to_tensor  # noqa: E402
from nulltext.io.outputs import publish  # noqa: E402
from nulltext.model import load_model  # noqa: E402


def timed(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def notebook(model, image, caption: str, frozen: bool) -> tuple[float, float, int]:
    """The authors' loop on one photo: (seconds from the pivot to the last ∅_t, reconstruction PSNR, Adam iterations)."""
    config = InversionConfig.paper()
    x = to_tensor(image)
    start = time.perf_counter()
    schedule = make_schedule(model.scheduler_config, config.num_steps)
    cond, uncond = model.encode_text([caption]), model.encode_text([""])
    pivot = ddim_invert(model, model.encode_image(x).float(), cond, schedule)
    nulls: list[torch.Tensor] = []
    iterations = authors_null_text(model, pivot, cond, uncond, schedule, config, frozen, nulls)
    seconds = time.perf_counter() - start
    with torch.no_grad():  # ∅_t per step, in step order ∅_1 … ∅_T
        z = guided_ddim(model, pivot[-1:], TextConditioning(cond), TextConditioning(torch.cat(nulls[::-1])), schedule,
                        config.guidance_scale)
    return seconds, psnr(to_pil(model.decode_latents(z))[0], image), iterations


def plot(rows: list[dict], path: Path) -> None:
    """Per photo: our process (start-up + inversion), the notebook (as published, and frozen if timed), the target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = list(range(len(rows)))
    frozen = all("frozen_s" in r for r in rows)
    width = 0.27 if frozen else 0.4
    fig, ax = plt.subplots(figsize=(8, 3.6))
    ax.bar([i - width for i in x], [r["startup_s"] for r in rows], width, color="#bbbbbb", label="ours: start-up")
    ax.bar([i - width for i in x], [r["inversion_s"] for r in rows], width, bottom=[r["startup_s"] for r in rows],
           color="#3b6fb6", label="ours: inversion")
    ax.bar(x, [r["published_s"] for r in rows], width, color="#e08a2c", label="notebook, as published")
    if frozen:
        ax.bar([i + width for i in x], [r["frozen_s"] for r in rows], width, color="#f3c48f", label="notebook, UNet frozen")
    ax.hlines([0.25 * r["published_s"] for r in rows], [i - 1.5 * width for i in x], [i - 0.5 * width for i in x],
              colors="#c62828", linestyles="--", label="target: 0.25× the notebook")
    ax.set_xticks(x, [str(r["photo"]) for r in rows])
    ax.set_xlabel("photo")
    ax.set_ylabel("seconds")
    ax.set_title("nulltext invert (process, start to file) against the authors' notebook loop", fontsize=10)
    ax.legend(fontsize=7, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.2))
    fig.tight_layout()
    publish(path, lambda t: fig.savefig(t, dpi=110, format="png"), force=True)
    plt.close(fig)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=10)
    p.add_argument("-o", "--output", default="docs/fast_inversion")
    p.add_argument("--frozen", action="store_true", help="also time the notebook with its UNet frozen")
    p.add_argument("--plot-from", metavar="JSON", help="only redraw the plot of an earlier run's end_to_end.json")
    p.add_argument("--quiet", action="store_true")
    a = p.parse_args(argv)
    if a.plot_from:
        plot(json.loads(Path(a.plot_from).read_text())["rows"], Path(a.output) / "end_to_end.png")
        return
    exe = shutil.which("nulltext") or str(Path(sys.executable).parent / "nulltext")
    model = load_model(device="cpu")
    rows, start = [], time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for index in range(a.images):
            image, caption = data.sample("test", index, model.default_size[0])
            photo, nti = Path(tmp) / f"photo{index}.png", Path(tmp) / f"photo{index}.nti"
            image.save(photo)
            ours = timed([exe, "invert", str(photo), "--prompt", caption, "-o", str(nti), "--quiet"])
            inv = load_inversion(nti, model)
            row = {"photo": index, "process_s": ours, "inversion_s": inv.wall_time, "startup_s": ours - inv.wall_time,
                   "psnr": psnr(to_pil(reconstruct(model, inv))[0], image), "trials": sum(inv.inner_iterations)}
            for frozen in (False, True) if a.frozen else (False,):
                seconds, rec, iterations = notebook(model, image, caption, frozen)
                key = "frozen" if frozen else "published"
                row |= {f"{key}_s": seconds, f"{key}_psnr": rec, f"{key}_iterations": iterations}
            row["ratio"] = row["process_s"] / row["published_s"]
            row["ratio_frozen"] = row["process_s"] / row.get("frozen_s", float("nan"))
            row["psnr_change"] = row["psnr"] - row["published_psnr"]
            rows.append(row)
            if not a.quiet:
                print(f"photo {index}: nulltext invert {ours:.1f} s (start-up {row['startup_s']:.1f} s) vs notebook "
                      f"{row['published_s']:.1f} s → {row['ratio']:.2f}×; PSNR {row['psnr']:.2f} vs "
                      f"{row['published_psnr']:.2f} dB", flush=True)
        help_s = min(timed([exe, "--help"]) for _ in range(3))
        info_s = min(timed([exe, "info", str(Path(tmp) / "photo0.nti")]) for _ in range(3))
    mean = lambda k: sum(r[k] for r in rows) / len(rows)  # noqa: E731
    pair = lambda x, y, f: f"{x:{f}} / {y:{f}}" if a.frozen else f"{x:{f}}"  # noqa: E731  published [/ frozen]
    lines = [f"Bundled model, CPU, 50 steps, w = 7.5; {a.images} test photos, ours then the notebook's on each "
             f"({(time.perf_counter() - start) / 60:.0f} min). `nulltext invert` with its defaults (secant optimiser), "
             "timed as a process from start to written file; the notebook port timed from its DDIM inversion to its "
             "last ∅_t, model already loaded.", "",
             "| photo | `nulltext invert` s (start-up + inversion) | notebook s, as published" + (" / UNet frozen" if a.frozen else "")
             + " | ratio | PSNR dB, ours / notebook | change dB | secant trials / notebook Adam iterations |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['photo']} | {r['process_s']:.1f} ({r['startup_s']:.1f} + {r['inversion_s']:.1f}) "
                     f"| {pair(r['published_s'], r.get('frozen_s', 0.0), '.1f')} "
                     f"| {pair(r['ratio'], r['ratio_frozen'], '.2f')} "
                     f"| {r['psnr']:.2f} / {r['published_psnr']:.2f} | {r['psnr_change']:+.2f} "
                     f"| {r['trials']} / {r['published_iterations']} |")
    lines.append(f"| mean | {mean('process_s'):.1f} ({mean('startup_s'):.1f} + {mean('inversion_s'):.1f}) "
                 f"| {pair(mean('published_s'), mean('frozen_s') if a.frozen else 0.0, '.1f')} "
                 f"| {pair(mean('ratio'), mean('ratio_frozen'), '.2f')} "
                 f"| {mean('psnr'):.2f} / {mean('published_psnr'):.2f} | {mean('psnr_change'):+.2f} (worst "
                 f"{min(r['psnr_change'] for r in rows):+.3f}) | {mean('trials'):.0f} / {mean('published_iterations'):.0f} |")
    lines += ["", f"`nulltext --help`: {help_s:.2f} s; `nulltext info FILE`: {info_s:.2f} s (best of 3 processes)."]
    text = "\n".join(lines) + "\n"
    out = Path(a.output)
    out.mkdir(parents=True, exist_ok=True)
    publish(out / "end_to_end.md", lambda t: Path(t).write_text(text), force=True)
    payload = {"rows": rows, "help_s": help_s, "info_s": info_s}
    publish(out / "end_to_end.json", lambda t: Path(t).write_text(json.dumps(payload, indent=1)), force=True)
    plot(rows, out / "end_to_end.png")
    print(text)


if __name__ == "__main__":
    main()
