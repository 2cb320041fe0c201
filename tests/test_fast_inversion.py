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
from nulltext.core.ddim import ddim_step, guided, make_schedule
from nulltext.io.images import to_tensor
from nulltext.inversion import InversionConfig, SecantState, ddim_invert, invert, secant_descent
from nulltext.settings import SettingsError


def _photo(model, index=0):
    image, caption = data.sample("test", index, model.default_size[0])
    return to_tensor(image), caption, image


def _linear_problem(seed=0):
    """z(∅) = A·vec(tokens, pooled) + b: a least-squares problem whose exact line minimiser is known."""
    g = torch.Generator().manual_seed(seed)
    tokens, pooled = torch.randn(1, 3, 4, generator=g), torch.randn(1, 5, generator=g)
    n = tokens.numel() + pooled.numel()
    A, b, target = torch.randn(16, n, generator=g) / n**0.5, torch.randn(16, generator=g), torch.randn(16, generator=g)

    def step_from(null: TextConditioning, grad: bool) -> torch.Tensor:
        with torch.set_grad_enabled(grad):
            return A @ torch.cat([null.tokens.flatten(), null.pooled.flatten()]) + b

    return TextConditioning(tokens, pooled).requires_grad_(True), step_from, target, A


def test_secant_length_is_the_exact_line_minimiser_on_a_linear_problem():
    """On z linear in ∅ the secant α* = α⟨−r, d⟩/‖d‖² is argmin_α ‖r − α J p‖², both parts of ∅ (SDXL's too)."""
    null, step_from, target, A = _linear_problem()
    config = InversionConfig(inner_steps=1, stall=0.0)
    z = step_from(null, True)
    loss = F.mse_loss(z, target)
    grads = torch.autograd.grad(loss, null.tensors())
    direction = torch.cat([(g / g.abs()).flatten() for g in grads])  # first step: v = g², so p = sign(g)
    Jp, r = A @ direction, (z - target).detach()
    exact = float((r * Jp).sum() / (Jp * Jp).sum())  # argmin_α ‖r − α J p‖²
    state = SecantState(step=0.5 * exact)  # a trial at half the best length: its secant finds the best one
    secant_descent(step_from, null, target, 0.0, config, state, 1.0, "test")
    assert state.step == pytest.approx(exact, rel=1e-4)
    # and a second run from the same point, starting at α*, lands on the line minimum
    state2 = SecantState(step=exact)
    null2, _, loss2, used = secant_descent(step_from, _linear_problem()[0], target, 0.0, config, state2, 1.0, "test")
    best = F.mse_loss((r - exact * Jp) + target, target).item()
    assert used == 1 and loss2.item() == pytest.approx(best, rel=1e-5)
    assert null2.pooled is not None and not torch.equal(null2.pooled, _linear_problem()[0].pooled)


def test_secant_descent_keeps_lowering_the_loss_until_the_threshold():
    null, step_from, target, _ = _linear_problem(1)
    start = F.mse_loss(step_from(null, False), target).item()
    config = InversionConfig(inner_steps=50, stall=0.0)
    _, _, loss, used = secant_descent(step_from, null, target, 0.1 * start, config, SecantState(), 1.0, "test")
    assert loss.item() < 0.1 * start and used < 50


def test_paper_setting_is_algorithm_1_step_for_step(tiny):
    """The default optimiser against Algorithm 1 written out here: same ∅_t, losses and Adam updates per step."""
    image, caption, _ = _photo(tiny)
    config = InversionConfig(num_steps=5, inner_steps=4, early_stop=1e-4, early_stop_growth=1e-4)
    ours = invert(tiny, image, caption, config)
    assert config.optimizer == "adam" == InversionConfig().optimizer
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
    assert dataclasses.replace(inv.config, optimizer="adam") == InversionConfig(num_steps=4)


def test_batch_runs_take_the_fast_preset_photo_by_photo(tiny):
    """invert_batch with --fast settings gives each photo exactly what invert gives it (no joint Adam)."""
    from nulltext.inversion.batched import invert_batch

    photos = [_photo(tiny, i) for i in (0, 2)]
    config = InversionConfig.fast(num_steps=4)
    batch = invert_batch(tiny, [x for x, _, _ in photos], [c for _, c, _ in photos], config)
    for (x, caption, _), got in zip(photos, batch):
        alone = invert(tiny, x, caption, config)
        assert torch.equal(got.null_embeddings, alone.null_embeddings) and got.inner_iterations == alone.inner_iterations
