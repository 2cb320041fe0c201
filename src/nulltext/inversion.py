"""Inverting a photo into the model: DDIM inversion (the pivot) and Null-text inversion.

Mokady et al., "Null-text Inversion for Editing Real Images using Guided Diffusion Models", CVPR 2023.

Notation (the paper's ↔ the code's):
    z*_0 … z*_T     `pivot[0] … pivot[T]`: DDIM inversion at guidance w_pivot (= 1)
    C = ψ(P)        `cond`: the caption's embedding, never changed
    ∅_t (φ_t)       `null_embeddings[t − 1]`: the optimised unconditional embedding of step t
    z̄_t            `z_bar`: the latent that guided sampling with ∅_T … ∅_{t+1} reaches
    w               `config.guidance_scale` (7.5)

Algorithm 1 of the paper: z̄_T = z*_T, ∅_T initialised from ψ(""); for t = T … 1, minimise
‖z*_{t−1} − z_{t−1}(z̄_t, ∅_t, C)‖² over ∅_t alone with Adam, then z̄_{t−1} = z_{t−1}(z̄_t, ∅_t, C) and
∅_{t−1} starts at ∅_t.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Literal

import torch
import torch.nn.functional as F

from nulltext.ddim import Schedule, ddim_inverse_step, ddim_step, guided, make_schedule
from nulltext.model import Model

Method = Literal["null-text", "ddim", "negative-prompt", "direct"]


class InversionError(RuntimeError):
    """The optimisation failed (NaN/inf); the message says what to change."""


@dataclass
class InversionConfig:
    """Settings of one inversion, with the paper's defaults."""

    method: Method = "null-text"
    num_steps: int = 50  # DDIM steps T
    guidance_scale: float = 7.5  # w used for editing and reconstruction
    pivot_guidance_scale: float = 1.0  # w of the DDIM inversion that makes the pivot
    inner_steps: int = 10  # N: Adam iterations per timestep at most
    learning_rate: float = 1e-2  # Adam lr at the first step, decayed linearly to half at the last
    early_stop: float = 1e-5  # stop the inner loop once the loss < early_stop + k · early_stop_growth
    early_stop_growth: float = 2e-5
    keep_pivot: bool = True  # store z*_0 … z*_T in the result

    def learning_rate_at(self, k: int) -> float:
        """lr at outer step k = 0 … T−1: the paper's 1e-2 · (1 − k/100) for T = 50, as 1 − k/(2T)."""
        return self.learning_rate * (1 - k / (2 * self.num_steps))

    def threshold_at(self, k: int) -> float:
        return self.early_stop + k * self.early_stop_growth


@dataclass
class StepReport:
    """What a progress callback is told after each outer step."""

    step: int  # outer steps done, 1 … T
    total: int
    timestep: int  # τ_t of this step
    inner_iterations: int
    loss: float


Callback = Callable[[StepReport], None]


@dataclass
class Inversion:
    """A photo inverted into a model: everything needed to reconstruct and edit it."""

    latent_T: torch.Tensor  # (1, C, h, w) z*_T
    null_embeddings: torch.Tensor  # (T, tokens, dim) ∅_1 … ∅_T
    prompt: str
    config: InversionConfig
    scheduler_config: dict
    image_size: tuple[int, int]  # (width, height)
    model_source: str
    model_identity: str
    photo: torch.Tensor | None = None  # (H, W, 3) uint8, the preprocessed photo
    crop_box: tuple[int, int, int, int] | None = None
    source_path: str | None = None
    losses: list[float] = field(default_factory=list)  # final loss of step t at index t − 1
    inner_iterations: list[int] = field(default_factory=list)  # Adam iterations of step t at index t − 1
    wall_time: float = 0.0
    pivot: torch.Tensor | None = None  # (T+1, C, h, w) z*_0 … z*_T
    model_dtype: str = ""  # the dtype the inversion ran in: ∅_t compensate for its exact numerics
    corrections: torch.Tensor | None = None  # (T, C, h, w) direct inversion: z*_{t−1} − z_{t−1}(z*_t), index t − 1

    @property
    def num_steps(self) -> int:
        return self.config.num_steps

    def schedule(self) -> Schedule:
        return make_schedule(self.scheduler_config, self.config.num_steps)


# ---------------------------------------------------------------------------------------------
# DDIM inversion: the pivot


@torch.no_grad()
def ddim_invert(model: Model, z0: torch.Tensor, cond: torch.Tensor, schedule: Schedule,
                guidance_scale: float = 1.0, uncond: torch.Tensor | None = None) -> torch.Tensor:
    """DDIM inversion z*_0 → z*_T; returns the trajectory (T+1, C, h, w). w = 1 uses the caption only."""
    z = z0.float()
    trajectory = [z]
    for i in range(1, schedule.num_steps + 1):
        t = schedule.timestep(i)
        out = model.predict(z, t, cond)
        if guidance_scale != 1.0:
            out = guided(model.predict(z, t, uncond), out, guidance_scale)
        z = ddim_inverse_step(out, z, i, schedule)
        trajectory.append(z)
    return torch.cat(trajectory)


