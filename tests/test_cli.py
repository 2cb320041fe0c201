"""The command line end to end on a tiny model: outputs, metadata, and one-line errors with exit code 2."""

import numpy as np
import pytest
from PIL import Image

from nulltext.bundled import data
from nulltext.cli import main
from nulltext.inversion import load_inversion
from nulltext.io.images import read_png_metadata


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    image, caption = data.sample("test", 3, 48)  # not the model's size: it is resized
    path = tmp_path_factory.mktemp("photo") / "photo.png"
    image.save(path)
    return path, caption


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def nti(tmp_path_factory, photo, tiny_dir):
    """One inversion for every test that reads it (none changes it)."""
    path = tmp_path_factory.mktemp("nti") / "x.nti"
    assert main([str(a) for a in ("invert", photo[0], "--prompt", photo[1], "-o", path, "--model", tiny_dir,
                                  "--steps", 5, "--inner-steps", 2, "--quiet")]) == 0
    return path


def test_invert_info_reconstruct_edit_attention(tmp_path, nti, tiny_dir, capsys, photo):
    code, out, err = run(capsys, "info", nti)
    assert code == 0 and photo[1] in out and "5 DDIM steps" in out
    rec = tmp_path / "rec.png"
    code, out, err = run(capsys, "reconstruct", nti, "-o", rec, "--model", tiny_dir, "--quiet")
    assert code == 0 and "PSNR" in out and "VAE-only bound" in out and err == ""
    assert Image.open(rec).size == (32, 32) and read_png_metadata(rec)["kind"] == "reconstruction"
    shape = photo[1].split()[2]
    new_shape = "square" if shape != "square" else "circle"
    target = photo[1].replace(shape, new_shape)
    code, out, err = run(capsys, "edit", nti, target, "-o", tmp_path / "edits", "--model", tiny_dir,
                         "--blend", f"{shape},{new_shape}", "--reweight", f"{new_shape}=2", "--cross", "0.1,0.7", "--quiet")
    assert code == 0, err
    meta = read_png_metadata(tmp_path / "edits" / "edit_01.png")
    assert meta["target_prompt"] == target and meta["source_prompt"] == photo[1]
    assert f'"{new_shape}": 2.0' in meta["reweight"] and meta["cross_replace"] == "[0.1, 0.7]"
    assert (tmp_path / "edits" / "grid.png").exists()
    maps = tmp_path / "maps.png"
    code, out, err = run(capsys, "attention", nti, "-o", maps, "--model", tiny_dir, "--quiet")
    assert code == 0 and maps.exists()


def test_edit_prints_the_word_diff_and_blend_auto_marks_the_changed_words(tmp_path, nti, tiny_dir, capsys, photo):
    """`--blend auto` is `--blend <changed words>`, pixel for pixel; the changes are printed before the
    model loads, and a target that only appends words is warned of in one line."""
    caption = photo[1]
    colour, shape = caption.split()[1:3]
    new_colour = "green" if colour != "green" else "red"
    target = caption.replace(f"a {colour} {shape}", f"a {new_colour} {shape}", 1)
    outs = {}
    for blend in ("auto", f"{colour},{new_colour}"):
        out = tmp_path / blend.replace(",", "_")
        code, stdout, err = run(capsys, "edit", nti, target, "-o", out, "--model", tiny_dir, "--blend", blend)
        assert code == 0, err
        assert f'edit 1: "{colour}" → "{new_colour}"' in stdout and f"blend words: {colour}, {new_colour}" in stdout
        outs[blend] = np.asarray(Image.open(out / "edit_01.png"))
    assert np.array_equal(*outs.values())
    code, stdout, err = run(capsys, "edit", nti, caption, "-o", tmp_path / "same", "--model", tiny_dir, "--blend", "auto")
    assert code == 2 and err.count("\n") == 1 and "--blend WORDS or --mask" in err
    assert not (tmp_path / "same").exists()
    code, stdout, err = run(capsys, "edit", nti, caption + " with a hat", "-o", tmp_path / "hat", "--model", tiny_dir)
    assert code == 0 and 'only adds "with a hat"' in err and err.count("\n") == 1


