"""The edit benchmark: inversion methods × Prompt-to-Prompt edits scored against known answers.

Cases with ground truth come from the bundled data generator: one scene drawn twice, with the source
caption and with the target caption, same position and size — so the correct edit is known pixel for
pixel. Edit types: the shape's colour, the shape's class, the background colour, and colour + shape
at once. Each case carries its edit mask — the shape in both scenes (for a background edit: the
background), plus every anti-aliased edge pixel that differs between the two drawings, so the ground
truth itself preserves the rest exactly — and the words that changed. Only scenes whose source and
ground truth the bundled judge reads correctly are used, so a failed edit is the edit's fault.
The scenes are held out: they come from their own seed stream (`seed`), not the train/val/test splits.

For each case and method the source is inverted once, then edited twice with the Prompt-to-Prompt
defaults (`EditConfig()`; word swap since the word counts match): with local blend on the changed
words and without. Scores per edit:

- accuracy by the bundled model's judge (shape, shape colour, background; `correct` = all three);
- PSNR and SSIM of the edit against the ground-truth twin (whole image), and PSNR inside the edit mask;
- the object's geometry: IoU of the judge's shape pixels in the edit with those in the twin, and the
  ratio of their areas (a recoloured shape that grows has a ratio above 1);
- background preservation against the source photo outside the edit mask: PSNR and MSE over those
  pixels, SSIM averaged over windows centred there (`nulltext.evaluation.metrics`);
- reconstruction PSNR, inversion and edit wall time;
- LPIPS / CLIP / structure distance when their weights are available (`nulltext.evaluation.perceptual`).

PIE-Bench cases (`nulltext.evaluation.pie_bench`) run through the same loop; they have no ground truth and no
judge, and their background metrics follow PIE-Bench's convention (see that module).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image

from nulltext.evaluation import metrics, perceptual
from nulltext.bundled.judge import foreground, judge
from nulltext.editing.from_inversion import edit
from nulltext.io.images import to_pil, to_tensor
from nulltext.inversion.file import load_inversion, save_inversion
from nulltext.inversion.null_text import Inversion, InversionConfig, invert
from nulltext.io.outputs import publish
from nulltext.model import Model
from nulltext.editing.config import EditConfig, TargetNull
from nulltext.errors import first_line
from nulltext.evaluation.edit_cases import EDIT_TYPES, EditCase, make_case, make_cases  # noqa: F401 - re-exported
from nulltext.evaluation.pie_bench import background_metrics
from nulltext.progress import Progress, StepReport

METHODS = ("null-text", "negative-prompt", "direct", "ddim")
OWN_NULLS = ("null-text", "negative-prompt")  # methods whose ∅_t differ from ψ("")


# ---------------------------------------------------------------------------------------------
# Running


@dataclass
class BenchConfig:
    """What to run: methods, blend on/off, the inversion and Prompt-to-Prompt settings (paper defaults)."""

    methods: tuple[str, ...] = METHODS
    # edit each inversion once per target null (EditConfig.target_null); "inverted" rows are labelled
    # "<method>, ∅ on targets" and run only for the methods whose ∅_t are not ψ("") anyway
    target_nulls: tuple[TargetNull, ...] = ("empty", "inverted")
    blend: tuple[bool, ...] = (True, False)
    inversion: InversionConfig = field(default_factory=InversionConfig)  # its method is set per run
    edit: EditConfig = field(default_factory=EditConfig)  # blend_words are set per case
    perceptual: perceptual.PerceptualConfig = field(default_factory=perceptual.PerceptualConfig)
    convention: str = "masked-mean"  # background metrics: "masked-mean" or "pie-bench"


@dataclass
class EditRecord:
    """One edit of one case by one method, with or without local blend."""

    case_id: str
    edit_type: str
    method: str
    blend: bool
    source_prompt: str
    target_prompt: str
    changed: list[tuple[str, str]]
    scores: dict[str, float | None]  # None: not measurable for this case (no ground truth, no weights)
    judged: dict[str, str | None] | None  # what the judge saw, if the case has a target scene
    invert_seconds: float
    edit_seconds: float
    error: str | None = None  # the edit could not run (e.g. prompts Prompt-to-Prompt cannot align)


@dataclass
class BenchResult:
    records: list[EditRecord]
    config: dict
    dataset: str
    model: str
    cases_per_type: dict[str, int]
    skipped: dict[str, str]  # metric → why it was not computed
    seconds: float

    def methods(self) -> list[str]:
        """Method labels in run order (the methods, then their target-null variants)."""
        return list(dict.fromkeys(r.method for r in self.records)) or list(self.config["methods"])

    def summary(self) -> list[dict]:
        """Mean scores per (method, edit type, blend), then per (method, blend) over all types."""
        groups: dict[tuple, list[EditRecord]] = {}
        types = list(self.cases_per_type)
        for r in self.records:
            groups.setdefault((r.method, r.edit_type, r.blend), []).append(r)
            groups.setdefault((r.method, "all", r.blend), []).append(r)
        order = {m: i for i, m in enumerate(self.methods())}
        rows = []
        for (method, edit_type, blend), rs in sorted(
                groups.items(), key=lambda kv: (order.get(kv[0][0], 99), (types + ["all"]).index(kv[0][1]), not kv[0][2])):
            ok = [r for r in rs if r.error is None]
            keys = sorted({k for r in ok for k, v in r.scores.items() if v is not None})
            means = {k: _mean([r.scores[k] for r in ok if r.scores.get(k) is not None]) for k in keys}
            rows.append({"method": method, "edit_type": edit_type, "blend": blend, "n": len(ok),
                         "errors": len(rs) - len(ok), **means,
                         "invert_seconds": _mean([r.invert_seconds for r in ok]),
                         "edit_seconds": _mean([r.edit_seconds for r in ok])})
        return rows


def _mean(values: list[float]) -> float:
    finite = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(finite)) if finite else float("nan")


def score_edit(case: EditCase, reconstruction: Image.Image, edited: Image.Image, p: perceptual.Perceptual,
               convention: str = "masked-mean") -> tuple[dict[str, float | None], dict | None]:
    """Every score of one edited image (see the module doc) and the judge's reading."""
    scores: dict[str, float | None] = {"rec_psnr": metrics.psnr(reconstruction, case.source)}
    judged = None
    if case.target_scene is not None:
        j = judge(edited)
        hits = j.matches(case.target_scene)
        scores.update({"correct": float(all(hits.values())), "correct_colour": float(hits["colour"]),
                       "correct_shape": float(hits["shape"]), "correct_background": float(hits["background"])})
        judged = {"colour": j.colour, "shape": j.shape, "background": j.background}
    if case.target is not None:
        scores["gt_psnr"] = metrics.psnr(edited, case.target)
        scores["gt_ssim"] = metrics.ssim(edited, case.target)
        scores["edit_psnr"] = metrics.psnr(edited, case.target, mask=case.mask) if case.mask.any() else None
    if case.target_scene is not None:  # the object's geometry: the judge's shape pixels in the edit and the twin
        ours, theirs = foreground(edited), foreground(case.target)
        scores["object_iou"] = metrics.iou(ours, theirs)
        scores["object_area"] = float(ours.sum() / theirs.sum()) if theirs.any() else None
    keep = ~case.mask
    if convention == "pie-bench":

        scores.update(background_metrics(case.source, edited, case.mask))
    elif keep.any():
        scores["bg_psnr"] = metrics.psnr(edited, case.source, mask=keep)
        scores["bg_mse"] = metrics.mse(edited, case.source, mask=keep)
        try:
            scores["bg_ssim"] = metrics.ssim(edited, case.source, mask=keep)
        except ValueError:  # the background lies wholly within the SSIM window's reach of the border
            scores["bg_ssim"] = None
    scores["bg_lpips"] = perceptual.lpips(p, edited, case.source, keep=keep) if keep.any() else None
    scores["clip_whole"] = perceptual.clip_score(p, edited, case.target_prompt)
    scores["clip_edited"] = perceptual.clip_score(p, edited, case.target_prompt, keep=case.mask)
    scores["structure_distance"] = perceptual.structure_distance(p, case.source, edited)
    return scores, judged