# ---------------------------------------------------------------------------------------------
# Null-text optimisation


@dataclass
class Optimised:
    """Per-step embeddings from `null_text_optimise`, each list indexed by t − 1."""

    embeddings: torch.Tensor  # (T, tokens, dim) float32: ∅_1 … ∅_T (or C_1 … C_T when optimising C)
    losses: list[float]
    iterations: list[int]
    # cumulative Adam iterations B → (embeddings if stopped after B iterations, the embedding being optimised then)
    snapshots: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)


def _loss_scale(model: Model) -> float:
    """fp16 gradients of a ~1e-5 loss underflow: scale the loss, and Adam's ε with it (Adam is otherwise scale-free)."""
    return 2.0**16 if model.dtype == torch.float16 else 1.0


def null_text_optimise(model: Model, pivot: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor,
                       schedule: Schedule, config: InversionConfig, callback: Callback | None = None,
                       optimise: Literal["null", "cond"] = "null", checkpoints: tuple[int, ...] = ()) -> Optimised:
    """Algorithm 1: per-step null embeddings so guided DDIM from z*_T follows the pivot.

    The fixed branch's prediction is computed once per step; the inner loop checks the early-stop
    threshold before each Adam update, so a step that stops early reuses its last forward pass for
    z̄_{t−1} and a step that does not costs one more pass. `optimise="cond"` optimises the caption's
    embedding instead (the paper's textual-inversion ablation); `checkpoints` records what the result
    would be if the optimisation stopped after that many Adam iterations in all (for the ablation).
    """
    T, w = schedule.num_steps, config.guidance_scale
    loss_scale = _loss_scale(model)
    fixed, phi = (cond, uncond) if optimise == "null" else (uncond, cond)
    phi = phi.detach().float().clone()  # ∅_T ← ψ("")
    z_bar = pivot[T : T + 1].to(model.device)
    done, losses, iterations = [None] * T, [0.0] * T, [0] * T
    pending, snapshots, total = sorted(checkpoints), {}, 0

    def snapshot() -> None:
        while pending and pending[0] <= total:
            current = phi.detach()[0].clone()
            snapshots[pending.pop(0)] = (torch.stack([d if d is not None else current for d in done]).cpu(), current.cpu())

    snapshot()
    for k, t in enumerate(range(T, 0, -1)):
        tau, target = schedule.timestep(t), pivot[t - 1 : t].to(model.device).float()
        with torch.no_grad():
            out_fixed = model.predict(z_bar, tau, fixed)  # C (or ψ("")) never changes: once per step
        phi = phi.detach().clone().requires_grad_(True)  # a fresh tensor: Adam updates it in place
        optimiser = torch.optim.Adam([phi], lr=config.learning_rate_at(k), eps=1e-8 * loss_scale)
        threshold = config.threshold_at(k)
        used = 0
        for used in range(config.inner_steps + 1):
            with torch.set_grad_enabled(used < config.inner_steps):
                out = model.predict(z_bar, tau, phi)
                out = guided(out, out_fixed, w) if optimise == "null" else guided(out_fixed, out, w)
                z_prev = ddim_step(out, z_bar, t, schedule)
                loss = F.mse_loss(z_prev, target)
            if not torch.isfinite(loss):
                raise InversionError(f"null-text loss became {loss.item()} at step {k + 1}/{T} (timestep {tau}) — "
                                     "run with --dtype float32 or a lower --lr")
            if loss.item() < threshold or used == config.inner_steps:
                break
            optimiser.zero_grad(set_to_none=True)
            (loss * loss_scale).backward()
            if not torch.isfinite(phi.grad).all():
                raise InversionError(f"null-text gradient overflowed at step {k + 1}/{T} (timestep {tau}) — "
                                     "run with --dtype float32 or bfloat16")
            optimiser.step()
            total += 1
            snapshot()
        done[t - 1], losses[t - 1], iterations[t - 1] = phi.detach()[0].clone(), loss.item(), used
        z_bar = z_prev.detach()  # z̄_{t−1}
        if callback is not None:
            callback(StepReport(k + 1, T, tau, used, loss.item()))
    total = max(checkpoints, default=0)
    snapshot()
    return Optimised(torch.stack(done), losses, iterations, snapshots)


