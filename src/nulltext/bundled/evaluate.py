"""Score a model on the synthetic test prompts, with the judge (`nulltext.bundled.judge`).

    python -m nulltext.bundled.evaluate            # scores the bundled model, writes MODEL.md figures
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from nulltext.bundled import data
from nulltext.bundled.judge import Judgement, judge


@dataclass
class Score:
    background: float
    colour: float
    shape: float
    all_three: float
    n: int

    def line(self) -> str:
        return (f"background {self.background:.1%}, shape colour {self.colour:.1%}, shape class {self.shape:.1%}, "
                f"all three {self.all_three:.1%} (n = {self.n})")


def score(judgements: list[Judgement], scenes: list[data.Scene]) -> Score:
    m = [j.matches(s) for j, s in zip(judgements, scenes)]
    mean = lambda key: float(np.mean([x[key] for x in m]))  # noqa: E731
    return Score(mean("background"), mean("colour"), mean("shape"), float(np.mean([all(x.values()) for x in m])), len(m))


@torch.no_grad()
def generate(model, prompts: list[str], seed: int, guidance_scale: float = 7.5, num_steps: int = 50,
             batch_size: int = 64) -> list[Image.Image]:
    """Text-to-image with our DDIM sampler: one image per prompt, seeded."""
    from nulltext.core.schedule import make_schedule
    from nulltext.core.ddim import sample
    from nulltext.core.sampling import guided_ddim
    from nulltext.io.images import to_pil

    schedule = make_schedule(model.scheduler_config, num_steps)
    w, h = model.default_size
    f = model.vae_scale_factor
    g = torch.Generator().manual_seed(seed)
    z_T = torch.randn(len(prompts), model.latent_channels, h // f, w // f, generator=g)
    null = model.encode_text([""])
    images = []
    for i in range(0, len(prompts), batch_size):
        cond = model.encode_text(prompts[i : i + batch_size])
        if guidance_scale == 1.0:  # u + 1·(c − u) = c: the conditional branch alone, half the UNet work
            with torch.no_grad():
                z0 = sample(lambda z, k: model.predict(z, schedule.timestep(k), cond), z_T[i : i + batch_size].to(model.device),
                            schedule)
        else:
            nulls = null.expand(num_steps, -1, -1)
            z0 = guided_ddim(model, z_T[i : i + batch_size], cond, nulls, schedule, guidance_scale)
        images += to_pil(model.decode_latents(z0).cpu())
    return images


def test_scenes(n: int, resolution: int) -> list[data.Scene]:
    return [data.scene("test", i, resolution) for i in range(n)]


def evaluate_model(model, n: int = 240, seed: int = 0, guidance_scale: float = 7.5,
                   num_steps: int = 50) -> tuple[Score, list[Image.Image]]:
    """Generate one image per test caption (DDIM, `num_steps` steps) and judge it."""
    scenes = test_scenes(n, model.default_size[0])
    images = generate(model, [s.caption() for s in scenes], seed, guidance_scale, num_steps)
    return score([judge(im) for im in images], scenes), images


def vae_psnr(model, n: int = 64) -> float:
    """Mean PSNR of VAE reconstructions of test images."""
    from nulltext.evaluation.metrics import vae_bound

    values = [vae_bound(model, data.sample("test", i, model.default_size[0])[0]) for i in range(n)]
    return float(np.mean(values))


def main(argv=None) -> None:
    from nulltext.io.images import make_grid, save_png
    from nulltext.model import load_model

    p = argparse.ArgumentParser(description="Score a model on the synthetic test prompts.")
    p.add_argument("--model", default=None)
    p.add_argument("-n", type=int, default=240)
    p.add_argument("--samples", default=str(Path(__file__).parent / "samples.png"))
    a = p.parse_args(argv)
    model = load_model(a.model, device="cpu")
    s75, images = evaluate_model(model, a.n, guidance_scale=7.5)
    s1, _ = evaluate_model(model, a.n, guidance_scale=1.0)
    print(f"w = 7.5: {s75.line()}")
    print(f"w = 1:   {s1.line()}")
    print(f"VAE reconstruction PSNR on 64 test images: {vae_psnr(model):.2f} dB")
    scenes = test_scenes(16, model.default_size[0])
    save_png(make_grid(images[:16], [s.caption().removeprefix("a ") for s in scenes], columns=8, min_tile=128),
             a.samples, force=True)
    print(f"wrote {a.samples}")


if __name__ == "__main__":
    main()
