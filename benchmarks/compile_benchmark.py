"""torch.compile benchmark: does compiling the UNet pay for null-text inversion? (issue 23, item 2)

    python benchmarks/compile_benchmark.py [--model bundled] [--device cpu] [--threads 1] [--repeats 20] [--cold]

One null-text inner step as the secant optimiser takes it — an unconditional pass with a gradient to ∅_t
and a conditional pass without — timed eagerly and after `torch.compile` (inductor), and the compile
time (first two steps): with inductor's on-disk cache as it is (a warm cache: the same model compiled
before), or `--cold`, a fresh empty cache (a user's first run). Printed: a Markdown table and the rule it gives: compiling pays only when a run
takes more UNet steps than compile time ÷ the saving per step. Ratios are only meaningful within one
run on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import time

import torch

from nulltext.model import load_model


def _step(unet, z: torch.Tensor, t: torch.Tensor, null: torch.Tensor, cond: torch.Tensor, dtype) -> None:
    out = unet(z, t, encoder_hidden_states=null.to(dtype)).sample
    out.float().square().mean().backward()
    with torch.no_grad():
        unet(z, t, encoder_hidden_states=cond).sample


def run(model_source: str, device: str, repeats: int) -> dict[str, float]:
    """{"eager", "compiled", "compile"}: seconds per inner step eagerly and compiled, and the compile time."""
    model = load_model(model_source, device=device)
    w, h = model.default_size
    f = model.vae_scale_factor
    z = torch.randn(1, model.latent_channels, h // f, w // f, device=model.device, dtype=model.dtype)
    t = torch.tensor(500, device=model.device)
    cond = model.text_conditioning(["a red circle on a blue background"]).tokens
    null = model.null_conditioning().tokens.float().clone().requires_grad_(True)

    def per_step(unet) -> float:
        for _ in range(3):
            _step(unet, z, t, null, cond, model.dtype)
        start = time.perf_counter()
        for _ in range(repeats):
            _step(unet, z, t, null, cond, model.dtype)
        return (time.perf_counter() - start) / repeats

    eager = per_step(model.unet)
    start = time.perf_counter()
    compiled = torch.compile(model.unet)
    for _ in range(2):
        _step(compiled, z, t, null, cond, model.dtype)
    compile_seconds = time.perf_counter() - start
    return {"eager": eager, "compiled": per_step(compiled), "compile": compile_seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="bundled")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--cold", action="store_true", help="compile into a fresh, empty inductor cache")
    args = parser.parse_args()
    if args.cold:
        import os
        import tempfile

        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor-")
    torch.set_num_threads(args.threads)
    r = run(args.model, args.device, args.repeats)
    saving = r["eager"] - r["compiled"]
    print("| eager s / inner step | compiled s / inner step | ratio | compile s | steps to break even |")
    print("|---|---|---|---|---|")
    even = f"{r['compile'] / saving:,.0f}" if saving > 0 else "never"
    print(f"| {r['eager']:.4f} | {r['compiled']:.4f} | {r['compiled'] / r['eager']:.2f} | {r['compile']:.0f} | {even} |")


if __name__ == "__main__":
    main()
