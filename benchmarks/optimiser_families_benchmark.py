"""The default (secant) null-text optimiser against the paper's Adam on each model family and dtype.

    python benchmarks/optimiser_families_benchmark.py [--photos 2] [--steps 50] [-o docs/fast_inversion]

For the bundled model in fp32, fp16 and bf16 and for tiny random SD 2.x (v-prediction) and SDXL models
built from config (tests/conftest.py), each photo inverted with both optimisers in turn: the final latent
error (MSE to z0 of guided sampling at w = 7.5 from the inversion, which is the last step's loss) and the
UNet work (forward samples, backward passes, and forward + 2 × backward as pass-equivalents). The claim it
checks (issue #23): the secant's error ≤ Adam's at ≤ half Adam's UNet passes, on every family and dtype.
Writes optimiser_families.md and .json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import build_tiny_sd2, build_tiny_sdxl  # noqa: E402  the tests' tiny models from config
from pivot_checks import error_and_work  # noqa: E402  the tests' measurement

from nulltext.bundled import data  # noqa: E402
from nulltext.inversion import InversionConfig  # noqa: E402
from nulltext.io.outputs import publish  # noqa: E402
from nulltext.model import load_model  # noqa: E402

OPTIMISERS = {"paper Adam": InversionConfig.paper(keep_pivot=False), "secant (default)": InversionConfig(keep_pivot=False)}


def families(folder: Path) -> dict:
    return {"bundled, fp32": lambda: load_model(device="cpu"),
            "bundled, fp16": lambda: load_model(device="cpu", dtype="float16"),
            "bundled, bf16": lambda: load_model(device="cpu", dtype="bfloat16"),
            "tiny SD 2.x (v-prediction), fp32": lambda: load_model(build_tiny_sd2(folder / "sd2" / "model"), device="cpu"),
            "tiny SDXL, fp32": lambda: load_model(build_tiny_sdxl(folder / "sdxl" / "model"), device="cpu")}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--photos", type=int, default=2)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("-o", "--output", default="docs/fast_inversion")
    p.add_argument("--quiet", action="store_true")
    a = p.parse_args(argv)
    rows, start = [], time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for family, load in families(Path(tmp)).items():
            model = load()
            for index in range(a.photos):
                image, caption = data.sample("test", index, model.default_size[0])
                row = {"family": family, "photo": index}
                for label, config in OPTIMISERS.items():
                    m = error_and_work(model, image, caption, replace(config, num_steps=a.steps))
                    row[label] = {**m._asdict(), "passes": m.passes, "work": m.work}
                adam, secant = row["paper Adam"], row["secant (default)"]
                row["error_ratio"], row["pass_ratio"] = secant["mse"] / adam["mse"], secant["passes"] / adam["passes"]
                row["work_ratio"], row["time_ratio"] = secant["work"] / adam["work"], secant["seconds"] / adam["seconds"]
                rows.append(row)
                if not a.quiet:
                    print(f"{family}, photo {index}: error {row['error_ratio']:.2f}× Adam's at "
                          f"{row['pass_ratio']:.2f}× its passes ({row['time_ratio']:.2f}× its time)", flush=True)
    lines = [f"{a.steps} steps, w = 7.5, CPU; test photos 0–{a.photos - 1}, both optimisers on each in turn "
             f"({(time.perf_counter() - start) / 60:.0f} min). Error: latent MSE to z0 of guided sampling from the "
             "inversion (= the last step's loss). Passes: UNet forward samples + backward passes.", "",
             "| model, dtype | photo | error, Adam | error, secant | error ratio | passes, Adam | passes, secant "
             "| pass ratio | time ratio |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        adam, secant = r["paper Adam"], r["secant (default)"]
        lines.append(f"| {r['family']} | {r['photo']} | {adam['mse']:.3e} | {secant['mse']:.3e} | {r['error_ratio']:.2f} "
                     f"| {adam['passes']} | {secant['passes']} | {r['pass_ratio']:.2f} | {r['time_ratio']:.2f} |")
    ok = all(r["error_ratio"] <= 1 and r["pass_ratio"] <= 0.5 for r in rows)
    lines += ["", f"Error ≤ Adam's at ≤ half its passes on every row: **{'yes' if ok else 'no'}**."]
    text = "\n".join(lines) + "\n"
    out = Path(a.output)
    out.mkdir(parents=True, exist_ok=True)
    publish(out / "optimiser_families.md", lambda tmp: Path(tmp).write_text(text), force=True)
    publish(out / "optimiser_families.json", lambda tmp: Path(tmp).write_text(json.dumps(rows, indent=1)), force=True)
    print(text)


if __name__ == "__main__":
    main()
