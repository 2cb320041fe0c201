"""Inversion benchmark: wall time, Adam iterations, UNet passes, peak memory and PSNR for N photos.

    python benchmarks/inversion_benchmark.py [--images 5] [--model bundled]

Speed is reported as ratios measured within this one run, so they hold across machines:
- nulltext's null-text inversion vs. a reference loop written the way the research notebook does it
  (conditional branch recomputed at every inner iteration, one extra full guided pass per step);
- null-text inversion vs. the DDIM inversion alone (the pivot).
"""

from __future__ import annotations

import argparse
import resource
import time

import torch
import torch.nn.functional as F

from nulltext.bundled import data
from nulltext.ddim import ddim_step, guided, make_schedule
from nulltext.editing import reconstruct
from nulltext.images import to_pil, to_tensor
from nulltext.inversion import InversionConfig, ddim_invert, invert
from nulltext.metrics import psnr
from nulltext.model import load_model


def notebook_style_null_text(model, pivot, cond, uncond, schedule, config):
    """Reference: the same optimisation as the paper's notebook loop, doing the work it does."""
    T, w = schedule.num_steps, config.guidance_scale
    phi, z_bar, passes = uncond.float().clone(), pivot[-1:], 0
    for k, t in enumerate(range(T, 0, -1)):
        tau = schedule.timestep(t)
        phi = phi.detach().requires_grad_(True)
        opt = torch.optim.Adam([phi], lr=config.learning_rate_at(k))
        for _ in range(config.inner_steps):
            with torch.no_grad():
                out_c = model.predict(z_bar, tau, cond)
            out_u = model.predict(z_bar, tau, phi)
            passes += 2
            loss = F.mse_loss(ddim_step(guided(out_u, out_c, w), z_bar, t, schedule), pivot[t - 1 : t])
            opt.zero_grad()
            loss.backward()
            opt.step()
            if loss.item() < config.threshold_at(k):
                break
        with torch.no_grad():
            out = model.predict(torch.cat([z_bar, z_bar]), tau, torch.cat([phi, cond]))
            passes += 2
            z_bar = ddim_step(guided(*out.chunk(2), w), z_bar, t, schedule)
    return passes


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
    config = InversionConfig()
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
        t0 = time.perf_counter()
        ref_passes = notebook_style_null_text(model, pivot, cond, uncond, schedule, config)
        t_ref = time.perf_counter() - t0 + t_pivot
        rec = to_pil(reconstruct(model, inv))[0]
        bound = to_pil(model.decode_latents(model.encode_image(x)))[0]
        rows.append({
            "image": index, "time": inv.wall_time, "iters": sum(inv.inner_iterations),
            "passes": ours_passes, "ref_passes": ref_passes, "speedup": t_ref / inv.wall_time,
            "vs_ddim": inv.wall_time / t_pivot, "psnr": psnr(rec, image), "bound": psnr(bound, image),
            "rss_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024,
        })
    print(f"model {model.source} on {model.device} ({model.dtype}), {config.num_steps} steps, w = {config.guidance_scale}")
    print("| image | inversion s | Adam iters | UNet samples (ours / notebook loop) | speed-up vs notebook loop "
          "| × DDIM inversion time | PSNR dB | VAE bound dB | peak RSS growth MB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['image']} | {r['time']:.1f} | {r['iters']} | {r['passes']} / {r['ref_passes']} | {r['speedup']:.2f}× "
              f"| {r['vs_ddim']:.1f}× | {r['psnr']:.2f} | {r['bound']:.2f} | {r['rss_mb']:.0f} |")
    mean = lambda k: sum(r[k] for r in rows) / len(rows)  # noqa: E731
    print(f"| mean | {mean('time'):.1f} | {mean('iters'):.0f} | {mean('passes'):.0f} / {mean('ref_passes'):.0f} "
          f"| {mean('speedup'):.2f}× | {mean('vs_ddim'):.1f}× | {mean('psnr'):.2f} | {mean('bound'):.2f} | |")


if __name__ == "__main__":
    main()
