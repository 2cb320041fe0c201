"""Inverting a photo into the model: Null-text inversion, Algorithm 1 written once (the pivot: `pivot`).

Mokady et al., "Null-text Inversion for Editing Real Images using Guided Diffusion Models", CVPR 2023.

Notation (the paper's ↔ the code's):
    z*_0 … z*_T     `pivot[0] … pivot[T]`: DDIM inversion at guidance w_pivot (= 1)
    C = ψ(P)        `cond`: the caption's conditioning, never changed
    ∅_t (φ_t)       `nulls[t − 1]`: the optimised unconditional conditioning of step t
                    (`null_embeddings[t − 1]`, and on SDXL also `null_pooled[t − 1]`)
    z̄_t            `z_bar`: the latent that guided sampling with ∅_T … ∅_{t+1} reaches
    w               `config.guidance_scale` (7.5)

Algorithm 1 of the paper: z̄_T = z*_T, ∅_T initialised from ψ(""); for t = T … 1, minimise
‖z*_{t−1} − z_{t−1}(z̄_t, ∅_t, C)‖² over ∅_t alone with Adam, then z̄_{t−1} = z_{t−1}(z̄_t, ∅_t, C) and
∅_{t−1} starts at ∅_t.

What ∅_t is comes from the model (`nulltext.core.conditioning`): on SD 1.x/2.x the token embeddings
(tokens, dim) of ψ(""); on SDXL the token embeddings of both encoders (concatenated) and the pooled
embedding, optimised together, since both feed the unconditional branch. ∅_t and the loss are fp32
whatever the model's dtype: the UNet runs in its dtype, the gradient reaches ∅_t through the cast.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Literal, NamedTuple

import torch
import torch.nn.functional as F

from nulltext.core.conditioning import TextConditioning
from nulltext.core.schedule import Schedule, make_schedule
from nulltext.core.ddim import ddim_step, guided
from nulltext.model import Model
from nulltext.inversion.pivot import ddim_invert, direct_corrections
from nulltext.inversion.config import InversionConfig
from nulltext.errors import NulltextError
from nulltext.progress import Progress, StepReport


class InversionError(NulltextError, RuntimeError):
    """The optimisation failed (NaN/inf); the message says what to change."""




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
    null_pooled: torch.Tensor | None = None  # (T, P) SDXL: the pooled part of ∅_1 … ∅_T

    @property
    def num_steps(self) -> int:
        return self.config.num_steps

    @property
    def nulls(self) -> TextConditioning:
        """∅_1 … ∅_T as one per-step conditioning: tokens (T, tokens, dim), pooled (T, P) or None."""
        return TextConditioning(self.null_embeddings, self.null_pooled)

    def schedule(self) -> Schedule:
        return make_schedule(self.scheduler_config, self.config.num_steps)


# ---------------------------------------------------------------------------------------------
# Null-text optimisation


@dataclass
class Optimised:
    """Per-step embeddings from `null_text_optimise`, each list indexed by t − 1."""

    embeddings: torch.Tensor  # (T, tokens, dim) float32: ∅_1 … ∅_T
    losses: list[float]  # the final loss of each step
    iterations: list[int]  # the Adam iterations each step used
    pooled: torch.Tensor | None = None  # (T, P) float32: SDXL's pooled part of ∅_1 … ∅_T

    @property
    def nulls(self) -> TextConditioning:
        return TextConditioning(self.embeddings, self.pooled)


UpdateHook = Callable[[int, torch.Tensor], None]  # (t, ∅_t's token embeddings after an Adam update)


def loss_scale(model: Model) -> float:
    """fp16 gradients of a ~1e-5 loss underflow: scale the loss, and Adam's ε with it (Adam is otherwise scale-free)."""
    return 2.0**16 if model.dtype == torch.float16 else 1.0


