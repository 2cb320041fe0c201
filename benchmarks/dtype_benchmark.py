"""Precision benchmark: null-text inversion in float32, bfloat16 and float16 — reconstruction PSNR and time.

    python benchmarks/dtype_benchmark.py [--images 3] [--steps 50] [--model bundled] [--device cpu]

For each dtype the model is loaded in that dtype (the VAE in fp32 under fp16, as its config asks),
each photo is inverted with the paper's settings and reconstructed in the same dtype. ∅_t and the
loss are fp32 in every run (nulltext.inversion). Printed: a Markdown table of mean PSNR, the VAE
bound (fp32), the PSNR difference to fp32 and seconds per inversion, per dtype. Times are only
comparable within one run on an otherwise idle machine (half precision on a CPU is emulated in
part and usually slower than fp32; on a GPU it is faster).
"""

from __future__ import annotations

import argparse
import time

from nulltext.bundled import data
from nulltext.editing import reconstruct
from nulltext.io.images import to_pil, to_tensor
from nulltext.inversion import InversionConfig, invert
from nulltext.evaluation.metrics import psnr
from nulltext.model import load_model

DTYPES = ("float32", "bfloat16", "float16")


def run(model_source: str, device: str, images: int, steps: int, size: int | None) -> dict[str, dict[str, float]]:
    """{dtype: {"psnr", "bound", "seconds"}} means over the bundled test photos 0 … images−1."""
    results = {}
    for dtype in DTYPES:
        model = load_model(model_source, device=device, dtype=dtype)
        side = size or model.default_size[0]
        scores, bounds, seconds = [], [], []
        for index in range(images):
            image, caption = data.sample("test", index, side)
            x = to_tensor(image)
            start = time.perf_counter()
            inv = invert(model, x, caption, InversionConfig(num_steps=steps))
            seconds.append(time.perf_counter() - start)
            scores.append(psnr(to_pil(reconstruct(model, inv))[0], image))
            bounds.append(psnr(to_pil(model.decode_latents(model.encode_image(x)))[0], image))
        results[dtype] = {"psnr": sum(scores) / images, "bound": sum(bounds) / images, "seconds": sum(seconds) / images}
        print(f"{dtype}: {results[dtype]['psnr']:.2f} dB, {results[dtype]['seconds']:.1f} s per inversion", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="bundled")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--images", type=int, default=3)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--size", type=int, default=None, help="photo side in pixels (default: the model's)")
    args = parser.parse_args()
    results = run(args.model, args.device, args.images, args.steps, args.size)
    base = results["float32"]["psnr"]
    print(f"\n{args.images} photos, {args.steps} steps, {args.device}, model {args.model}")
    print("| dtype | null-text PSNR dB | VAE bound dB | Δ vs fp32 dB | s per inversion |")
    print("|---|---|---|---|---|")
    for dtype, r in results.items():
        print(f"| {dtype} | {r['psnr']:.2f} | {r['bound']:.2f} | {r['psnr'] - base:+.2f} | {r['seconds']:.1f} |")


if __name__ == "__main__":
    main()
