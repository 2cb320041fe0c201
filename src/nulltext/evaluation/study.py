"""The paper's evidence, reproduced on any model: the inversion ablation and the DDIM guidance table.

Ablation (Mokady et al. 2023, Fig. 5): reconstruction PSNR against cumulative optimisation iterations
for several inversion choices, over N photos with their captions. Every optimised method runs once
per photo; `optimise_with_checkpoints` watches Algorithm 1's Adam updates and records what its result
would be had it stopped after B iterations, and each checkpoint is reconstructed. Pivots are computed
once per photo. The ablations live here, as wrappers around the bare Algorithm 1:
- textual inversion optimises the caption's embedding per step instead of ∅_t: Algorithm 1 with the
  roles of C and ψ("") swapped and guidance 1 − w, since u + w(c − u) = c + (1 − w)(u − c);
- the global null is one ∅ optimised over all steps (`global_null_optimise`), on the same budget.

Guidance table (the paper's sec. 3.1 observations): DDIM inversion at w_inv ∈ {1, 7.5} sampled at
w_inf ∈ {1, 7.5}: reconstruction PSNR and the success rate of an edit judged by a caller-given judge,
plus the null-text row.

The photos, their edits and the judge are inputs (`StudyPhoto`, `Judge`): the study runs on any
model; `nulltext.evaluation.study_photos` makes them from the bundled model's synthetic data set.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

import torch.nn.functional as F
from PIL import Image

from nulltext.core.schedule import Schedule, make_schedule
from nulltext.core.ddim import ddim_step, guided
from nulltext.editing.from_inversion import edit
from nulltext.io.images import to_pil, to_tensor
from nulltext.inversion.null_text import (Inversion, InversionConfig, InversionError, invert, loss_scale, null_text_optimise)
from nulltext.inversion.pivot import ddim_invert, direct_corrections
from nulltext.io.outputs import publish
from nulltext.evaluation.metrics import psnr, vae_bound
from nulltext.model import Model
from nulltext.editing.config import EditConfig
from nulltext.core.sampling import guided_ddim
from nulltext.progress import Progress, StepReport


@dataclass
class StudyPhoto:
    """A photo the study inverts, with what its ablation and edit need."""

    image: Image.Image  # at the model's size
    caption: str
    other_caption: str  # a caption that does not describe the photo (the random-caption ablation)
    edit_target: str  # an edited caption (the guidance table's edit), judged by a `Judge`
    blend_words: list[str]  # local-blend words of that edit


Judge = Callable[[Image.Image, StudyPhoto], bool]  # did this edited image do the photo's edit?
Checkpoints = dict[int, torch.Tensor]  # cumulative Adam iterations B → per-step embeddings (T, tokens, dim)


def optimise_with_checkpoints(model: Model, pivot: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor,
                              schedule: Schedule, config: InversionConfig, checkpoints: tuple[int, ...]) -> Checkpoints:
    """Algorithm 1, recorded after B Adam iterations in all for each checkpoint B.

    The iterations are spent from t = T down: at B, the steps already finished keep their ∅_t, and
    the step being optimised and all later ones use its current embedding.
    """
    T = schedule.num_steps
    finished: dict[int, torch.Tensor] = {}
    state = {"current": uncond.detach().float()[0], "total": 0}
    pending, snapshots = sorted(checkpoints), {}

    def snapshot() -> None:
        while pending and pending[0] <= state["total"]:
            per_step = [finished.get(t, state["current"]) for t in range(1, T + 1)]
            snapshots[pending.pop(0)] = torch.stack(per_step).cpu().clone()

    def on_update(t: int, null: torch.Tensor) -> None:
        state["current"], state["total"] = null.clone(), state["total"] + 1
        snapshot()

    def on_step(report) -> None:
        finished[T - report.step + 1] = state["current"]

    snapshot()
    result = null_text_optimise(model, pivot, cond, uncond, schedule, config, on_step, on_update)
    finished.update({t: result.embeddings[t - 1] for t in range(1, T + 1)})
    state["total"] = max(checkpoints, default=0)
    snapshot()
    return snapshots


def global_null_optimise(model: Model, pivot: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor,
                         schedule: Schedule, config: InversionConfig, iterations: int,
                         checkpoints: tuple[int, ...] = ()) -> Checkpoints:
    """The paper's "global null-text" ablation (Fig. 5): one ∅ shared by every step.

    Passes over t = T … 1 along the guided trajectory (z̄_T = z*_T at the start of each pass), one Adam
    update of the shared ∅ per timestep on ‖z*_{t−1} − z_{t−1}(z̄_t, ∅, C)‖², until `iterations` updates
    in all; lr decays linearly to half over the run, as in Algorithm 1. Each checkpoint's per-step
    embeddings all equal the shared one then.
    """
    T, w = schedule.num_steps, config.guidance_scale
    scale = loss_scale(model)
    null = uncond.detach().float().clone().requires_grad_(True)  # ∅ ← ψ("")
    optimiser = torch.optim.Adam([null], lr=config.learning_rate, eps=1e-8 * scale)
    pending, snapshots, total = sorted(checkpoints), {}, 0

    def snapshot() -> None:
        while pending and pending[0] <= total:
            snapshots[pending.pop(0)] = null.detach()[0].cpu().expand(T, -1, -1).clone()

    snapshot()
    while total < iterations:
        z_bar = pivot[T : T + 1].to(model.device)
        for t in range(T, 0, -1):
            if total >= iterations:
                break
            tau, target = schedule.timestep(t), pivot[t - 1 : t].to(model.device).float()
            with torch.no_grad():
                out_cond = model.predict(z_bar, tau, cond)
            z_prev = ddim_step(guided(model.predict(z_bar, tau, null), out_cond, w), z_bar, t, schedule)
            loss = F.mse_loss(z_prev, target)
            if not torch.isfinite(loss):
                raise InversionError(f"global null loss became {loss.item()} at timestep {tau} — run with float32")
            for g in optimiser.param_groups:
                g["lr"] = config.learning_rate * (1 - total / (2 * iterations))
            optimiser.zero_grad(set_to_none=True)
            (loss * scale).backward()
            optimiser.step()
            total += 1
            z_bar = z_prev.detach()  # z̄_{t−1} with the ∅ of this update
            snapshot()
    total = max(checkpoints, default=0)
    snapshot()
    return snapshots

OPTIMISED = ("null-text", "global null", "random pivot", "textual inversion", "random caption")
FLAT = ("VAE bound", "DDIM w=1", "DDIM w=7.5", "negative-prompt", "direct")


@dataclass
class AblationConfig:
    checkpoints: tuple[int, ...] = (0, 10, 25, 50, 100, 150, 200, 300, 400, 500)
    methods: tuple[str, ...] = OPTIMISED  # which optimised methods to run (the flat ones always run)
    inversion: InversionConfig = field(default_factory=lambda: InversionConfig.paper(early_stop=0.0, early_stop_growth=0.0))


@dataclass
class AblationResult:
    checkpoints: list[int]
    psnr: dict[str, list[list[float]]]  # method → per image → per checkpoint (flat methods: one value)
    seconds: dict[str, float]  # method → mean wall time per image
    images: int

    def mean(self, method: str) -> list[float]:
        return np.mean(np.array(self.psnr[method]), axis=0).tolist()


def run_ablation(model: Model, photos: list[StudyPhoto], config: AblationConfig,
                 progress: Progress | None = None) -> AblationResult:
    """PSNR vs. iterations for every method over the photos (SD 1.x/2.x: its variants optimise token embeddings)."""
    if model.pooled_dim is not None:
        raise ValueError("the ablation study runs on SD 1.x/2.x models: its textual-inversion and global-null "
                         "variants optimise token embeddings only, not the pooled one of SDXL or SD 3.x — pass an SD 1.x/2.x --model")
    inv_cfg = config.inversion
    schedule = make_schedule(model.scheduler_config, inv_cfg.num_steps)
    T, w = inv_cfg.num_steps, inv_cfg.guidance_scale
    uncond = model.encode_text([""])
    nulls_plain = uncond.float().expand(T, -1, -1)
    psnrs = {m: [] for m in FLAT + config.methods}
    seconds = {m: 0.0 for m in FLAT + config.methods}

    def score(latent_T, cond, nulls, photo, guidance=w, corrections=None) -> float:
        with torch.no_grad():
            z0 = guided_ddim(model, latent_T, cond, nulls, schedule, guidance, corrections=corrections)
        return psnr(to_pil(model.decode_latents(z0))[0], photo)

    for index, item in enumerate(photos):
        photo, caption = item.image, item.caption
        cond = model.encode_text([caption])
        x = to_tensor(photo)
        t0 = time.perf_counter()
        z0 = model.encode_image(x).float()
        psnrs["VAE bound"].append([vae_bound(model, photo, z0)])
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
        wrong = model.encode_text([item.other_caption])
        runs = {
            "null-text": (pivot, cond, "null"),
            "global null": (pivot, cond, "null"),
            "random pivot": (random_pivot, cond, "null"),
            "textual inversion": (pivot, cond, "cond"),
            "random caption": (ddim_invert(model, z0, wrong, schedule) if "random caption" in config.methods else None,
                               wrong, "null"),
        }
        for j, (method, (piv, c, what)) in enumerate((m, runs[m]) for m in config.methods):
            t0 = time.perf_counter()
            if method == "global null":  # one ∅ for every step, optimised over all of them
                snapshots = global_null_optimise(model, piv, c, uncond, schedule, inv_cfg, max(config.checkpoints),
                                                 config.checkpoints)
            elif what == "cond":  # textual inversion: C_t optimised with ψ("") fixed, as Algorithm 1 with roles swapped
                snapshots = optimise_with_checkpoints(model, piv, uncond, c, schedule,
                                                      replace(inv_cfg, guidance_scale=1 - w), config.checkpoints)
            else:
                snapshots = optimise_with_checkpoints(model, piv, c, uncond, schedule, inv_cfg, config.checkpoints)
            seconds[method] += time.perf_counter() - t0 + t_pivot
            row = []
            for b in config.checkpoints:
                if what == "cond":  # per-step caption embeddings, ψ("") as the unconditional one
                    row.append(score(piv[-1:], snapshots[b][:, None], nulls_plain, photo))
                else:
                    row.append(score(piv[-1:], c, snapshots[b], photo))
            psnrs[method].append(row)
            if progress:
                progress(StepReport(index * len(config.methods) + j + 1, len(photos) * len(config.methods),
                                    f"photo {index + 1}/{len(photos)}: {method}"))
    n = len(photos)
    return AblationResult(list(config.checkpoints), psnrs, {k: v / n for k, v in seconds.items()}, n)


def ablation_report(result: AblationResult, out_dir: Path, model_name: str, num_steps: int) -> list[Path]:
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
    ax.set_xlabel(f"optimisation iterations (cumulative over the {num_steps} steps)")
    ax.set_ylabel("reconstruction PSNR (dB)")
    ax.set_title(f"Inversion ablation, {model_name}, {result.images} test photos")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    png = publish(out_dir / "ablation.png", lambda tmp: fig.savefig(tmp, format="png"), force=True)
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
    return publish(path, lambda tmp: tmp.write_text(text), force=True)


# ---------------------------------------------------------------------------------------------
# The guidance table


@dataclass
class GuidanceRow:
    label: str
    w_inversion: float
    w_inference: float
    psnr: float
    edit_success: float


# (label, w at inversion, w at inference, method): the paper's Table (DDIM's four corners and null-text)
GUIDANCE_SETTINGS = (("DDIM", 1.0, 1.0, "ddim"), ("DDIM", 1.0, 7.5, "ddim"), ("DDIM", 7.5, 1.0, "ddim"),
                     ("DDIM", 7.5, 7.5, "ddim"), ("null-text", 1.0, 7.5, "null-text"))


def run_guidance_table(model: Model, photos: list[StudyPhoto], judge: Judge,
                       progress: Progress | None = None,
                       null_text: list[Inversion] | None = None,
                       settings: Sequence[tuple[str, float, float, str]] = GUIDANCE_SETTINGS,
                       inversion: InversionConfig | None = None) -> list[GuidanceRow]:
    """DDIM inversion × inference guidance, and null-text: PSNR and edit success.

    `null_text`: the photos' null-text inversions, if already made with this table's settings; else they are
    made here. `settings`: the table's rows (a subset of GUIDANCE_SETTINGS, say). `inversion`: the settings
    every row starts from (the paper's, 50 steps, by default); each row sets its method and guidance scales.
    """
    base = inversion if inversion is not None else InversionConfig.paper()
    rows = []
    for k, (label, w_inv, w_inf, method) in enumerate(settings):
        ps, ok = [], []
        for index, item in enumerate(photos):
            cfg = replace(base, method=method, guidance_scale=w_inf, pivot_guidance_scale=w_inv)
            if method == "null-text" and null_text is not None and cfg == null_text[index].config:
                inv = null_text[index]
            else:
                inv = invert(model, to_tensor(item.image), item.caption, cfg)
            result = edit(model, inv, [item.edit_target], EditConfig(blend_words=item.blend_words))
            rec, edited = to_pil(result.images)
            ps.append(psnr(rec, item.image))
            ok.append(judge(edited, item))
            if progress:
                progress(StepReport(k * len(photos) + index + 1, len(settings) * len(photos),
                                    f"{label} w_inv={w_inv} w_inf={w_inf}: photo {index + 1}/{len(photos)}"))
        rows.append(GuidanceRow(label, w_inv, w_inf, float(np.mean(ps)), float(np.mean(ok))))
    return rows


def guidance_report(rows: list[GuidanceRow], out_dir: Path, images: int, judged_by: str) -> list[Path]:
    """Write guidance.md (table) and guidance.json."""
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = ["| inversion | w (inversion) | w (inference) | reconstruction PSNR dB | colour-swap success |",
             "|---|---|---|---|---|"]
    lines += [f"| {r.label} | {r.w_inversion:g} | {r.w_inference:g} | {r.psnr:.2f} | {r.edit_success:.0%} |" for r in rows]
    md = _write_text(out_dir / "guidance.md", f"Mean over {images} test photos; edits judged by {judged_by}.\n\n" + "\n".join(lines) + "\n")
    js = _write_text(out_dir / "guidance.json", json.dumps([asdict(r) for r in rows], indent=1) + "\n")
    return [md, js]