def null_text_optimise(model: Model, pivot: torch.Tensor, cond: TextConditioning | torch.Tensor,
                       uncond: TextConditioning | torch.Tensor, schedule: Schedule, config: InversionConfig,
                       callback: Progress | None = None, on_update: UpdateHook | None = None) -> Optimised:
    """Algorithm 1 (Mokady et al. 2023) for one photo: `optimise_rows` with one row; pivot (T+1, C, h, w)."""
    hook = None if on_update is None else (lambda row, t, null: on_update(t, null.tokens.detach()[0]))
    [result] = optimise_rows(model, pivot[:, None], TextConditioning.of(cond), TextConditioning.of(uncond), schedule,
                             config, callback, hook)
    return result


@dataclass
class Row:
    """One photo's running state in Algorithm 1: its ∅_t, what each step left, its secant state."""

    index: int
    null: TextConditioning  # a batch of one, float32: the current ∅_t (SDXL: tokens and pooled)
    nulls: list  # ∅_1 … ∅_T, filled from T down
    losses: list[float]
    iterations: list[int]
    secant: SecantState = field(default_factory=lambda: SecantState())
    error: InversionError | None = None


OnError = Literal["raise", "keep"]
RowsFrom = Callable[[list[int], TextConditioning, bool], torch.Tensor]  # (rows, their ∅_t, with gradient?) → z_{t−1}


def optimise_rows(model: Model, pivots: torch.Tensor, cond: TextConditioning, uncond: TextConditioning,
                  schedule: Schedule, config: InversionConfig, callback: Progress | None = None,
                  on_update: Callable[[int, int, TextConditioning], None] | None = None,
                  on_error: OnError = "raise") -> list[Optimised | InversionError]:
    """Algorithm 1 (Mokady et al. 2023): per-step ∅_t of each of K photos so that guided DDIM from z*_T
    follows its pivot; pivots (T+1, K, C, h, w), cond (K, …), uncond ψ("") (1, …).

    The one definition of the algorithm: `invert` runs it with K = 1, `invert_batch` with K photos per
    UNet call (each photo with its own ∅_t, optimiser and early stop; see `nulltext.inversion.batched`).
    Every part of the unconditional conditioning is optimised (SDXL: tokens and pooled), in fp32.
    `config.optimizer` picks the inner loop: the paper's Adam (`adam_descent`, all rows in one batch), or
    `secant_descent` (the rows still optimising in one batch per trial). `on_update(row, t, ∅_t)` sees every update (the study's checkpoints).
    A photo whose loss or gradient is not finite raises InversionError (`on_error="raise"`), or (`"keep"`)
    leaves the run with the error in its place in the returned list.
    """
    T, w, scale = schedule.num_steps, config.guidance_scale, loss_scale(model)
    K = pivots.shape[1]
    rows = [Row(i, uncond.detach().float().clone(), [None] * T, [0.0] * T, [0] * T) for i in range(K)]  # ∅_T ← ψ("")
    z_bar = pivots[T].to(model.device)  # (K, C, h, w) z̄_T ← z*_T
    for k, t in enumerate(range(T, 0, -1)):
        alive = [r for r in rows if r.error is None]
        if not alive:
            break
        tau, idx = schedule.timestep(t), [r.index for r in alive]
        targets = pivots[t - 1].to(model.device).float()  # (K, C, h, w) z*_{t−1}
        # 1. the conditional branch ε(z̄_t, C) does not depend on ∅_t: once per step, for every photo in the run
        with torch.no_grad():
            out_cond = dict(zip(idx, model.predict(z_bar[idx], tau, cond[idx]).split(1)))

        def step_from(members: list[int], nulls: TextConditioning, grad: bool, z_bar=z_bar, tau=tau, out_cond=out_cond,
                      t=t) -> torch.Tensor:
            """z_{t−1}(z̄_t, ∅_t, C) of the photos `members`: one guided DDIM step, differentiable in ∅_t when `grad`."""
            with torch.set_grad_enabled(grad):
                out = model.predict(z_bar[members], tau, nulls)
                return ddim_step(guided(out, torch.cat([out_cond[i] for i in members]), w), z_bar[members], t, schedule)

        # 2. each ∅_t starts at its ∅_{t+1}, as a fresh tensor (the optimiser updates it)
        for r in alive:
            r.null = r.null.detach().clone().requires_grad_(True)
        where, threshold = f"step {k + 1}/{T} (timestep {tau})", config.threshold_at(k)
        hook = None if on_update is None else (lambda i, null, t=t: on_update(i, t, null))
        # 3. minimise ‖z*_{t−1} − z_{t−1}(z̄_t, ∅_t, C)‖², stopping early below the step's threshold
        if config.optimizer == "adam":
            done = adam_descent(step_from, alive, targets, threshold, config.inner_steps, config.learning_rate_at(k),
                                scale, where, hook, on_error)
        else:
            done = secant_descent(step_from, alive, targets, threshold, config, scale, where, hook, on_error,
                                  resolution=torch.finfo(model.dtype).eps)
        # 4. keep ∅_t, move on along the guided trajectory: z̄_{t−1} = z_{t−1}(z̄_t, ∅_t, C)
        for i, (z_prev, loss, used) in done.items():
            r = rows[i]
            r.nulls[t - 1], r.losses[t - 1], r.iterations[t - 1] = r.null.detach().clone(), loss, used
            z_bar = torch.cat([z_bar[:i], z_prev.detach().to(z_bar), z_bar[i + 1 :]])
        if callback is not None and done:  # the most iterations and the highest loss over the photos
            callback(StepReport(k + 1, T, timestep=tau, inner_iterations=max(d[2] for d in done.values()),
                                loss=max(d[1] for d in done.values())))
    results: list[Optimised | InversionError] = []
    for r in rows:
        stacked = None if r.error is not None else TextConditioning.cat(r.nulls)  # (T, …) in step order ∅_1 … ∅_T
        results.append(r.error if stacked is None else Optimised(stacked.tokens, r.losses, r.iterations, stacked.pooled))
    return results