def test_info_reads_the_header_alone(nti, tmp_path):
    """`nulltext info` reads the header and the tensor table, no tensor and no heavy library (#23: ≤ 1 s),
    and says what loading the whole file says; a file cut inside its data is refused in one line."""
    import subprocess
    import sys

    code = ("import sys\nfrom nulltext.cli import main\nassert main(['info', sys.argv[1]]) == 0\n"
            "print(*sorted(m for m in ('torch', 'diffusers', 'transformers', 'numpy', 'PIL', 'safetensors')\n"
            "              if m in sys.modules), 'end', file=sys.stderr)")
    run_ = subprocess.run([sys.executable, "-c", code, str(nti)], capture_output=True, text=True, check=True)
    assert run_.stderr.splitlines()[-1] == "end", run_.stderr  # none of the heavy libraries was imported
    inv = load_inversion(nti)
    assert f"latent:          {tuple(inv.latent_T.shape)}, null embeddings {tuple(inv.null_embeddings.shape)}" in run_.stdout
    assert f"iterations:      {sum(inv.inner_iterations)} (max {max(inv.inner_iterations)} per step)" in run_.stdout
    assert f"prompt:          {inv.prompt}\n" in run_.stdout and "photo stored" in run_.stdout
    assert "null-text, 5 DDIM steps, guidance 7.5, secant optimiser (≤ 2 trials a step, the last step past the threshold)" \
        in run_.stdout  # the fixture's --inner-steps 2
    cut = tmp_path / "cut.nti"
    cut.write_bytes(nti.read_bytes()[:-100])
    code_, out, err = run_main(cut)
    assert code_ == 2 and out == "" and len(err.splitlines()) == 1 and "lies outside the file" in err


@pytest.mark.parametrize("enabled_before", [True, False])
@pytest.mark.parametrize("freeze", [False, True])
def test_collector_paused_restores_the_collector(enabled_before, freeze):
    """Off inside; afterwards on or off as before; objects frozen out of it only when asked (the command's
    own process), never for a caller's Python."""
    import gc

    from nulltext.cli.common import collector_paused

    (gc.enable if enabled_before else gc.disable)()
    try:
        with collector_paused(freeze):
            inside = gc.isenabled()
            kept = [[i] for i in range(1000)]  # tracked containers made while paused
        frozen = gc.get_freeze_count()
    finally:
        gc.unfreeze()
        gc.enable()
    assert not inside and gc.isenabled()
    assert (frozen >= len(kept)) == freeze


def test_the_console_script_freezes_what_the_libraries_and_model_made(nti, tiny_dir, tmp_path):
    """As the whole process (`nulltext`, `python -m nulltext.cli`: `run`), a command leaves the libraries'
    objects and the loaded model out of the collector's passes (`gc.freeze`, docs/benchmarks.md: 1 s of
    `nulltext invert`); called from a program, `main` leaves the collector as it was. (`python -m
    nulltext.cli` runs in tests/test_batch.py, test_hostile_batch.py and test_sd3.py.)"""
    import subprocess
    import sys

    code = ("import gc, sys\nfrom nulltext.cli.main import main\n"
            "c = main(['reconstruct', sys.argv[1], '-o', sys.argv[2], '--model', sys.argv[3], '--quiet'],"
            " own_process=sys.argv[4] == '1')\n"
            "print(c, gc.get_freeze_count(), gc.isenabled(), len(gc.get_objects()))")
    counts = {}
    for own in ("1", "0"):
        out = subprocess.run([sys.executable, "-c", code, str(nti), str(tmp_path / f"rec{own}.png"), str(tiny_dir), own],
                             capture_output=True, text=True, check=True).stdout.split()[-4:]
        counts[own] = [int(out[0]), int(out[1]), out[2], int(out[3])]
        assert Image.open(tmp_path / f"rec{own}.png").size == (32, 32)
    code_, frozen, enabled, left = counts["1"]  # measured: 0, 691959, True, 55347
    assert code_ == 0 and enabled == "True" and frozen > 100_000 and left < frozen / 10, counts  # little left to scan
    code_, frozen, enabled, left = counts["0"]  # measured: 0, 0, True, 474742
    assert code_ == 0 and enabled == "True" and frozen == 0 and left > 100_000, counts


