"""Our DDIM step math against diffusers' DDIMScheduler and DDIMInverseScheduler (parity to 1e-5)."""

import pytest
import torch
from diffusers import DDIMInverseScheduler, DDIMScheduler

from nulltext.bundled.train import make_scheduler
from nulltext.core.schedule import make_schedule
from nulltext.core.ddim import ddim_inverse_step, ddim_step


def _config(prediction_type, spacing):
    s = make_scheduler()
    s.register_to_config(prediction_type=prediction_type, timestep_spacing=spacing)
    return dict(s.config)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_sampling_step_matches_diffusers(prediction_type, spacing):
    config = _config(prediction_type, spacing)
    ours = make_schedule(config, 50)
    ref = DDIMScheduler.from_config(config)
    ref.set_timesteps(50)
    assert ref.timesteps.flip(0).tolist() == ours.timesteps.tolist()
    g = torch.Generator().manual_seed(0)
    for k, t in enumerate(ref.timesteps):
        x, out = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
        expected = ref.step(out, t, x).prev_sample
        got = ddim_step(out, x, ours.num_steps - k, ours)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_inverse_step_matches_diffusers(prediction_type, spacing):
    config = _config(prediction_type, spacing)
    ours = make_schedule(config, 50)
    ref = DDIMInverseScheduler.from_config(config)
    ref.set_timesteps(50)
    assert ref.timesteps.tolist() == ours.timesteps.tolist()
    g = torch.Generator().manual_seed(1)
    for i, t in enumerate(ref.timesteps, start=1):
        x, out = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
        expected = ref.step(out, t, x).prev_sample
        got = ddim_inverse_step(out, x, i, ours)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_inverse_undoes_step_for_a_fixed_epsilon():
    """With ε held fixed, an inverse step exactly undoes a sampling step, at every level."""
    s = make_schedule(_config("epsilon", "leading"), 20)
    g = torch.Generator().manual_seed(2)
    x, eps = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 4, 8, 8, generator=g)
    for i in range(1, 21):
        back = ddim_inverse_step(eps, ddim_step(eps, x, i, s), i, s)
        torch.testing.assert_close(back, x, atol=1e-5, rtol=1e-5)
    assert s.alphas[0] > s.alphas[1] > s.alphas[-1]


def test_sampling_reports_each_step_in_the_one_progress_protocol():
    """`sample` tells its progress callback a StepReport per step (steps done, total, τ), as inversion,
    studies and benchmarks do; the correction hook is separate and sees the same steps."""
    from nulltext.core.ddim import sample
    from nulltext.progress import StepReport

    s = make_schedule(_config("epsilon", "leading"), 7)
    reports, corrected = [], []
    sample(lambda z, i: torch.zeros_like(z), torch.ones(1, 4, 2, 2), s,
                correct=lambda i, z: corrected.append(i), progress=reports.append)
    assert all(isinstance(r, StepReport) for r in reports) and [r.total for r in reports] == [7] * 7
    assert [r.step for r in reports] == list(range(1, 8)) and corrected == list(range(7, 0, -1))
    assert [r.timestep for r in reports] == s.timesteps.flip(0).tolist()  # τ_T first


@pytest.mark.parametrize("settings, message", [
    (dict(beta_schedule="no_such_schedule"), "no_such_schedule"),  # diffusers: NotImplementedError
    (dict(beta_schedule="scaled_linear", beta_start=-1.0, beta_end=-0.5), "linspace"),  # torch: RuntimeError
])
def test_a_scheduler_config_diffusers_refuses_is_one_line(settings, message):
    """What diffusers and torch raise on a config they cannot build (an unknown beta schedule, betas whose
    square root is complex) becomes a one-line ScheduleError, not a traceback."""
    from nulltext.core.schedule import ScheduleError

    config = dict(make_scheduler().config, **settings)
    with pytest.raises(ScheduleError, match=f"refuses the scheduler config: .*{message}") as e:
        make_schedule(config, 10)
    assert "\n" not in str(e.value)