def variant_label(method: str, target_null: str) -> str:
    return f"{method}, ∅ on targets" if target_null == "inverted" else f"{method}, ψ(\"\") on targets"


def case_inversion(model: Model, case: EditCase, config: InversionConfig, store: Path | None = None
                   ) -> tuple[Inversion, float]:
    """The case's inversion and the seconds it took; with `store`, read from or written to a file there.

    The file name carries a hash of everything the inversion depends on (model identity, settings,
    caption, photo), so a stored inversion is only reused for the same inputs; its seconds are the
    ones measured when it was made.
    """
    path = None if store is None else stored_inversion_path(model, case, config, store)
    if path is not None and path.is_file():
        inv = load_inversion(path, model)
        return inv, inv.wall_time
    t0 = time.perf_counter()
    inv = invert(model, to_tensor(case.source), case.source_prompt, config)
    seconds = time.perf_counter() - t0
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_inversion(replace(inv, wall_time=seconds), path)
    return inv, seconds


def stored_inversion_path(model: Model, case: EditCase, config: InversionConfig, store: Path) -> Path:
    """<store>/<case>-<method>-<hash of model identity, settings, caption and photo>.nti"""
    key = hashlib.sha256(json.dumps([model.identity, asdict(config), case.source_prompt], sort_keys=True,
                                    default=str).encode() + np.asarray(case.source).tobytes()).hexdigest()[:16]
    return Path(store) / f"{case.case_id}-{config.method}-{key}.nti"