def adam_descent(step_from: RowsFrom, rows: list[Row], targets: torch.Tensor, threshold: float, max_updates: int,
                 lr: float, scale: float, where: str, on_update: Callable[[int, TextConditioning], None] | None = None,
                 on_error: OnError = "raise") -> dict[int, tuple[torch.Tensor, float, int]]:
    """The paper's inner loop for every row at once: at most N Adam updates of each ∅_t, one UNet batch of the
    rows still optimising per iteration; returns {row: (z_{t−1}, loss, updates)}.

    The early-stop test comes before each update, and the last forward pass gives z̄_{t−1}, so a row that
    stops early costs no extra pass: it keeps this pass's z_{t−1} and leaves the batch. Each ∅_t has its own
    Adam (its own moments and step count); the batch loss is the sum of the rows' losses, whose gradient in
    each ∅_t is that row's own (the UNet treats rows independently).
    """
    optimisers = {r.index: torch.optim.Adam(r.null.tensors(), lr=lr, eps=1e-8 * scale) for r in rows}
    done: dict[int, tuple[torch.Tensor, float, int]] = {}
    active, used = list(rows), 0
    while active:
        idx = [r.index for r in active]
        z_prev = step_from(idx, TextConditioning.cat([r.null for r in active]), used < max_updates)  # (B, C, h, w)
        losses = [F.mse_loss(z_prev[j : j + 1], targets[i : i + 1]) for j, i in enumerate(idx)]
        stepping = []
        for j, (r, loss) in enumerate(zip(active, losses)):
            try:
                _check_finite(loss, where)
            except InversionError as e:
                _fail(r, e, on_error)
                continue
            if loss.item() < threshold or used == max_updates:
                done[r.index] = (z_prev[j : j + 1].detach(), loss.item(), used)
            else:
                stepping.append((r, loss))
        if not stepping:
            break
        for r, _ in stepping:
            optimisers[r.index].zero_grad(set_to_none=True)
        (torch.stack([loss for _, loss in stepping]).sum() * scale).backward()  # each ∅_t gets its own gradient
        active = []
        for r, _ in stepping:
            if not r.null.grads_finite():
                _fail(r, InversionError(f"null-text gradient overflowed at {where} — run with --dtype float32 or bfloat16"),
                      on_error)
                continue
            optimisers[r.index].step()
            if on_update is not None:
                on_update(r.index, r.null)
            active.append(r)
        used += 1
    return done