def run_main(*argv):
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["info", *map(str, argv)])
    return code, out.getvalue(), err.getvalue()


def test_existing_outputs_are_kept_without_force(tmp_path, nti, tiny_dir, photo, capsys):
    before = nti.read_bytes()
    code, out, err = run(capsys, "invert", photo[0], "--prompt", photo[1], "-o", nti, "--model", tiny_dir, "--quiet")
    assert code == 2 and "--force" in err and nti.read_bytes() == before


@pytest.mark.parametrize("case", ["missing", "empty", "text", "truncated"])
def test_bad_photos(tmp_path, tiny_dir, capsys, photo, case):
    bad = tmp_path / f"bad_{case}.jpg"
    if case == "empty":
        bad.write_bytes(b"")
    elif case == "text":
        bad.write_text("hello")
    elif case == "truncated":
        Image.open(photo[0]).save(bad, quality=95)
        bad.write_bytes(bad.read_bytes()[:200])
    out_file = tmp_path / "out.nti"
    code, out, err = run(capsys, "invert", bad, "--prompt", "a red circle", "-o", out_file, "--model", tiny_dir, "-q")
    assert code == 2 and bad.name in err and err.count("\n") == 1 and not out_file.exists()


@pytest.mark.parametrize("prompt, message", [("", "prompt is empty"), ("a " * 40, "tokens long")])
def test_bad_prompts(tmp_path, tiny_dir, photo, capsys, prompt, message):
    code, out, err = run(capsys, "invert", photo[0], "--prompt", prompt, "-o", tmp_path / "o.nti", "--model", tiny_dir)
    assert code == 2 and message in err and err.count("\n") == 1


def test_bad_inversion_files_and_models(tmp_path, nti, tiny_dir, tiny_v_dir, capsys, photo):
    corrupt = tmp_path / "corrupt.nti"
    corrupt.write_bytes(nti.read_bytes()[:100])
    code, out, err = run(capsys, "reconstruct", corrupt, "--model", tiny_dir, "-o", tmp_path / "r.png")
    assert code == 2 and "corrupt" in err and not (tmp_path / "r.png").exists()
    code, out, err = run(capsys, "reconstruct", nti, "--model", tiny_v_dir, "-o", tmp_path / "r.png")
    assert code == 2 and "was made with model" in err
    code, out, err = run(capsys, "reconstruct", nti, "--model", tmp_path / "no_such_model", "-o", tmp_path / "r.png")
    assert code == 2 and "cannot load model" in err and err.count("\n") == 1
    code, out, err = run(capsys, "edit", nti, photo[1] + " today", "--mode", "replace", "--model", tiny_dir,
                         "-o", tmp_path / "e")
    assert code == 2 and "refine" in err and not (tmp_path / "e").exists()


def test_progress_bar_shows_loss_and_quiet_silences_it(tmp_path, photo, tiny_dir, capsys):
    code, out, err = run(capsys, "invert", photo[0], "--prompt", photo[1], "-o", tmp_path / "a.nti", "--model",
                         tiny_dir, "--steps", 3, "--inner-steps", 1)
    assert code == 0 and "loss=" in err and "iters=" in err
    code, out, err = run(capsys, "invert", photo[0], "--prompt", photo[1], "-o", tmp_path / "b.nti", "--model",
                         tiny_dir, "--steps", 3, "--inner-steps", 1, "--quiet")
    assert code == 0 and err == ""