def run_edit_bench(model: Model, cases: list[EditCase], config: BenchConfig,
                   progress: Progress | None = None, dataset: str = "bundled",
                   store: str | Path | None = None) -> BenchResult:
    """Invert every case's source once per method, edit it with and without local blend, score each edit.

    `store`: a folder where inversions are kept between runs (`case_inversion`), so that a re-run with
    other edit settings re-uses them.
    """
    start = time.perf_counter()
    p = perceptual.load_perceptual(config.perceptual)
    records = []
    for i, case in enumerate(cases):
        for j, method in enumerate(config.methods):
            inv, t_inv = case_inversion(model, case, replace(config.inversion, method=method, keep_pivot=False),
                                        None if store is None else Path(store))
            for target_null, blend in itertools.product(config.target_nulls, config.blend):
                if blend and not case.blend_words:
                    continue  # nothing to blend on: the no-blend run is this edit
                if target_null == "inverted" and method not in OWN_NULLS:
                    continue  # ∅_t = ψ(""): the same edit as "empty"
                label = method if target_null == config.target_nulls[0] else variant_label(method, target_null)
                edit_config = replace(config.edit, blend_words=list(case.blend_words) if blend else [],
                                      target_null=target_null)
                t0 = time.perf_counter()
                try:
                    result = edit(model, inv, [case.target_prompt], edit_config)
                except ValueError as e:  # prompts P2P cannot align, a blend word missing from both prompts…
                    records.append(EditRecord(case.case_id, case.edit_type, label, blend, case.source_prompt,
                                              case.target_prompt, case.changed, {}, None, t_inv, 0.0,
                                              first_line(e)))
                    continue
                t_edit = time.perf_counter() - t0
                rec, edited = to_pil(result.images)
                scores, judged = score_edit(case, rec, edited, p, config.convention)
                records.append(EditRecord(case.case_id, case.edit_type, label, blend, case.source_prompt,
                                          case.target_prompt, case.changed, scores, judged, t_inv, t_edit))
            if progress:
                progress(StepReport(i * len(config.methods) + j + 1, len(cases) * len(config.methods),
                                    f"{case.case_id}: {method}"))
    per_type: dict[str, int] = {}
    for case in cases:
        per_type[case.edit_type] = per_type.get(case.edit_type, 0) + 1
    cfg = asdict(config)
    cfg["methods"] = list(config.methods)
    return BenchResult(records, cfg, dataset, model.source, per_type, dict(p.skipped), time.perf_counter() - start)


# ---------------------------------------------------------------------------------------------
# Reporting

COLUMNS = [  # score key, header, format
    ("correct", "edit accuracy", "{:.0%}"), ("correct_colour", "shape colour", "{:.0%}"),
    ("correct_shape", "shape", "{:.0%}"), ("correct_background", "background", "{:.0%}"),
    ("gt_psnr", "PSNR vs GT dB", "{:.2f}"), ("gt_ssim", "SSIM vs GT", "{:.3f}"),
    ("edit_psnr", "in-mask PSNR vs GT dB", "{:.2f}"), ("object_iou", "object IoU", "{:.3f}"),
    ("object_area", "object area ×", "{:.2f}"),
    ("structure_distance", "structure dist. ×10³", "{:.2f}"), ("bg_psnr", "bg PSNR dB", "{:.2f}"),
    ("bg_lpips", "bg LPIPS ×10³", "{:.1f}"), ("bg_mse", "bg MSE ×10⁴", "{:.2f}"), ("bg_ssim", "bg SSIM", "{:.3f}"),
    ("clip_whole", "CLIP whole", "{:.2f}"), ("clip_edited", "CLIP edited", "{:.2f}"),
    ("rec_psnr", "rec. PSNR dB", "{:.2f}"),
]
SCALE = {"structure_distance": 1e3, "bg_lpips": 1e3, "bg_mse": 1e4}
OUTPUTS = ("edits.md", "edits.json", "edits.png")