def _fail(row: Row, error: InversionError, on_error: OnError) -> None:
    if on_error == "raise":
        raise error
    row.error = error


@dataclass
class SecantState:
    """What `secant_descent` carries from step to step for one photo: its step length and preconditioner."""

    step: torch.Tensor | None = None  # α, a 0-d tensor on the device; set on the first gradient
    second_moment: list[torch.Tensor] | None = None  # running mean of the squared gradient, per part of ∅


def secant_descent(step_from: RowsFrom, rows: list[Row], targets: torch.Tensor, threshold: float,
                   config: InversionConfig, scale: float, where: str,
                   on_update: Callable[[int, TextConditioning], None] | None = None,
                   on_error: OnError = "raise", resolution: float = 0.0) -> dict[int, tuple[torch.Tensor, float, int]]:
    """Preconditioned gradient descent on every row's ∅_t with secant step lengths, the rows still
    optimising in one UNet batch per trial; returns {row: (z_{t−1}, loss, trials)}.

    Not the paper's optimiser (the default; the paper's Adam is `optimizer="adam"`). The loss
    ‖z*_{t−1} − z_{t−1}(∅_t)‖² is a least-squares problem whose residual is nearly linear in ∅_t over one
    update, so, per row:
      direction  p = g / (√v + ε), g the gradient and v its running second moment (Adam's scaling without
                 momentum, kept across steps, β = config.second_moment_decay);
      length     a trial ∅_t − α p moves z_{t−1} by d; along p the best length is the secant's
                 α* = α ⟨−r, d⟩ / ‖d‖² (r the residual before the trial), clamped to [α/8, 8α] and used next;
                 never below the length that moves ∅_t by the model dtype's `resolution` (its machine ε)
                 relative to ‖∅_t‖ — a shorter move rounds away in the UNet's half-precision cast, leaves
                 d as rounding noise, and the secant would shrink α without end (bf16);
      accept     a trial that lowers the loss; a rejected one is retried at α* on the same gradient.
    A row stops below the step's threshold (the paper's; none at the last step with
    `config.refine_last_step`, see `InversionConfig.threshold_at`), after `config.trials` trials (4; the
    paper's N is 10), or when an accepted trial gains less than `config.stall` (½) of the step's average
    gain per trial so far: a rule relative to the step's own losses, with no scale to tune per model
    (docs/benchmarks.md measures it on the bundled model, a tiny SD 2.x, a tiny SDXL and in fp16/bf16).

    Host reads: one per round of trials (every row's loss, in one transfer) — α, p and the acceptance
    arithmetic stay on the device. Gradients: one backward per round, through the last batch, for the
    rows whose trial was accepted (a rejected row keeps its direction).
    """
    done: dict[int, tuple[torch.Tensor, float, int]] = {}
    idx = [r.index for r in rows]
    z = step_from(idx, TextConditioning.cat([r.null for r in rows]), True)  # (B, C, h, w)
    batch_losses = _row_losses(z, targets[idx])  # (B,) each row's loss, differentiable in its own ∅_t
    current = {r.index: _Point(r.null, z[j : j + 1], batch_losses[j]) for j, r in enumerate(rows)}
    losses = dict(zip(idx, batch_losses.tolist()))  # host read: the starting losses
    start = dict(losses)
    used = dict.fromkeys(idx, 0)
    directions: dict[int, tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]] = {}  # row → (p, r, p finite?)
    active = [r for r in rows if _finite(r, losses[r.index], where, on_error)]

    def finish(r: Row) -> None:
        r.null = current[r.index].null
        done[r.index] = (current[r.index].z.detach(), losses[r.index], used[r.index])

    while True:
        for r in active:
            if losses[r.index] < threshold or used[r.index] >= config.trials:
                finish(r)
        active = [r for r in active if r.index not in done]
        if not active:
            return done
        # 1. a gradient for each row at a new ∅_t (every row at first), in one backward through the last batch
        fresh = [r for r in active if r.index not in directions]
        if fresh:
            parts = [x for r in fresh for x in current[r.index].null.tensors()]
            grads = iter(torch.autograd.grad(torch.stack([current[r.index].loss for r in fresh]).sum() * scale, parts))
            beta = config.second_moment_decay
            for r in fresh:
                g, s = [next(grads) for _ in current[r.index].null.tensors()], r.secant
                s.second_moment = [x * x if s.second_moment is None else beta * v + (1 - beta) * x * x
                                   for x, v in zip(g, s.second_moment or g)]
                p = [x / (v.sqrt() + 1e-12 * scale) for x, v in zip(g, s.second_moment)]
                if s.step is None:  # Polyak's first guess: the length that would clear the loss were it linear
                    slope = sum((x * d).sum() for x, d in zip(g, p)).clamp_min(1e-30)  # ⟨g, p⟩
                    s.step = current[r.index].loss.detach() * scale / slope
                residual = (current[r.index].z - targets[r.index]).detach()
                directions[r.index] = (p, residual, torch.stack([torch.isfinite(x).all() for x in g]).all())
        # 2. one trial ∅_t − α p per row, the rows in one batch
        trials = []
        for r in active:
            parts = [x.detach() - r.secant.step * d for x, d in zip(current[r.index].null.tensors(), directions[r.index][0])]
            trials.append(TextConditioning(parts[0], parts[1] if len(parts) > 1 else None).requires_grad_(True))
        idx = [r.index for r in active]
        z = step_from(idx, TextConditioning.cat(trials), True)  # (B, C, h, w)
        batch_losses = _row_losses(z, targets[idx])
        # 3. each row's next length: the secant α* = α ⟨−r, d⟩ / ‖d‖² along p, clamped to [α/8, 8α]
        for j, r in enumerate(active):
            residual, alpha = directions[r.index][1], r.secant.step
            moved = (z[j : j + 1] - current[r.index].z).detach()  # d ≈ −α J p
            best = alpha * -(residual * moved).sum() / (moved * moved).sum().clamp_min(1e-30)
            step = torch.where(best > 0, torch.minimum(torch.maximum(best, alpha / 8), alpha * 8), alpha / 4)
            p, null = directions[r.index][0], current[r.index].null.tensors()
            floor = resolution * _norm(null) / _norm(p).clamp_min(1e-30)  # the shortest move the UNet's dtype sees
            r.secant.step = torch.maximum(step, floor)
        # 4. accept the trials that lower their row's loss: one host read for the batch
        finite = torch.stack([directions[r.index][2] for r in active]).to(batch_losses)
        for j, (r, loss, grads_ok) in enumerate(zip(active, *torch.stack([batch_losses.detach(), finite]).tolist())):
            used[r.index] += 1
            if not grads_ok:
                _fail(r, InversionError(f"null-text gradient overflowed at {where} — run with --dtype float32 or bfloat16"),
                      on_error)
            elif not _finite(r, loss, where, on_error) or not loss < losses[r.index]:
                continue  # failed, or rejected: retried at the new α on the same gradient
            else:
                gain = losses[r.index] - loss
                current[r.index], losses[r.index] = _Point(trials[j], z[j : j + 1], batch_losses[j]), loss
                del directions[r.index]
                if on_update is not None:
                    on_update(r.index, trials[j])
                if gain < config.stall * (start[r.index] - loss) / used[r.index]:  # diminishing returns: stop here
                    finish(r)
        active = [r for r in active if r.error is None]


