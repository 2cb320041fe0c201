"""What reading a model's device and dtype costs per UNet pass (issue 23, item 2: per-pass cost).

    python benchmarks/parameter_walk_benchmark.py [--repeats 3] [--steps 25]

diffusers' `ModelMixin.dtype` and `.device` walk every module of the model for offloading and
layer-wise casting hooks; `Model.device` / `Model.dtype` read the denoiser's first parameter instead,
and `Model.predict` reads them on every pass. Printed, as Markdown:
1. one read of each, on SD 1.5's and SDXL's UNet built from their configs on the meta device (no
   weights, no memory): the host time a pass spent before;
2. a null-text inversion of a bundled test photo (the default optimiser, one torch thread) with the
   Model reading diffusers' properties (as before) and its first parameter (now), alternated, best of
   `--repeats` each. Ratios are only meaningful within one run on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import time

import torch

from nulltext.model.compute import Model

# the UNet configs of SD 1.5 and SDXL base (diffusers' own), as far as they set the module tree
UNETS = {
    "SD 1.5": dict(sample_size=64, block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768,
                   attention_head_dim=8, down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                   up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3),
    "SDXL": dict(sample_size=128, block_out_channels=(320, 640, 1280), cross_attention_dim=2048,
                 attention_head_dim=(5, 10, 20), layers_per_block=2, transformer_layers_per_block=(1, 2, 10),
                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), use_linear_projection=True,
                 addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816),
}


def _per_call(f, repeats: int = 50) -> float:
    f()
    start = time.perf_counter()
    for _ in range(repeats):
        f()
    return (time.perf_counter() - start) / repeats


def reads() -> list[str]:
    """Milliseconds per read on the meta-device UNets: diffusers' .dtype, .device, and the first parameter's."""
    from diffusers import UNet2DConditionModel

    lines = ["| UNet | modules | diffusers `.dtype` ms | diffusers `.device` ms | first parameter ms |", "|---|---|---|---|---|"]
    for name, config in UNETS.items():
        with torch.device("meta"):
            unet = UNet2DConditionModel(**config)
        ms = [1e3 * _per_call(f) for f in (lambda: unet.dtype, lambda: unet.device, lambda: next(unet.parameters()).dtype)]
        lines.append(f"| {name} | {sum(1 for _ in unet.modules())} | " + " | ".join(f"{v:.3f}" for v in ms) + " |")
    return lines


def inversions(repeats: int, steps: int) -> list[str]:
    """Seconds for one bundled null-text inversion with diffusers' properties and with the first parameter's."""
    from nulltext.bundled import data
    from nulltext.inversion import InversionConfig, invert
    from nulltext.io.images import to_tensor
    from nulltext.model import load_model

    torch.set_num_threads(1)
    model = load_model(device="cpu")
    image, caption = data.sample("test", 1, model.default_size[0])
    photo, config = to_tensor(image), InversionConfig(num_steps=steps)
    readers = {"diffusers' properties (before)": (property(lambda m: m.unet.device), property(lambda m: m.unet.dtype)),
               "first parameter (now)": (Model.device, Model.dtype)}
    now = readers["first parameter (now)"]
    seconds = {name: [] for name in readers}
    try:
        for _ in range(repeats):
            for name, (device, dtype) in readers.items():
                Model.device, Model.dtype = device, dtype
                start = time.perf_counter()
                invert(model, photo, caption, config)
                seconds[name].append(time.perf_counter() - start)
    finally:
        Model.device, Model.dtype = now
    before = min(seconds["diffusers' properties (before)"])
    lines = [f"| Model reads | s per {steps}-step inversion (best of {repeats}) | × before |", "|---|---|---|"]
    lines += [f"| {name} | {min(v):.2f} | {min(v) / before:.2f} |" for name, v in seconds.items()]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=25)
    args = parser.parse_args()
    print("\n".join(reads()) + "\n")
    print("\n".join(inversions(args.repeats, args.steps)))


if __name__ == "__main__":
    main()
