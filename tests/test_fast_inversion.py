"""The `--fast` null-text optimiser (secant descent) and the paper-exact setting beside it.

Correctness only: the secant length against the exact line minimiser of a linear problem and the
default (Adam) against Algorithm 1 written out here step for step; the fast preset's reconstruction
against the VAE bound is in test_inversion.py (beside the paper-Adam inversions it compares with).
Speed lives in benchmarks/fast_inversion_benchmark.py.
"""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from nulltext.bundled import data
from nulltext.core.conditioning import TextConditioning
from nulltext.core.schedule import make_schedule
from nulltext.core.ddim import ddim_step, guided
from nulltext.editing import reconstruct
from nulltext.io.images import to_tensor
from nulltext.inversion import InversionConfig, SecantState, ddim_invert, invert, secant_descent
from nulltext.inversion.null_text import Row
from numerics import relative_error
from nulltext.settings import SettingsError


def _photo(model, index=0):
    image, caption = data.sample("test", index, model.default_size[0])
    return to_tensor(image), caption, image


def _linear_problem(seed=0, rows=1):
    """z(∅) = A·vec(tokens, pooled) + b per row: a least-squares problem whose exact line minimiser is known."""
    g = torch.Generator().manual_seed(seed)
    tokens, pooled = torch.randn(rows, 3, 4, generator=g), torch.randn(rows, 5, generator=g)
    n = tokens[0].numel() + pooled[0].numel()
    A, b, target = torch.randn(16, n, generator=g) / n**0.5, torch.randn(16, generator=g), torch.randn(rows, 16, generator=g)

    def step_from(members: list[int], nulls: TextConditioning, grad: bool) -> torch.Tensor:  # (B, 16)
        with torch.set_grad_enabled(grad):
            return torch.cat([nulls.tokens.flatten(1), nulls.pooled.flatten(1)], 1) @ A.T + b

    nulls = [Row(i, TextConditioning(tokens[i : i + 1], pooled[i : i + 1]).requires_grad_(True), [], [], [])
             for i in range(rows)]
    return nulls, step_from, target, A


def test_secant_length_is_the_exact_line_minimiser_on_a_linear_problem():
    """On z linear in ∅ the secant α* = α⟨−r, d⟩/‖d‖² is argmin_α ‖r − α J p‖², both parts of ∅ (SDXL's too)."""
    [row], step_from, target, A = _linear_problem()
    config = InversionConfig(trials=1, stall=0.0)
    z = step_from([0], row.null, True)
    loss = F.mse_loss(z, target)
    grads = torch.autograd.grad(loss, row.null.tensors())
    direction = torch.cat([(g / g.abs()).flatten() for g in grads])  # first step: v = g², so p = sign(g)
    Jp, r = A @ direction, (z - target).detach()[0]
    exact = float((r * Jp).sum() / (Jp * Jp).sum())  # argmin_α ‖r − α J p‖²
    row.secant = SecantState(step=torch.tensor(0.5 * exact))  # a trial at half the best length finds the best one
    secant_descent(step_from, [row], target, 0.0, config, 1.0, "test")
    assert float(row.secant.step) == pytest.approx(exact, rel=1e-4)
    # and a second run from the same point, starting at α*, lands on the line minimum
    [row2], *_ = _linear_problem()
    row2.secant = SecantState(step=torch.tensor(exact))
    [(_, loss2, used)] = secant_descent(step_from, [row2], target, 0.0, config, 1.0, "test").values()
    best = F.mse_loss((r - exact * Jp) + target[0], target[0]).item()
    assert used == 1 and loss2 == pytest.approx(best, rel=1e-5)
    assert not torch.equal(row2.null.pooled, _linear_problem()[0][0].null.pooled)  # the pooled part moved too


def test_secant_descent_keeps_lowering_the_loss_until_the_threshold():
    [row], step_from, target, _ = _linear_problem(1)
    start = F.mse_loss(step_from([0], row.null, False), target).item()
    config = InversionConfig(trials=50, stall=0.0)
    [(_, loss, used)] = secant_descent(step_from, [row], target, 0.1 * start, config, 1.0, "test").values()
    assert loss < 0.1 * start and used < 50


def test_secant_rows_in_one_batch_each_get_what_they_get_alone():
    """Three rows descend together, one UNet batch per trial, each to its own threshold crossing and trial count."""
    rows, step_from, targets, _ = _linear_problem(2, rows=3)
    config = InversionConfig(trials=30, stall=0.0)
    starts = [F.mse_loss(step_from([i], r.null, False), targets[i : i + 1]).item() for i, r in enumerate(rows)]
    batches = []
    together = secant_descent(lambda m, n, g: batches.append(len(m)) or step_from(m, n, g), rows, targets,
                              0.3 * min(starts), config, 1.0, "test")
    for i in range(3):
        alone_row = _linear_problem(2, rows=3)[0][i]
        alone = secant_descent(step_from, [alone_row], targets, 0.3 * min(starts), config, 1.0, "test")[i]
        assert together[i][2] == alone[2] and together[i][1] == pytest.approx(alone[1], rel=1e-4)
        assert relative_error(rows[i].null.tokens, alone_row.null.tokens) < 1e-4
    assert max(batches) == 3 and len(batches) == 1 + max(t[2] for t in together.values())  # one call per round
    assert len({t[2] for t in together.values()}) > 1  # the rows stopped after different numbers of trials