def global_null_optimise(model: Model, pivot: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor,
                         schedule: Schedule, config: InversionConfig, iterations: int,
                         checkpoints: tuple[int, ...] = ()) -> Optimised:
    """The paper's "global null-text" ablation (Fig. 5): one ∅ shared by every step.

    Passes over t = T … 1 along the guided trajectory (z̄_T = z*_T at the start of each pass), one Adam
    update of the shared ∅ per timestep on ‖z*_{t−1} − z_{t−1}(z̄_t, ∅, C)‖², until `iterations` updates
    in all; lr decays linearly to half over the run, as in Algorithm 1. The result's per-step
    embeddings all equal the shared one; `snapshots` as in `null_text_optimise`.
    """
    T, w = schedule.num_steps, config.guidance_scale
    loss_scale = _loss_scale(model)
    phi = uncond.detach().float().clone().requires_grad_(True)  # ∅ ← ψ("")
    optimiser = torch.optim.Adam([phi], lr=config.learning_rate, eps=1e-8 * loss_scale)
    pending, snapshots, total = sorted(checkpoints), {}, 0
    losses = [0.0] * T

    def snapshot() -> None:
        while pending and pending[0] <= total:
            current = phi.detach()[0].clone().cpu()
            snapshots[pending.pop(0)] = (current.expand(T, -1, -1).clone(), current)

    snapshot()
    while total < iterations:
        z_bar = pivot[T : T + 1].to(model.device)
        for t in range(T, 0, -1):
            if total >= iterations:
                break
            tau, target = schedule.timestep(t), pivot[t - 1 : t].to(model.device).float()
            with torch.no_grad():
                out_cond = model.predict(z_bar, tau, cond)
            z_prev = ddim_step(guided(model.predict(z_bar, tau, phi), out_cond, w), z_bar, t, schedule)
            loss = F.mse_loss(z_prev, target)
            if not torch.isfinite(loss):
                raise InversionError(f"global null loss became {loss.item()} at timestep {tau} — run with float32")
            for g in optimiser.param_groups:
                g["lr"] = config.learning_rate * (1 - total / (2 * iterations))
            optimiser.zero_grad(set_to_none=True)
            (loss * loss_scale).backward()
            optimiser.step()
            losses[t - 1], total = loss.item(), total + 1
            z_bar = z_prev.detach()  # z̄_{t−1} with the ∅ of this update
            snapshot()
    total = max(checkpoints, default=0)
    snapshot()
    final = phi.detach()[0].cpu()
    return Optimised(final.expand(T, -1, -1).clone(), losses, [0] * T, snapshots)


@torch.no_grad()
def direct_corrections(model: Model, pivot: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor,
                       schedule: Schedule, guidance_scale: float) -> torch.Tensor:
    """Direct inversion (Ju et al. 2023, "PnP Inversion"): d_t = z*_{t−1} − z_{t−1}(z*_t, ψ(""), C), (T, C, h, w).

    Adding d_t after each guided step of the source branch puts it back on the pivot exactly.
    """
    T = schedule.num_steps
    corrections = torch.zeros_like(pivot[1:])
    for t in range(T, 0, -1):
        z_t, tau = pivot[t : t + 1].to(model.device), schedule.timestep(t)
        out = model.predict(torch.cat([z_t, z_t]), tau, torch.cat([uncond, cond]))
        z_prev = ddim_step(guided(*out.chunk(2), guidance_scale), z_t, t, schedule)
        corrections[t - 1] = (pivot[t - 1 : t].to(model.device) - z_prev)[0].cpu()
    return corrections


# ---------------------------------------------------------------------------------------------
# The whole inversion of one photo


def invert(model: Model, image: torch.Tensor, prompt: str, config: InversionConfig | None = None,
           callback: Callback | None = None, **provenance) -> Inversion:
    """Invert an image (1,3,H,W) in [-1,1] with its caption; `provenance` fills photo/crop_box/source_path."""
    config = config or InversionConfig()
    model.check_prompt(prompt)
    start = time.perf_counter()
    schedule = make_schedule(model.scheduler_config, config.num_steps)
    cond, uncond = model.encode_text([prompt]), model.encode_text([""])
    z0 = model.encode_image(image).float()
    pivot = ddim_invert(model, z0, cond, schedule, config.pivot_guidance_scale, uncond)
    corrections = None
    if config.method == "null-text":
        result = null_text_optimise(model, pivot, cond, uncond, schedule, config, callback)
        nulls, losses, iterations = result.embeddings, result.losses, result.iterations
    elif config.method == "ddim":
        nulls = uncond.float().expand(config.num_steps, -1, -1).clone()
        losses, iterations = [], [0] * config.num_steps
    elif config.method == "negative-prompt":  # Miyake et al. 2023: ∅_t = C, no optimisation
        nulls = cond.float().expand(config.num_steps, -1, -1).clone()
        losses, iterations = [], [0] * config.num_steps
    elif config.method == "direct":  # Ju et al. 2023: keep ψ(""), store the per-step gap to the pivot
        nulls = uncond.float().expand(config.num_steps, -1, -1).clone()
        corrections = direct_corrections(model, pivot, cond, uncond, schedule, config.guidance_scale)
        losses, iterations = corrections.flatten(1).pow(2).mean(1).tolist(), [0] * config.num_steps
    else:
        raise ValueError(f"unknown inversion method {config.method!r}")
    return Inversion(
        latent_T=pivot[-1:].cpu().clone(), null_embeddings=nulls.cpu(), prompt=prompt, config=config,
        scheduler_config=dict(model.scheduler_config), image_size=(image.shape[-1], image.shape[-2]),
        model_source=model.source, model_identity=model.identity, model_dtype=str(model.dtype).removeprefix("torch."),
        losses=losses, inner_iterations=iterations,
        wall_time=time.perf_counter() - start, pivot=pivot.cpu() if config.keep_pivot else None, corrections=corrections, **provenance,
    )
