"""Inversion benchmark: wall time, Adam iterations, UNet passes, peak memory and PSNR for N photos.

    python benchmarks/inversion_benchmark.py [--images 5] [--model bundled]

Speed is reported as ratios measured within this one run, so they hold across machines:
- nulltext's null-text inversion vs. a faithful port of the authors' notebook loop
  (`null_optimization` in null_text_w_ptp.ipynb: the conditional branch once per step, Adam updates
  of ∅_t with the early-stop test after each update, then one guided pass of batch 2 for z̄_{t−1}),
  run twice: with the UNet frozen, as nulltext runs it, and as published, where the UNet's weights
  still require gradients, so every backward pass also computes the weight gradients;
- null-text inversion vs. the DDIM inversion alone (the pivot).
"""

from __future__ import annotations

import argparse
import resource
import time

import torch
import torch.nn.functional as F

from nulltext.bundled import data
from nulltext.core.schedule import make_schedule
from nulltext.core.ddim import ddim_step, guided
from nulltext.editing import reconstruct
from nulltext.io.images import to_pil, to_tensor
from nulltext.inversion import InversionConfig, ddim_invert, invert
from nulltext.evaluation.metrics import psnr
from nulltext.model import load_model


def authors_null_text(model, pivot, cond, uncond, schedule, config, frozen: bool, nulls: list | None = None) -> int:
    """The authors' notebook loop, ported step for step; returns its Adam iterations (and appends each
    step's ∅_t to `nulls`, T first, when given).

    `frozen=False` is the notebook as published (the pipeline's UNet keeps requires_grad=True).
    """
    T, w = schedule.num_steps, config.guidance_scale
    model.unet.requires_grad_(not frozen)
    try:
        null, z_cur, iterations = uncond.float().clone(), pivot[-1:], 0
        for k, t in enumerate(range(T, 0, -1)):
            null = null.clone().detach().requires_grad_(True)
            optimiser = torch.optim.Adam([null], lr=config.learning_rate * (1.0 - k / 100.0))
            z_prev, tau = pivot[t - 1 : t], schedule.timestep(t)
            with torch.no_grad():
                out_cond = model.predict(z_cur, tau, cond)
            for _ in range(config.inner_steps):
                out = guided(model.predict(z_cur, tau, null), out_cond, w)
                loss = F.mse_loss(ddim_step(out, z_cur, t, schedule), z_prev)
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
                iterations += 1
                if loss.item() < config.early_stop + k * config.early_stop_growth:
                    break
            if nulls is not None:
                nulls.append(null.detach().clone())
            with torch.no_grad():
                out = model.predict(torch.cat([z_cur, z_cur]), tau, torch.cat([null, cond]))
                z_cur = ddim_step(guided(*out.chunk(2), w), z_cur, t, schedule)
    finally:
        model.unet.requires_grad_(False)
        model.unet.zero_grad(set_to_none=True)
    return iterations


class PassCounter:
    def __init__(self, unet):
        self.n, self.unet, self.original = 0, unet, unet.forward

    def __enter__(self):
        def counting(*a, **k):
            self.n += a[0].shape[0] if a else k["sample"].shape[0]
            return self.original(*a, **k)

        self.unet.forward = counting
        return self

    def __exit__(self, *exc):
        del self.unet.forward


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=5)
    p.add_argument("--model", default=None)
    a = p.parse_args(argv)
    model = load_model(a.model)
    config = InversionConfig.paper()  # the same algorithm as the authors' loop; the default is in end_to_end_benchmark.py
    rows = []
    for index in range(a.images):
        image, caption = data.sample("test", index, model.default_size[0])
        x = to_tensor(image)
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        with PassCounter(model.unet) as count:
            inv = invert(model, x, caption, config)
        ours_passes = count.n
        t0 = time.perf_counter()
        schedule = make_schedule(model.scheduler_config, config.num_steps)
        cond, uncond = model.encode_text([caption]), model.encode_text([""])
        pivot = ddim_invert(model, model.encode_image(x), cond, schedule)
        t_pivot = time.perf_counter() - t0
        ref = {}
        for frozen in (True, False):
            t0 = time.perf_counter()
            with PassCounter(model.unet) as count:
                iters = authors_null_text(model, pivot, cond, uncond, schedule, config, frozen)
            ref[frozen] = (time.perf_counter() - t0 + t_pivot, count.n, iters)
        rec = to_pil(reconstruct(model, inv))[0]
        bound = to_pil(model.decode_latents(model.encode_image(x)))[0]
        rows.append({
            "image": index, "time": inv.wall_time, "iters": sum(inv.inner_iterations),
            "passes": ours_passes, "ref_passes": ref[True][1], "ref_iters": ref[True][2],
            "speedup": ref[True][0] / inv.wall_time, "speedup_published": ref[False][0] / inv.wall_time,
            "vs_ddim": inv.wall_time / t_pivot, "psnr": psnr(rec, image), "bound": psnr(bound, image),
            "rss_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024,
        })
    print(f"model {model.source} on {model.device} ({model.dtype}), {config.num_steps} steps, w = {config.guidance_scale}")
    print("| image | inversion s | Adam iters (ours / authors') | UNet samples (ours / authors') "
          "| authors' loop time ÷ ours, UNet frozen | … as published (UNet weight gradients) "
          "| × DDIM inversion time | PSNR dB | VAE bound dB | peak RSS growth MB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['image']} | {r['time']:.1f} | {r['iters']} / {r['ref_iters']} | {r['passes']} / {r['ref_passes']} "
              f"| {r['speedup']:.2f} | {r['speedup_published']:.2f} | {r['vs_ddim']:.1f}× | {r['psnr']:.2f} "
              f"| {r['bound']:.2f} | {r['rss_mb']:.0f} |")
    mean = lambda k: sum(r[k] for r in rows) / len(rows)  # noqa: E731
    print(f"| mean | {mean('time'):.1f} | {mean('iters'):.0f} / {mean('ref_iters'):.0f} "
          f"| {mean('passes'):.0f} / {mean('ref_passes'):.0f} | {mean('speedup'):.2f} | {mean('speedup_published'):.2f} "
          f"| {mean('vs_ddim'):.1f}× | {mean('psnr'):.2f} | {mean('bound'):.2f} | |")


if __name__ == "__main__":
    main()