def markdown_table(result: BenchResult) -> str:
    rows = result.summary()
    present = [c for c in COLUMNS if any(c[0] in r and not math.isnan(r[c[0]]) for r in rows)]
    head = ["method", "edit type", "blend", "n", *(h for _, h, _ in present), "invert s", "edit s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["method"], r["edit_type"], "yes" if r["blend"] else "no",
                 str(r["n"]) + (f" ({r['errors']} failed)" if r["errors"] else "")]
        for key, _, fmt in present:
            v = r.get(key, float("nan"))
            cells.append("–" if math.isnan(v) else fmt.format(v * SCALE.get(key, 1)))
        cells += [f"{r['invert_seconds']:.2f}", f"{r['edit_seconds']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _plot(result: BenchResult, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result.summary() if r["edit_type"] != "all"]
    types, methods = list(result.cases_per_type), result.methods()
    panels = [k for k in ("correct", "gt_psnr", "bg_psnr", "clip_edited", "structure_distance")
              if any(not math.isnan(r.get(k, float("nan"))) for r in rows)][:3] or ["rec_psnr"]
    labels = dict((k, h) for k, h, _ in COLUMNS)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.8), dpi=120, squeeze=False)
    width = 0.8 / (2 * len(methods))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, key in zip(axes[0], panels):
        for m, method in enumerate(methods):
            for b, blend in enumerate((True, False)):
                ys = [next((r.get(key, np.nan) for r in rows if (r["method"], r["edit_type"], r["blend"]) ==
                            (method, t, blend)), np.nan) for t in types]
                xs = np.arange(len(types)) - 0.4 + width * (2 * m + b + 0.5)
                ax.bar(xs, ys, width, color=colours[m % len(colours)], alpha=1.0 if blend else 0.45,
                       hatch=None if blend else "//", label=f"{method}{' + blend' if blend else ''}")
        ax.set_xticks(range(len(types)), types, fontsize=8, rotation=15)
        ax.set_title(labels[key], fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=min(len(names), 4), fontsize=7, frameon=False)
    n = max(result.cases_per_type.values(), default=0)
    fig.suptitle(f"Edit benchmark: {result.dataset} cases, model {result.model}, {n} per type "
                 "(hatched: no local blend)", fontsize=10)
    fig.tight_layout(rect=(0, 0.06 + 0.035 * ((len(names) - 1) // 4), 1, 1))
    out = publish(path, lambda tmp: fig.savefig(tmp, format="png"), force=True)
    plt.close(fig)
    return out


def bench_report(result: BenchResult, out_dir: str | Path) -> list[Path]:
    """Write edits.md (table), edits.json (every edit, the summary, settings) and edits.png, atomically."""
    out_dir = Path(out_dir)
    n = ", ".join(f"{t} {k}" for t, k in result.cases_per_type.items())
    skipped = "".join(f"\n- {k}: skipped — {why}" for k, why in result.skipped.items())
    header = (f"Edit benchmark on {result.dataset} with {result.model}: cases per type {n}; "
              f"{result.config['inversion']['num_steps']} DDIM steps, w = {result.config['inversion']['guidance_scale']}, "
              f"Prompt-to-Prompt defaults, local blend on the changed words (yes) or none (no). "
              f"Background metrics: {result.config['convention']}. Total {result.seconds / 60:.1f} min.\n"
              + (f"\nNot computed:{skipped}\n" if skipped else ""))
    md = publish(out_dir / "edits.md", lambda tmp: tmp.write_text(header + "\n" + markdown_table(result) + "\n"), force=True)
    payload = {"dataset": result.dataset, "model": result.model, "cases_per_type": result.cases_per_type,
               "seconds": result.seconds, "skipped": result.skipped, "config": result.config,
               "summary": result.summary(), "records": [asdict(r) for r in result.records]}
    text = json.dumps(_strict(payload), indent=1, default=_json_default, allow_nan=False) + "\n"
    js = publish(out_dir / "edits.json", lambda tmp: tmp.write_text(text), force=True)
    return [md, js, _plot(result, out_dir / "edits.png")]


def _strict(value):
    """Standard JSON: NaN → null, ±inf → "inf"/"-inf" (a PSNR of identical images)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(v) for v in value]
    return value


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return str(value)
