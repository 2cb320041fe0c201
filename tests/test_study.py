"""Small-N versions of the paper's ablation and guidance table on the bundled model: the orderings hold."""

from nulltext.inversion import InversionConfig
from nulltext.study import AblationConfig, ablation_report, guidance_report, run_ablation, run_guidance_table


def test_ablation_orderings(bundled, tmp_path):
    config = AblationConfig(images=1, checkpoints=(0, 25, 250), methods=("null-text", "global null", "random pivot"),
                            inversion=InversionConfig(num_steps=25, early_stop=0.0, early_stop_growth=0.0))
    r = run_ablation(bundled, config)
    nt, gl, ddim = r.mean("null-text"), r.mean("global null"), r.mean("DDIM w=7.5")[0]
    # the paper's ordering: per-step null-text ≥ one global ∅ optimised over all steps ≥ DDIM at w = 7.5
    assert nt[-1] >= gl[-1] >= ddim + 3, (nt, gl, ddim)
    assert abs(gl[0] - ddim) < 1e-6  # the global ∅ starts at ψ("")
    assert nt[-1] >= r.mean("VAE bound")[0] - 0.5
    assert r.mean("random pivot")[1] < nt[1]  # a random pivot converges slower
    assert abs(nt[0] - ddim) < 1e-6  # no iterations: null-text is DDIM inversion at w = 7.5
    paths = ablation_report(r, tmp_path, "bundled")
    assert [p.name for p in paths] == ["ablation.png", "ablation.md", "ablation.json"]
    assert "| null-text |" in paths[1].read_text()


def test_guidance_table_conclusions(bundled, tmp_path):
    rows = {(r.label, r.w_inversion, r.w_inference): r for r in run_guidance_table(bundled, images=3)}
    ddim11, ddim175, ddim7575 = rows["DDIM", 1.0, 1.0], rows["DDIM", 1.0, 7.5], rows["DDIM", 7.5, 7.5]
    nt = rows["null-text", 1.0, 7.5]
    assert ddim11.psnr > ddim7575.psnr + 1.5  # (1, 1) reconstructs, (7.5, 7.5) does not (34.4 vs 31.9 dB here)
    assert ddim175.edit_success >= ddim11.edit_success  # guidance is what edits
    assert nt.psnr > ddim175.psnr and nt.edit_success >= 2 / 3  # null-text reconstructs and edits
    paths = guidance_report(list(rows.values()), tmp_path, 3)
    assert "| null-text | 1 | 7.5 |" in paths[0].read_text()
