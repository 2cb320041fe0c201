"""Faster null-text inversion: every candidate against the paper's Adam, timed in one run.

    python benchmarks/fast_inversion_benchmark.py [--images 10] [--edit-cases 10] [--edit-baseline docs/bench/edits.json]
                                                  [-o docs/fast_inversion]

For each of N test photos of the bundled model, interleaved (one photo, every candidate, next photo):
wall time, UNet forward samples and backward passes, Adam iterations or secant trials, reconstruction
PSNR and the VAE-only bound. Times are ratios to the paper's Adam loop on the same
photo in the same run. Then the edit benchmark's first cases (`--edit-cases` per edit type, null-text only,
ψ("") on the edited captions, with and without blend) for the secant default and the paper's Adam — Adam's
edits taken from a committed `nulltext bench edits` run (`--edit-baseline`) or recomputed.
Writes fast_inversion.md, fast_inversion.json and fast_inversion.png (PSNR against time: the Pareto front).

Candidates (the levers measured):
- null-text, paper Adam (baseline);
- Adam with a smaller budget (≤ 3 updates per step): the cheap lever, for comparison;
- `secant_descent`: the default (≤ 4 trials per step, stall ½, ∅_1 past the threshold), ≤ 3 and ≤ 10 trials
  around it, and the default until 2026-12-04 (≤ 5 trials, ∅_1 stopped at the threshold);
- the existing one-pass methods: ddim, negative-prompt, direct.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from nulltext.evaluation import edit_bench
from nulltext.bundled import data
from nulltext.editing import reconstruct
from nulltext.io.images import to_pil, to_tensor
from nulltext.inversion import InversionConfig, invert
from nulltext.io.outputs import publish
from nulltext.evaluation.metrics import psnr
from nulltext.model import load_model

CANDIDATES = {  # label → settings
    "null-text, Adam (paper)": InversionConfig.paper(),
    "null-text, Adam ≤ 3 updates/step": InversionConfig.paper(inner_steps=3),
    "null-text, secant ≤ 3 trials/step": InversionConfig(trials=3),
    "null-text, secant (default: ≤ 4 trials, stall ½)": InversionConfig(),
    "null-text, secant ≤ 5 trials, ∅_1 at the threshold": InversionConfig(trials=5, refine_last_step=False),
    "null-text, secant ≤ 10 trials/step": InversionConfig(trials=10),
    "ddim": InversionConfig(method="ddim"),
    "negative-prompt": InversionConfig(method="negative-prompt"),
    "direct": InversionConfig(method="direct"),
}
BASELINE = "null-text, Adam (paper)"


class UNetCounter:
    """Forward samples and backward passes through the UNet, by forward hooks (no patching)."""

    def __init__(self, unet):
        self.forward = self.backward = 0
        self.handle = unet.register_forward_hook(self._seen)

    def _seen(self, module, args, output):
        sample = output[0] if isinstance(output, tuple) else output.sample
        self.forward += sample.shape[0]
        if sample.requires_grad:
            sample.register_hook(self._backward)

    def _backward(self, grad):
        self.backward += 1

    def close(self):
        self.handle.remove()


def measure_inversions(model, photos: list[int], progress: bool) -> list[dict]:
    rows = []
    for index in photos:
        image, caption = data.sample("test", index, model.default_size[0])
        x = to_tensor(image)
        bound = psnr(to_pil(model.decode_latents(model.encode_image(x)))[0], image)
        for label, config in CANDIDATES.items():
            counter = UNetCounter(model.unet)
            try:
                t0 = time.perf_counter()
                inv = invert(model, x, caption, replace(config, keep_pivot=False))
                seconds = time.perf_counter() - t0
            finally:
                counter.close()
            rec = to_pil(reconstruct(model, inv))[0]
            rows.append({"photo": index, "candidate": label, "seconds": seconds, "forward": counter.forward,
                         "backward": counter.backward, "updates": sum(inv.inner_iterations),
                         "psnr": psnr(rec, image), "bound": bound})
            if progress:
                r = rows[-1]
                print(f"photo {index} {label}: {seconds:.1f} s, {r['forward']} fwd, {r['backward']} bwd, "
                      f"PSNR {r['psnr']:.2f} dB", flush=True)
    base = {r["photo"]: r for r in rows if r["candidate"] == BASELINE}
    for r in rows:
        r["time_ratio"] = r["seconds"] / base[r["photo"]]["seconds"]
        r["psnr_change"] = r["psnr"] - base[r["photo"]]["psnr"]
    return rows


def summarise(rows: list[dict]) -> list[dict]:
    out = []
    for label in CANDIDATES:
        mine = [r for r in rows if r["candidate"] == label]
        mean = lambda k: sum(r[k] for r in mine) / len(mine)  # noqa: E731
        out.append({"candidate": label, "time_ratio": mean("time_ratio"), "seconds": mean("seconds"),
                    "forward": mean("forward"), "backward": mean("backward"), "updates": mean("updates"),
                    "psnr": mean("psnr"), "psnr_change": mean("psnr_change"),
                    "worst_psnr_change": min(r["psnr_change"] for r in mine), "bound": mean("bound")})
    return out


FAST = "null-text, secant (default: ≤ 4 trials, stall ½)"


def measure_edits(model, per_type: int, baseline: str | None, progress: bool) -> dict:
    """Edit accuracy and background PSNR per (inversion, edit type, blend) on the edit benchmark's first cases.

    `baseline`: the edits.json of a `nulltext bench edits` run (seed 0), whose "null-text" records for the
    same cases stand in for the paper-Adam edits instead of recomputing them.
    """
    cases = edit_bench.make_cases(per_type, 0, model.default_size[0])
    records = {}
    for label in ([FAST] if baseline else [BASELINE, FAST]):
        config = edit_bench.BenchConfig(methods=("null-text",), target_nulls=("empty",), inversion=CANDIDATES[label])
        report = (lambda s: print(f"edit {s.step}/{s.total} {s.label}", flush=True)) if progress else None
        result = edit_bench.run_edit_bench(model, cases, config, report)
        records[label] = [asdict(r) for r in result.records]
    if baseline:
        ids = {c.case_id for c in cases}
        records[BASELINE] = [r for r in json.loads(Path(baseline).read_text())["records"]
                             if r["method"] == "null-text" and r["case_id"] in ids]
    table = []
    for label in (BASELINE, FAST):
        groups: dict[tuple, list] = {}
        for r in records[label]:
            for edit_type in (r["edit_type"], "all"):
                groups.setdefault((edit_type, r["blend"]), []).append(r["scores"])
        for (edit_type, blend), scores in groups.items():
            table.append({"inversion": label, "edit_type": edit_type, "blend": blend, "n": len(scores),
                          "correct": sum(x["correct"] for x in scores) / len(scores),
                          "bg_psnr": sum(x["bg_psnr"] for x in scores) / len(scores)})
    return {"table": table, "baseline_from": baseline or "this run"}


def report(summary, edits, rows, n_photos, n_cases, seconds) -> str:
    lines = [f"Bundled model, CPU, 50 steps, w = 7.5; {n_photos} test photos, every candidate on each photo in turn, "
             f"one run ({seconds / 60:.0f} min). Time is the ratio to the paper's Adam loop on the same photo.", "",
             "| candidate | time ÷ paper Adam | UNet forward samples | UNet backward passes | updates/trials | "
             "rec. PSNR dB | change vs Adam dB (mean / worst photo) | VAE bound dB |",
             "|---|---|---|---|---|---|---|---|"]
    for s in summary:
        lines.append(f"| {s['candidate']} | {s['time_ratio']:.2f} | {s['forward']:.0f} | {s['backward']:.0f} | "
                     f"{s['updates']:.0f} | {s['psnr']:.2f} | {s['psnr_change']:+.2f} / {s['worst_psnr_change']:+.2f} "
                     f"| {s['bound']:.2f} |")
    if edits:
        lines += ["", f"Edit benchmark, the first {n_cases} cases of each edit type (seed 0), null-text, ψ(\"\") on the "
                  f"edited captions; paper-Adam edits from {edits['baseline_from']}:", "",
                  "| edit type | blend | cases | accuracy, paper Adam | accuracy, secant | bg PSNR dB, paper Adam | bg PSNR dB, secant |",
                  "|---|---|---|---|---|---|---|"]
        rows = {(r["inversion"], r["edit_type"], r["blend"]): r for r in edits["table"]}
        types = list(dict.fromkeys(t for _, t, _ in rows if t != "all")) + ["all"]
        for edit_type, blend in ((t, b) for t in types for b in (False, True)):
            if (BASELINE, edit_type, blend) not in rows or (FAST, edit_type, blend) not in rows:
                continue
            r, f = rows[(BASELINE, edit_type, blend)], rows[(FAST, edit_type, blend)]
            lines.append(f"| {edit_type} | {'yes' if blend else 'no'} | {r['n']} | {r['correct']:.0%} | {f['correct']:.0%} "
                         f"| {r['bg_psnr']:.2f} | {f['bg_psnr']:.2f} |")
    return "\n".join(lines) + "\n"


def plot(summary, rows, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for s in summary:
        mine = [r for r in rows if r["candidate"] == s["candidate"]]
        dots = ax.scatter([r["time_ratio"] for r in mine], [r["psnr"] for r in mine], s=10, alpha=0.35)
        ax.scatter([s["time_ratio"]], [s["psnr"]], s=70, color=dots.get_facecolor()[0], edgecolor="black",
                   label=f"{s['candidate']} ({s['time_ratio']:.2f}×, {s['psnr']:.2f} dB)")
    ax.axhline(summary[0]["bound"], color="grey", linestyle=":", label="VAE bound (mean)")
    ax.axvline(0.25, color="red", linestyle="--", linewidth=0.8, label="target: 0.25×")
    ax.set_xlabel("time ÷ paper Adam null-text (same photo, same run)")
    ax.set_ylabel("reconstruction PSNR dB")
    ax.set_title("Null-text inversion: reconstruction against time (bundled model)")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=10)
    p.add_argument("--edit-cases", type=int, default=10, help="edit-benchmark cases per edit type (0: skip)")
    p.add_argument("--edit-baseline", metavar="EDITS_JSON",
                   help="edits.json of `nulltext bench edits` (seed 0): take the paper-Adam edits from it")
    p.add_argument("--model", default=None)
    p.add_argument("-o", "--output", default="docs/fast_inversion")
    p.add_argument("--quiet", action="store_true")
    a = p.parse_args(argv)
    torch.manual_seed(0)
    model = load_model(a.model)
    start = time.perf_counter()
    rows = measure_inversions(model, list(range(a.images)), not a.quiet)
    summary = summarise(rows)
    edits = measure_edits(model, a.edit_cases, a.edit_baseline, not a.quiet) if a.edit_cases else {}
    seconds = time.perf_counter() - start
    out = Path(a.output)
    out.mkdir(parents=True, exist_ok=True)
    text = report(summary, edits, rows, a.images, a.edit_cases, seconds)
    publish(out / "fast_inversion.md", lambda tmp: Path(tmp).write_text(text), force=True)
    payload = {"summary": summary, "edits": edits, "rows": rows, "seconds": seconds}
    publish(out / "fast_inversion.json", lambda tmp: Path(tmp).write_text(json.dumps(payload, indent=1)), force=True)
    publish(out / "fast_inversion.png", lambda tmp: plot(summary, rows, Path(tmp)), force=True)
    print(text)


if __name__ == "__main__":
    main()