def test_paper_setting_is_algorithm_1_step_for_step(tiny):
    """The default optimiser against Algorithm 1 written out here: same ∅_t, losses and Adam updates per step."""
    image, caption, _ = _photo(tiny)
    config = InversionConfig.paper(num_steps=5, inner_steps=4, early_stop=1e-4, early_stop_growth=1e-4)
    ours = invert(tiny, image, caption, config)
    assert config.optimizer == "adam" and InversionConfig().optimizer == "secant"
    T, w = config.num_steps, config.guidance_scale
    schedule = make_schedule(tiny.scheduler_config, T)
    cond, null = tiny.encode_text([caption]), tiny.encode_text([""]).float()
    pivot = ddim_invert(tiny, tiny.encode_image(image).float(), cond, schedule)
    z_bar = pivot[T:]
    for k, t in enumerate(range(T, 0, -1)):  # t = T … 1
        tau = schedule.timestep(t)
        null = null.detach().clone().requires_grad_(True)  # ∅_t ← ∅_{t+1}
        adam = torch.optim.Adam([null], lr=1e-2 * (1 - k / (2 * T)))
        with torch.no_grad():
            eps_cond = tiny.predict(z_bar, tau, cond)
        for j in range(config.inner_steps + 1):
            z_prev = ddim_step(guided(tiny.predict(z_bar, tau, null), eps_cond, w), z_bar, t, schedule)
            loss = ((z_prev - pivot[t - 1 : t]) ** 2).mean()
            if loss.item() < 1e-4 + k * 1e-4 or j == config.inner_steps:
                break
            adam.zero_grad()
            loss.backward()
            adam.step()
        assert ours.inner_iterations[t - 1] == j, f"step {k + 1}: {ours.inner_iterations[t - 1]} updates vs {j}"
        torch.testing.assert_close(ours.null_embeddings[t - 1 : t], null.detach(), atol=1e-6, rtol=1e-5)
        assert ours.losses[t - 1] == pytest.approx(loss.item(), rel=1e-5)
        z_bar = z_prev.detach()
    assert sum(ours.inner_iterations) > 0  # the comparison covered Adam updates, not only early stops


def test_fast_settings_are_checked_and_stored(tiny, tmp_path):
    from nulltext.inversion.file import load_inversion, save_inversion

    with pytest.raises(SettingsError, match="stall"):
        InversionConfig.fast(stall=1.5)
    with pytest.raises(SettingsError, match="optimizer"):
        InversionConfig(optimizer="lbfgs")
    image, caption, _ = _photo(tiny)
    inv = invert(tiny, image, caption, InversionConfig.fast(num_steps=4))
    back = load_inversion(save_inversion(inv, tmp_path / "fast.nti"), tiny)
    assert back.config == inv.config and back.config.optimizer == "secant"
    assert dataclasses.replace(inv.config, optimizer="adam") == InversionConfig.paper(num_steps=4)


def test_batch_runs_the_secant_optimiser_with_k_photos_per_unet_call(tiny):
    """invert_batch with the default optimiser: one UNet batch per trial, each photo as it is alone (up to the
    last bits batched kernels change)."""
    from nulltext.inversion.batched import invert_batch

    photos = [_photo(tiny, i) for i in (0, 2)]
    config = InversionConfig(num_steps=4)
    sizes = []
    handle = tiny.unet.register_forward_hook(lambda m, a, out: sizes.append(out.sample.shape[0]))
    try:
        batch = invert_batch(tiny, [x for x, _, _ in photos], [c for _, c, _ in photos], config)
    finally:
        handle.remove()
    assert sizes.count(2) > config.num_steps * 2  # the pivot and the conditional branch, and the trials too
    for (x, caption, _), got in zip(photos, batch):
        alone = invert(tiny, x, caption, config)
        assert got.inner_iterations == alone.inner_iterations
        # batched kernels differ in the last bits (measured: 1e-4 to 2e-4 here; Adam's batches ≤ 2e-3)
        errors = relative_error(got.null_embeddings, alone.null_embeddings), relative_error(reconstruct(tiny, got), reconstruct(tiny, alone))
        print(f"\nbatched vs alone: embeddings {errors[0]:.2e}, reconstruction {errors[1]:.2e}")
        assert errors[0] < 2e-3 and errors[1] < 1e-3