def test_demo_on_the_bundled_model(tmp_path, capsys, bundled, bundled_null_text, monkeypatch):
    """The demo's pieces: the grid from the demo photo's inversion (shared with other tests), the CLI's
    wiring and its refusal to overwrite; `make demo` runs the whole of it."""
    import re

    from nulltext import demo

    photo, inversion = Image.open(demo.DEMO_PHOTO).convert("RGB"), bundled_null_text(data.DEMO_INDEX)
    assert inversion.prompt == read_png_metadata(demo.DEMO_PHOTO)["caption"]
    monkeypatch.setattr(demo, "invert_demo_photo", lambda model, quiet: (photo, inversion))
    code, out, err = run(capsys, "demo", "-o", tmp_path, "--quiet")
    assert code == 0 and err == "", err
    grid = Image.open(tmp_path / "demo_grid.png")
    assert grid.size[0] > 3 * 64 and (tmp_path / "demo.nti").exists()
    rec, bound = map(float, re.search(r"PSNR ([\d.]+) dB \(VAE-only bound ([\d.]+) dB\)", out).groups())
    assert rec >= bound - 0.5
    before = (tmp_path / "demo_grid.png").read_bytes()
    code, out, err = run(capsys, "demo", "-o", tmp_path, "--quiet")
    assert code == 2 and "--force" in err and (tmp_path / "demo_grid.png").read_bytes() == before


@pytest.mark.parametrize("argv, message", [
    (["invert", "{photo}", "--prompt", "a red circle", "--size", "30x32"], "not a multiple of 4"),
    (["invert", "{photo}", "--prompt", "a red circle", "--device", "cuda:7"], "not available"),
    (["edit", "{nti}", "a red circle", "--cross", "0.8,0.2"], "step range"),
    (["edit", "{nti}", "--reweight", "tiger=2"], "in no target prompt"),
])
def test_bad_settings_give_one_line(tmp_path, nti, photo, tiny_dir, capsys, argv, message):
    argv = [a.format(photo=photo[0], nti=nti) for a in argv]
    code, out, err = run(capsys, *argv, "--model", tiny_dir, "-o", tmp_path / "out", "-q")
    assert code == 2 and message in err and err.count("\n") == 1, err


def test_argument_ranges_are_checked_by_the_parser(capsys, photo):
    with pytest.raises(SystemExit) as e:
        main(["invert", str(photo[0]), "--prompt", "a red circle", "--steps", "0"])
    assert e.value.code == 2 and "from 1 to 1000" in capsys.readouterr().err


def test_inversion_file_is_readable_as_an_ordinary_file(nti):
    import os

    umask = os.umask(0)
    os.umask(umask)
    assert nti.stat().st_mode & 0o777 == 0o666 & ~umask


def test_edit_with_a_drawn_mask(tmp_path, tiny_dir, photo, capsys):
    """--mask: a PNG at the photo's size drives the local blend; another size is a one-line error.

    Inverted with the paper's Adam: on this random tiny model the secant's ∅_t move twice as far (|∅| 100
    against 50), and the random decoder spreads the stronger edit over most of the 32-pixel photo."""
    nti = tmp_path / "adam.nti"
    assert main([str(a) for a in ("invert", photo[0], "--prompt", photo[1], "-o", nti, "--model", tiny_dir,
                                  "--steps", 5, "--inner-steps", 2, "--optimizer", "adam", "--quiet")]) == 0
    mask = tmp_path / "mask.png"
    pixels = Image.new("L", (32, 32), 0)
    pixels.paste(255, (0, 0, 16, 32))  # the left half may change
    pixels.save(mask)
    target = photo[1].replace(photo[1].split()[1], "green" if photo[1].split()[1] != "green" else "red")
    code, out, err = run(capsys, "edit", nti, target, "--mask", mask, "--model", tiny_dir, "-o", tmp_path / "e", "-q")
    assert code == 0, err
    meta = read_png_metadata(tmp_path / "e" / "edit_01.png")
    assert meta["blend_mask"] == str(mask) and meta["blend_mask_combine"] == "union" and meta["composite"] == "changed"
    # the mask that was used is shown beside the edit; on the right quarter, far from the drawn half,
    # the edit moved nothing, so it is the photo's own pixels (the inversion keeps the photo)
    assert read_png_metadata(tmp_path / "e" / "edit_01_mask.png")["kind"] == "edit mask"
    photo_pixels = load_inversion(nti).photo.numpy()
    edited = np.asarray(Image.open(tmp_path / "e" / "edit_01.png").convert("RGB"))
    assert np.array_equal(edited[:, 24:], photo_pixels[:, 24:])
    Image.new("L", (40, 32), 255).save(mask)
    code, out, err = run(capsys, "edit", nti, target, "--mask", mask, "--model", tiny_dir, "-o", tmp_path / "f", "-q")
    assert code == 2 and "draw the mask at 32x32" in err and err.count("\n") == 1 and not (tmp_path / "f").exists()