class _Point(NamedTuple):
    """Where a row's secant descent stands: ∅_t, its z_{t−1} (1, C, h, w) and loss (with their graph)."""

    null: TextConditioning
    z: torch.Tensor
    loss: torch.Tensor


def _norm(parts: list[torch.Tensor]) -> torch.Tensor:
    return torch.sqrt(sum((x.detach().float() ** 2).sum() for x in parts))


def _row_losses(z: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Each row's MSE ‖z*_{t−1} − z_{t−1}‖² / n in fp32: (B, C, h, w) × 2 → (B,)."""
    return (z.float() - targets).pow(2).flatten(1).mean(1)


def _finite(row: Row, loss: float, where: str, on_error: OnError) -> bool:
    if math.isfinite(loss):
        return True
    _fail(row, InversionError(f"null-text loss became {loss} at {where} — run with --dtype float32 or a lower --lr"),
          on_error)
    return False


def _check_finite(loss: torch.Tensor, where: str) -> None:
    if not torch.isfinite(loss):
        raise InversionError(f"null-text loss became {loss.item()} at {where} — run with --dtype float32 or a lower --lr")


# ---------------------------------------------------------------------------------------------
# The whole inversion of one photo


def invert(model: Model, image: torch.Tensor, prompt: str, config: InversionConfig | None = None,
           callback: Progress | None = None, **provenance) -> Inversion:
    """Invert an image (1,3,H,W) in [-1,1] with its caption; `provenance` fills photo/crop_box/source_path."""
    config = config or InversionConfig()
    model.check_prompt(prompt)
    start = time.perf_counter()
    schedule = make_schedule(model.scheduler_config, config.num_steps)
    cond, uncond = model.text_conditioning([prompt]), model.null_conditioning()
    z0 = model.encode_image(image).float()
    pivot = ddim_invert(model, z0, cond, schedule, config.pivot_guidance_scale, uncond)
    corrections = None
    if config.method == "null-text":
        result = null_text_optimise(model, pivot, cond, uncond, schedule, config, callback)
        nulls, losses, iterations = result.nulls, result.losses, result.iterations
    elif config.method == "ddim":
        nulls = uncond.float().expand(config.num_steps).clone()
        losses, iterations = [], [0] * config.num_steps
    elif config.method == "negative-prompt":  # Miyake et al. 2023: ∅_t = C, no optimisation
        nulls = cond.float().expand(config.num_steps).clone()
        losses, iterations = [], [0] * config.num_steps
    else:  # "direct"  # Ju et al. 2023: keep ψ(""), store the per-step gap to the pivot
        nulls = uncond.float().expand(config.num_steps).clone()
        corrections = direct_corrections(model, pivot, cond, uncond, schedule, config.guidance_scale)
        losses, iterations = corrections.flatten(1).pow(2).mean(1).tolist(), [0] * config.num_steps
    return build_inversion(model, image, prompt, config, pivot, nulls, losses, iterations, time.perf_counter() - start,
                           corrections, **provenance)


def build_inversion(model: Model, image: torch.Tensor, prompt: str, config: InversionConfig, pivot: torch.Tensor,
                    nulls: TextConditioning, losses: list[float], iterations: list[int], wall_time: float,
                    corrections: torch.Tensor | None = None, **provenance) -> Inversion:
    """The `Inversion` of one photo (1, 3, H, W) from its pivot (T+1, C, h, w) and ∅_1 … ∅_T: the one place
    `invert` and `invert_batch` make their results, on the CPU. The photo is kept (as 8-bit RGB) unless
    `provenance` gives it, so that edits can put it back where they change nothing."""
    if provenance.get("photo") is None:
        provenance["photo"] = ((image[0].detach().float().cpu().permute(1, 2, 0) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return Inversion(
        latent_T=pivot[-1:].cpu().clone(), null_embeddings=nulls.tokens.cpu(), prompt=prompt, config=config,
        scheduler_config=dict(model.scheduler_config), image_size=(image.shape[-1], image.shape[-2]),
        model_source=model.source, model_identity=model.identity, model_dtype=str(model.dtype).removeprefix("torch."),
        losses=losses, inner_iterations=iterations, wall_time=wall_time,
        pivot=pivot.cpu() if config.keep_pivot else None, corrections=corrections,
        null_pooled=None if nulls.pooled is None else nulls.pooled.cpu(), **provenance,
    )
