"""The paper's evidence, reproduced on any model: the inversion ablation and the DDIM guidance table.

Ablation (Mokady et al. 2023, Fig. 5): reconstruction PSNR against cumulative optimisation iterations
for several inversion choices, over N test photos with their captions. Every optimised method runs
once per photo; `null_text_optimise(checkpoints=…)` records what its result would be had it stopped
after B iterations, and each checkpoint is reconstructed. Pivots are computed once per photo. The
global null is one ∅ optimised over all steps (`global_null_optimise`), on the same iteration budget.

Guidance table (the paper's sec. 3.1 observations): DDIM inversion at w_inv ∈ {1, 7.5} sampled at
w_inf ∈ {1, 7.5}: reconstruction PSNR and the success rate of a colour-swap edit judged by the bundled
model's evaluator, plus the null-text row.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from nulltext.bundled import data
from nulltext.bundled.evaluate import judge
from nulltext.ddim import make_schedule
from nulltext.editing import edit, sample
from nulltext.images import to_pil, to_tensor
from nulltext.inversion import (Inversion, InversionConfig, ddim_invert, direct_corrections, global_null_optimise,
                                invert, null_text_optimise)
from nulltext.inversion_file import atomic_write
from nulltext.metrics import psnr
from nulltext.model import Model
from nulltext.prompt_to_prompt import EditConfig

OPTIMISED = ("null-text", "global null", "random pivot", "textual inversion", "random caption")
FLAT = ("VAE bound", "DDIM w=1", "DDIM w=7.5", "negative-prompt", "direct")


@dataclass
class AblationConfig:
    images: int = 20
    checkpoints: tuple[int, ...] = (0, 10, 25, 50, 100, 150, 200, 300, 400, 500)
    methods: tuple[str, ...] = OPTIMISED  # which optimised methods to run (the flat ones always run)
    inversion: InversionConfig = field(default_factory=lambda: InversionConfig(early_stop=0.0, early_stop_growth=0.0))


@dataclass
class AblationResult:
    checkpoints: list[int]
    psnr: dict[str, list[list[float]]]  # method → per image → per checkpoint (flat methods: one value)
    seconds: dict[str, float]  # method → mean wall time per image
    images: int

    def mean(self, method: str) -> list[float]:
        return np.mean(np.array(self.psnr[method]), axis=0).tolist()


def _photos(model: Model, n: int):
    for index in range(n):
        image, caption = data.sample("test", index, model.default_size[0])
        yield index, image, caption


def _random_caption(index: int) -> str:
    """A caption of another test photo that differs in colour, shape and background."""
    own = data.scene("test", index)
    for j in range(index + 1, index + 200):
        s = data.scene("test", j)
        if s.colour != own.colour and s.shape != own.shape and s.background != own.background:
            return s.caption()
    raise RuntimeError("no random caption found")


def run_ablation(model: Model, config: AblationConfig, progress: Callable[[str], None] | None = None) -> AblationResult:
    """PSNR vs. iterations for every method over `config.images` test photos."""
    inv_cfg = config.inversion
    schedule = make_schedule(model.scheduler_config, inv_cfg.num_steps)
    T, w = inv_cfg.num_steps, inv_cfg.guidance_scale
    uncond = model.encode_text([""])
    nulls_plain = uncond.float().expand(T, -1, -1)
    psnrs = {m: [] for m in FLAT + config.methods}
    seconds = {m: 0.0 for m in FLAT + config.methods}

    def score(latent_T, cond, nulls, photo, guidance=w, corrections=None) -> float:
        with torch.no_grad():
            z0 = sample(model, latent_T, cond, nulls, schedule, guidance, corrections=corrections)
        return psnr(to_pil(model.decode_latents(z0))[0], photo)

    for index, photo, caption in _photos(model, config.images):
        cond = model.encode_text([caption])
        x = to_tensor(photo)
        t0 = time.perf_counter()
        z0 = model.encode_image(x).float()
        psnrs["VAE bound"].append([psnr(to_pil(model.decode_latents(z0))[0], photo)])
        seconds["VAE bound"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        pivot = ddim_invert(model, z0, cond, schedule)
        t_pivot = time.perf_counter() - t0
        seconds["DDIM w=1"] += t_pivot
        seconds["DDIM w=7.5"] += t_pivot
        psnrs["DDIM w=1"].append([score(pivot[-1:], cond, nulls_plain, photo, 1.0)])
        psnrs["DDIM w=7.5"].append([score(pivot[-1:], cond, nulls_plain, photo)])
        seconds["negative-prompt"] += t_pivot
        psnrs["negative-prompt"].append([score(pivot[-1:], cond, cond.float().expand(T, -1, -1), photo)])
        t0 = time.perf_counter()
        corrections = direct_corrections(model, pivot, cond, uncond, schedule, w)
        seconds["direct"] += t_pivot + time.perf_counter() - t0
        psnrs["direct"].append([score(pivot[-1:], cond, nulls_plain, photo, corrections=corrections)])

        # optimised methods: one run each, reconstructed at every checkpoint
        g = torch.Generator().manual_seed(index)
        noise = torch.randn(pivot[:1].shape, generator=g)
        alphas = schedule.alphas.float()[:, None, None, None]
        random_pivot = alphas.sqrt() * z0.cpu() + (1 - alphas).sqrt() * noise  # forward-noised, not DDIM
        random_pivot[0] = z0.cpu()[0]
        wrong = model.encode_text([_random_caption(index)])
        runs = {
            "null-text": (pivot, cond, "null"),
            "global null": (pivot, cond, "null"),
            "random pivot": (random_pivot, cond, "null"),
            "textual inversion": (pivot, cond, "cond"),
            "random caption": (ddim_invert(model, z0, wrong, schedule) if "random caption" in config.methods else None,
                               wrong, "null"),
        }
        for method, (piv, c, what) in ((m, runs[m]) for m in config.methods):
            if progress:
                progress(f"photo {index + 1}/{config.images}: {method}")
            t0 = time.perf_counter()
            if method == "global null":  # one ∅ for every step, optimised over all of them
                result = global_null_optimise(model, piv, c, uncond, schedule, inv_cfg, max(config.checkpoints),
                                              config.checkpoints)
            else:
                result = null_text_optimise(model, piv, c, uncond, schedule, inv_cfg, optimise=what,
                                            checkpoints=config.checkpoints)
            seconds[method] += time.perf_counter() - t0 + t_pivot
            row = []
            for b in config.checkpoints:
                per_step, current = result.snapshots[b]
                if what == "cond":  # per-step caption embeddings, ψ("") as the unconditional one
                    row.append(score(piv[-1:], per_step[:, None], nulls_plain, photo))
                else:
                    row.append(score(piv[-1:], c, per_step, photo))
            psnrs[method].append(row)
    n = config.images
    return AblationResult(list(config.checkpoints), psnrs, {k: v / n for k, v in seconds.items()}, n)


def ablation_report(result: AblationResult, out_dir: Path, model_name: str) -> list[Path]:
    """Write ablation.png (PSNR vs iterations), ablation.md (table) and ablation.json."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    xs = result.checkpoints
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    optimised = [m for m in OPTIMISED if m in result.psnr]
    for method in optimised:
        ax.plot(xs, result.mean(method), marker="o", ms=3, label=method)
    for method, style in zip(FLAT, ("--", ":", ":", "-.", "-.")):
        ax.plot(xs, [result.mean(method)[0]] * len(xs), style, label=method, color="black" if method == "VAE bound" else None)
    ax.set_xlabel("optimisation iterations (cumulative over the 50 steps)")
    ax.set_ylabel("reconstruction PSNR (dB)")
    ax.set_title(f"Inversion ablation, {model_name}, {result.images} test photos")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    png = atomic_write(out_dir / "ablation.png", lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
    lines = ["| method | " + " | ".join(f"{b} it" for b in xs) + " | s / photo |", "|---|" + "---|" * (len(xs) + 1)]
    for method in optimised:
        lines.append(f"| {method} | " + " | ".join(f"{v:.2f}" for v in result.mean(method))
                     + f" | {result.seconds[method]:.1f} |")
    for method in FLAT:
        v = result.mean(method)[0]
        lines.append(f"| {method} | " + " | ".join(f"{v:.2f}" for _ in xs) + f" | {result.seconds[method]:.1f} |")
    md = _write_text(out_dir / "ablation.md", f"PSNR (dB) of the guided reconstruction, mean over {result.images} "
                     "test photos.\n\n" + "\n".join(lines) + "\n")
    js = _write_text(out_dir / "ablation.json", json.dumps(asdict(result), indent=1) + "\n")
    return [png, md, js]


def _write_text(path: Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text))


