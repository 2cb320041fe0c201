"""Batched null-text inversion: photos per minute and peak memory at K = 1, 2, 4, 8, in one run.

    python benchmarks/batch_benchmark.py [--images 8] [--ks 1,2,4,8] [--steps 50] [--model bundled] [--device cpu]

The same N test photos of the bundled data set are inverted with `invert_batch` in batches of K, for
each K, each K in a fresh process (so that its peak memory is its own): photos per minute, the speed-up
over K = 1 measured in this same run (ratios hold across machines; absolute rates do not), the inner
iterations (equal for every K up to early-stop ties), and the peak memory beyond the loaded model
(CPU: the process's peak resident set; CUDA: torch's peak allocation). Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import time


def _measure(args: dict) -> dict:
    """One K, in its own process: the throughput and the peak memory of inverting N photos in batches of K."""
    import torch

    from nulltext.inversion.batched import invert_batch
    from nulltext.bundled import data
    from nulltext.io.images import to_tensor
    from nulltext.inversion import InversionConfig
    from nulltext.model import load_model

    torch.set_num_threads(args["threads"])
    model = load_model(args["model"], device=args["device"])
    photos = [data.sample("test", i, model.default_size[0]) for i in range(args["images"])]
    config = InversionConfig(num_steps=args["steps"])
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB, after loading the model
    if model.device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    k, iterations = args["k"], 0
    start = time.perf_counter()
    for i in range(0, len(photos), k):
        chunk = photos[i : i + k]
        for inv in invert_batch(model, [to_tensor(im) for im, _ in chunk], [c for _, c in chunk], config):
            iterations += sum(inv.inner_iterations)
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = (torch.cuda.max_memory_allocated() / 2**20 if model.device.type == "cuda"
            else (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_rss) / 1024)
    return {"k": k, "seconds": seconds, "photos_per_minute": 60 * len(photos) / seconds, "iterations": iterations,
            "peak_mib": peak}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--ks", default="1,2,4,8")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--model", default="bundled")
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=int, default=1, help="torch threads per process (default 1)")
    p.add_argument("--json", help="also write the rows to this file")
    args = p.parse_args()
    ks = [int(k) for k in args.ks.split(",")]
    context = multiprocessing.get_context("spawn")
    rows = []
    for k in ks:
        with context.Pool(1) as pool:
            rows.append(pool.apply(_measure, ({"k": k, "images": args.images, "steps": args.steps, "model": args.model,
                                               "device": args.device, "threads": args.threads},)))
    base = rows[0]["photos_per_minute"]
    print(f"{args.images} photos, {args.steps} DDIM steps, model {args.model}")
    print("| K | photos/min | speed-up vs K=1 | inner iterations (secant trials) | peak memory beyond the model |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['k']} | {r['photos_per_minute']:.2f} | {r['photos_per_minute'] / base:.2f}× | {r['iterations']} | "
              f"{r['peak_mib']:.0f} MiB |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