def test_option_defaults_come_from_the_settings_dataclasses():
    from nulltext.cli import build_parser
    from nulltext.inversion import InversionConfig
    from nulltext.editing.config import EditConfig

    parser = build_parser()
    inv = parser.parse_args(["invert", "p.png", "--prompt", "x"])
    ed = parser.parse_args(["edit", "x.nti", "y"])
    i, e = InversionConfig(), EditConfig()
    assert (inv.method, inv.steps, inv.guidance, inv.optimizer, inv.lr) == (
        i.method, i.num_steps, i.guidance_scale, i.optimizer, i.learning_rate)
    assert (ed.mode, ed.cross, ed.self_replace, ed.self_fade, ed.threshold, ed.blend_start) == (
        e.mode, e.cross_replace, e.self_replace, e.self_fade, e.blend_threshold, e.blend_start)


@pytest.mark.parametrize("argv, message", [
    (["invert", "{photo}", "--prompt", "a red circle", "--guidance", "nan"], "guidance nan must be a finite number"),
    (["invert", "{photo}", "--prompt", "a red circle", "--lr", "-1"], "lr -1.0 must be positive"),
    (["edit", "{nti}", "a red circle", "--threshold", "1.5"], "blend threshold 1.5 must be a fraction"),
])
def test_settings_are_refused_by_the_dataclasses(tmp_path, nti, photo, tiny_dir, capsys, argv, message):
    """The CLI and the library refuse alike: the message is the dataclass's own."""
    argv = [a.format(photo=photo[0], nti=nti) for a in argv]
    code, out, err = run(capsys, *argv, "--model", tiny_dir, "-o", tmp_path / "out", "-q")
    assert code == 2 and message in err and err.count("\n") == 1, err


@pytest.mark.parametrize("flags, optimizer, budget", [([], "secant", ("trials", 2)),
                                                      (["--optimizer", "adam"], "adam", ("inner_steps", 2)),
                                                      (["--fast"], "secant", ("trials", 2))])
def test_invert_optimiser_secant_by_default_adam_one_option_away(tmp_path, photo, tiny_dir, capsys, flags, optimizer,
                                                                 budget):
    """The default is the secant optimiser; `--optimizer adam` is the paper's; `--inner-steps` caps the one chosen."""
    from nulltext.inversion.file import load_inversion

    out = tmp_path / "x.nti"
    code, _, err = run(capsys, "invert", photo[0], "--prompt", photo[1], "-o", out, "--model", tiny_dir,
                       "--steps", 4, "--inner-steps", 2, *flags, "--quiet")
    assert code == 0 and err == ""
    inv = load_inversion(out)
    assert inv.config.optimizer == optimizer and getattr(inv.config, budget[0]) == budget[1]
    assert len(inv.inner_iterations) == 4 and max(inv.inner_iterations) <= 2