# ---------------------------------------------------------------------------------------------
# The guidance table


@dataclass
class GuidanceRow:
    label: str
    w_inversion: float
    w_inference: float
    psnr: float
    edit_success: float


def _swap_target(scene: data.Scene) -> tuple[str, str]:
    """A colour swap of the shape to a colour that is neither the shape's nor the background's."""
    new = next(c for c in ("green", "yellow", "white", "purple") if c not in (scene.colour, scene.background))
    return scene.caption().replace(f"a {scene.colour} {scene.shape}", f"a {new} {scene.shape}"), new


def run_guidance_table(model: Model, images: int, progress: Callable[[str], None] | None = None) -> list[GuidanceRow]:
    """DDIM inversion × inference guidance, and null-text: PSNR and colour-swap success."""
    settings = [("DDIM", 1.0, 1.0, "ddim"), ("DDIM", 1.0, 7.5, "ddim"), ("DDIM", 7.5, 1.0, "ddim"),
                ("DDIM", 7.5, 7.5, "ddim"), ("null-text", 1.0, 7.5, "null-text")]
    rows = []
    for label, w_inv, w_inf, method in settings:
        ps, ok = [], []
        for index, photo, caption in _photos(model, images):
            if progress:
                progress(f"{label} w_inv={w_inv} w_inf={w_inf}: photo {index + 1}/{images}")
            cfg = InversionConfig(method=method, guidance_scale=w_inf, pivot_guidance_scale=w_inv)
            inv: Inversion = invert(model, to_tensor(photo), caption, cfg)
            scene = data.scene("test", index, model.default_size[0])
            target, colour = _swap_target(scene)
            result = edit(model, inv, [target], EditConfig(blend_words=[scene.shape]))
            rec, edited = to_pil(result.images)
            ps.append(psnr(rec, photo))
            j = judge(edited)
            ok.append(j.colour == colour and j.shape == scene.shape and j.background == scene.background)
        rows.append(GuidanceRow(label, w_inv, w_inf, float(np.mean(ps)), float(np.mean(ok))))
    return rows


def guidance_report(rows: list[GuidanceRow], out_dir: Path, images: int) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = ["| inversion | w (inversion) | w (inference) | reconstruction PSNR dB | colour-swap success |",
             "|---|---|---|---|---|"]
    lines += [f"| {r.label} | {r.w_inversion:g} | {r.w_inference:g} | {r.psnr:.2f} | {r.edit_success:.0%} |" for r in rows]
    md = _write_text(out_dir / "guidance.md", f"Mean over {images} test photos; edits judged by the bundled model's "
                     "evaluator.\n\n" + "\n".join(lines) + "\n")
    js = _write_text(out_dir / "guidance.json", json.dumps([asdict(r) for r in rows], indent=1) + "\n")
    return [md, js]
