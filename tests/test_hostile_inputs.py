"""Issue #14: hostile inputs and faults give one line, exit code 2, no traceback, and leave no output,
no temporary file and every existing file as it was — through the CLI and as typed library errors.

One section per class of the issue: inconsistent inversion files, settings at their edges, model
sources, races on outputs, interrupts / full disks / unwritable outputs, invalid UTF-8 prompts.
"""

from __future__ import annotations

import errno
import json
import math
import os
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from nulltext.bundled import data
from nulltext.cli import main
from nulltext.core.schedule import ScheduleError, make_schedule
from nulltext.io.images import ImageError, load_image, to_tensor
from nulltext.inversion import InversionConfig, invert
from nulltext.inversion.file import InversionFileError, check_model, load_inversion, save_inversion
from nulltext.model import ModelLoadError, PromptError, SizeError, load_model
from nulltext.io.outputs import TEMP_SUFFIX, OutputError, OutputExistsError, publish, remove_stale_temps


# ---------------------------------------------------------------------------------------------
# Helpers


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    image, caption = data.sample("test", 1, 32)
    path = tmp_path_factory.mktemp("photo") / "photo.png"
    image.save(path)
    return path, caption


@pytest.fixture(scope="module")
def inversion(tiny, photo):
    image = Image.open(photo[0]).convert("RGB")
    return invert(tiny, to_tensor(image), photo[1], InversionConfig(num_steps=3, trials=1),
                  photo=torch.from_numpy(np.asarray(image).copy()))


@pytest.fixture(scope="module")
def good_nti(inversion, tmp_path_factory):
    return save_inversion(inversion, tmp_path_factory.mktemp("nti") / "good.nti")


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("nulltext: error: ") and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err


def files(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (hidden ones included) with its content."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def rewrite(source: Path, target: Path, header=None, tensors=None) -> Path:
    """A copy of an .nti file with its header JSON and/or tensors changed by the given functions."""
    with safe_open(str(source), "pt") as f:
        meta, ts = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    h = json.loads(meta["nulltext.header"])
    if header:
        header(h)
    if tensors:
        tensors(ts)
    meta["nulltext.header"] = json.dumps(h)
    save_file({k: v.contiguous() for k, v in ts.items()}, str(target), metadata=meta)
    return target


# ---------------------------------------------------------------------------------------------
# 1. Inversion files that are internally inconsistent


def _set(key, value):
    return lambda h: h.__setitem__(key, value)


def _set_config(key, value):
    return lambda h: h["config"].__setitem__(key, value)


def _set_scheduler(key, value):
    return lambda h: h["scheduler_config"].__setitem__(key, value)


def _tensor(name, fn):
    return lambda ts: ts.__setitem__(name, fn(ts[name]))


def _smaller_latents(ts):  # 8×8 latents of a 32×32 image: consistent in itself (factor 4), not with the model (2)
    ts["latent_T"] = ts["latent_T"][..., :8, :8]
    ts["pivot"] = ts["pivot"][..., :8, :8]


INCONSISTENT = {
    "latent with 3 channels": (None, lambda ts: (_tensor("latent_T", lambda t: t[:, :3])(ts),
                                                 _tensor("pivot", lambda t: t[:, :3])(ts)), "channels"),
    "latent size disagrees with the model": (None, _smaller_latents, "VAE factor"),
    "latent size disagrees with the header": (_set("image_size", [48, 32]), None, "image size"),
    "null embeddings of the wrong width": (None, _tensor("null_embeddings", lambda t: t[..., :16]), "null embeddings"),
    "null embeddings for other steps": (None, _tensor("null_embeddings", lambda t: t[:2]), "null_embeddings"),
    "prompt is not a string": (_set("prompt", ["a", "list"]), None, "prompt"),
    "prompt with a lone surrogate": (_set("prompt", "a red \udcff circle"), None, "prompt"),
    "guidance is a string": (_set_config("guidance_scale", "7.5"), None, "guidance"),
    "guidance is NaN": (_set_config("guidance_scale", math.nan), None, "guidance"),
    "steps is a float": (_set_config("num_steps", 3.0), None, "steps 3.0"),
    "unknown method": (_set_config("method", "magic"), None, "method"),
    "unknown beta schedule": (_set_scheduler("beta_schedule", "cubic"), None, "scheduler"),
    "unknown prediction type": (_set_scheduler("prediction_type", "noise"), None, "prediction_type"),
    "unknown timestep spacing": (_set_scheduler("timestep_spacing", "sideways"), None, "timestep_spacing"),
    "training timesteps as text": (_set_scheduler("num_train_timesteps", "1000"), None, "num_train_timesteps"),
    "scheduler config not an object": (_set("scheduler_config", [1, 2]), None, "scheduler_config"),
    "negative image size": (_set("image_size", [-32, 32]), None, "image_size"),
    "photo of the wrong size": (None, _tensor("photo", lambda t: t[:16]), "photo"),
    "photo of floats": (None, _tensor("photo", lambda t: t.float()), "photo"),
    "latent of integers": (None, _tensor("latent_T", lambda t: t.to(torch.int32)), "dtype"),
    "latent with NaN": (None, _tensor("latent_T", lambda t: t * math.nan), "NaN"),
    "pivot of the wrong length": (None, _tensor("pivot", lambda t: t[:2]), "pivot"),
    "corrections on a null-text inversion": (None, lambda ts: ts.__setitem__("corrections", ts["pivot"][1:].clone()),
                                             "corrections"),
    "losses for other steps": (_set("losses", [0.1]), None, "losses"),
    "header is a list": (lambda h: (h.clear(), h.update({"config": []})), None, "config"),
}


@pytest.mark.parametrize("case", list(INCONSISTENT))
def test_inconsistent_inversion_file_is_one_line_before_sampling(case, good_nti, tiny_dir, tmp_path, capsys,
                                                                 monkeypatch):
    header, tensors, needle = INCONSISTENT[case]
    bad = rewrite(good_nti, tmp_path / "bad.nti", header, tensors)
    before = files(tmp_path)
    monkeypatch.setattr("nulltext.editing.from_inversion.guided_ddim", lambda *a, **k: pytest.fail("sampled from a bad file"))
    code, out, err = run(capsys, "reconstruct", bad, "--model", tiny_dir, "-o", tmp_path / "rec.png", "-q")
    assert_one_line_error(code, err, "bad.nti", needle)
    assert files(tmp_path) == before  # no PNG, no temp file, the .nti unchanged


@pytest.mark.parametrize("case", ["guidance is NaN", "latent with 3 channels", "unknown beta schedule",
                                  "null embeddings of the wrong width"])
def test_inconsistent_inversion_is_a_typed_library_error(case, good_nti, tiny, tmp_path):
    header, tensors, needle = INCONSISTENT[case]
    bad = rewrite(good_nti, tmp_path / "bad.nti", header, tensors)
    with pytest.raises(InversionFileError, match=needle) as e:
        load_inversion(bad, tiny)
    assert "\n" not in str(e.value)


def test_an_inversion_built_in_code_is_checked_against_the_model_before_sampling(inversion, tiny):
    from dataclasses import replace

    from nulltext.editing import edit, reconstruct

    wrong = replace(inversion, latent_T=inversion.latent_T[:, :3], pivot=None)
    for call in (lambda: reconstruct(tiny, wrong), lambda: edit(tiny, wrong, [inversion.prompt]),
                 lambda: check_model(wrong, tiny)):
        with pytest.raises(InversionFileError, match="3 channels, the model's UNet takes 4"):
            call()
    config = replace(inversion.config)
    config.guidance_scale = math.inf  # set after construction, past any __post_init__ check
    with pytest.raises(InversionFileError, match="guidance"):
        save_inversion(replace(inversion, config=config), Path("never-written.nti"))
    assert not Path("never-written.nti").exists()


def test_info_refuses_an_inconsistent_file_in_one_line(good_nti, tmp_path, capsys):
    bad = rewrite(good_nti, tmp_path / "bad.nti", _set("image_size", ["32", 32]))
    code, out, err = run(capsys, "info", bad)
    assert_one_line_error(code, err, "image_size")
    assert out == ""


def test_byte_level_corruption_never_reaches_torch(good_nti, tiny, tmp_path_factory):
    """Flipped, truncated and inserted bytes: a valid Inversion or InversionFileError, nothing else."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    raw = good_nti.read_bytes()
    folder = tmp_path_factory.mktemp("fuzz")
    edits = st.lists(st.tuples(st.sampled_from(["flip", "truncate", "insert", "header"]),
                               st.integers(0, len(raw) - 1), st.binary(min_size=1, max_size=8)),
                     min_size=1, max_size=4)

    @settings(max_examples=50, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(edits)
    def check(ops):
        data_ = bytearray(raw)
        header_end = 8 + int.from_bytes(raw[:8], "little")
        for op, at, blob in ops:
            at = at % max(1, len(data_))
            if op == "flip":
                data_[at] ^= blob[0] or 0xFF
            elif op == "truncate":
                del data_[at:]
            elif op == "insert":
                data_[at:at] = blob
            else:  # a byte inside the JSON header, where a flip keeps the file parseable more often
                data_[8 + at % max(1, header_end - 8)] ^= (blob[0] or 1)
        path = folder / "fuzzed.nti"
        path.write_bytes(bytes(data_))
        for model in (None, tiny):
            try:
                inv = load_inversion(path, model)
            except InversionFileError as e:
                assert "\n" not in str(e)
            else:
                assert inv.latent_T.shape[1] == 4 and torch.isfinite(inv.null_embeddings).all()

    check()


# ---------------------------------------------------------------------------------------------
# 2. Settings at their edges


@pytest.mark.parametrize("argv, needle", [
    (["--steps", "1000"], "use e.g. --steps 999"),
    (["--guidance", "nan"], "guidance nan must be a finite number"),
    (["--guidance", "inf"], "guidance inf must be a finite number"),
    (["--guidance", "1e999"], "guidance inf"),
    (["--lr", "nan"], "lr nan must be a finite number"),
    (["--lr", "0"], "lr 0.0 must be positive"),
    (["--size", "8192x8192"], "GiB"),
    (["--size", "0x32"], "positive"),
])
def test_settings_at_their_edges_are_refused_before_the_work(argv, needle, photo, tiny_dir, tmp_path, capsys,
                                                             monkeypatch):
    monkeypatch.setattr("nulltext.inversion.null_text.invert", lambda *a, **k: pytest.fail("inverted with bad settings"))
    code, out, err = run(capsys, "invert", photo[0], "--prompt", photo[1], "--model", tiny_dir,
                         "-o", tmp_path / "x.nti", "-q", *argv)
    assert_one_line_error(code, err, needle)
    assert files(tmp_path) == {}


@pytest.mark.parametrize("argv, needle", [
    (["--threshold", "nan"], "blend threshold nan"), (["--blend-start", "2"], "blend start 2.0"),
    (["--reweight", "circle=inf"], "reweight scale inf"), (["--cross", "0.2,nan"], "step range"),
])
def test_edit_settings_at_their_edges(argv, needle, good_nti, tiny_dir, tmp_path, capsys):
    code, out, err = run(capsys, "edit", good_nti, "a circle", "--model", tiny_dir, "-o", tmp_path / "e", "-q", *argv)
    assert_one_line_error(code, err, needle)
    assert files(tmp_path) == {}


def test_step_limit_is_the_schedulers_own(tiny):
    config = dict(tiny.scheduler_config)
    assert config["num_train_timesteps"] == 1000 and config["steps_offset"] == 1
    assert make_schedule(config, 999).num_steps == 999
    with pytest.raises(ScheduleError, match=r"1000 DDIM steps do not fit .* use e.g. --steps 999"):
        make_schedule(config, 1000)
    trailing = {**config, "timestep_spacing": "trailing", "steps_offset": 0}
    schedule = make_schedule(trailing, 1000)  # steps = training timesteps works where the spacing allows it
    assert schedule.num_steps == 1000 and schedule.timesteps.tolist() == list(range(1000))


def test_scheduler_configs_diffusers_cannot_use_are_one_line_errors(tiny):
    """Bad values reach ScheduleError whether nulltext's checks or diffusers find them; never a traceback."""
    config = dict(tiny.scheduler_config)
    with pytest.raises(ScheduleError, match="trained_betas has 2 values but num_train_timesteps is 1000"):
        make_schedule({**config, "trained_betas": [0.1, 0.2]}, 50)
    with pytest.raises(ScheduleError, match="DDIMScheduler refuses .*cosine_x is not implemented"):
        make_schedule({**config, "beta_schedule": "cosine_x"}, 50)
    with pytest.raises(ScheduleError, match="DDIMScheduler refuses"):
        make_schedule({**config, "beta_start": -1.0}, 50)  # torch refuses the complex sqrt
    betas = [0.0001 + i * 1e-5 for i in range(1000)]
    assert make_schedule({**config, "trained_betas": betas}, 50).num_steps == 50


def test_settings_checks_hold_in_the_library_and_in_the_file_loader(good_nti, tmp_path):
    from nulltext.editing.config import EditConfig

    for bad in (dict(guidance_scale=math.nan), dict(learning_rate=-1.0), dict(num_steps=0), dict(inner_steps=1.5),
                dict(method="nope"), dict(pivot_guidance_scale=math.inf)):
        with pytest.raises(ValueError):
            InversionConfig(**bad)
        name, value = next(iter(bad.items()))
        with pytest.raises(InversionFileError, match="has invalid settings"):
            load_inversion(rewrite(good_nti, tmp_path / "bad.nti", _set_config(name, value)))
    with pytest.raises(ValueError, match="step range"):
        EditConfig(cross_replace=(0.8, 0.2))


def test_memory_estimate_refuses_what_cannot_fit(tiny, monkeypatch):
    small, huge = tiny.memory_needed((32, 32)), tiny.memory_needed((8192, 8192))
    assert small < 2**26 and huge > 2**50  # attention over 4096² latent pixels: petabytes
    assert tiny.memory_needed((64, 64)) > small
    tiny.check_size((32, 32))
    monkeypatch.setattr("nulltext.model.compute.available_memory", lambda device: small - 1)
    with pytest.raises(SizeError, match=rf"needs at least {small / 2**30:,.1f} GiB on cpu"):
        tiny.check_size((32, 32))


# ---------------------------------------------------------------------------------------------
# 3. Model sources


@pytest.fixture
def no_network(monkeypatch):
    """Record (and refuse) every TCP connection attempt."""
    import socket

    attempts = []

    def refuse(address, *args, **kwargs):
        attempts.append(address)
        raise OSError(errno.ENETUNREACH, "network is unreachable")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", lambda self, address: refuse(address))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return attempts


def _checkpoint(path: Path, keys: list[str]) -> Path:
    save_file({k: torch.zeros(2) for k in keys}, str(path))
    return path


@pytest.mark.parametrize("kind, needle", [
    ("lora", "not a Stable Diffusion checkpoint"),
    ("sdxl", "SDXL"),
    ("transformer", "an SD 3.x transformer checkpoint without its VAE"),
    ("flux", "FLUX-like: a guidance-distilled transformer"),
    ("sd3_keys", "as an SD 3.x checkpoint"),
    ("sd_keys", "as an SD 1.x/2.x checkpoint"),  # the right names, but nothing diffusers can build
    ("sdxl_keys", "as an SDXL checkpoint"),
    ("not_safetensors", "not a readable .safetensors"),
])
def test_a_local_checkpoint_never_reaches_the_network(kind, needle, tmp_path, no_network):
    path = tmp_path / f"{kind}.safetensors"
    if kind == "not_safetensors":
        path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    else:
        _checkpoint(path, {
            "lora": ["lora_unet_down.weight"],
            "sdxl": ["conditioner.embedders.0.x", "model.diffusion_model.input_blocks.0.0.weight"],
            "transformer": ["model.diffusion_model.joint_blocks.0.x"],
            "flux": ["double_blocks.0.img_attn.qkv.weight"],
            "sd3_keys": ["model.diffusion_model.joint_blocks.0.x", "first_stage_model.x"],
            "sd_keys": ["model.diffusion_model.input_blocks.0.0.weight", "first_stage_model.x", "cond_stage_model.y"],
            "sdxl_keys": ["model.diffusion_model.input_blocks.0.0.weight", "first_stage_model.x",
                          "conditioner.embedders.0.y"],
        }[kind])
    with pytest.raises(ModelLoadError, match=needle) as e:
        load_model(path, device="cpu")
    assert "\n" not in str(e.value) and str(path) in str(e.value)
    assert no_network == []


def test_a_local_folder_never_reaches_the_network(tiny_dir, no_network):
    assert load_model(tiny_dir, device="cpu").latent_channels == 4
    assert no_network == []


def test_an_uncached_hub_id_offline_is_one_quick_line(no_network):
    with pytest.raises(ModelLoadError, match="not in the local Hugging Face cache and the hub cannot be reached"):
        load_model("someone/not-cached-model", device="cpu")
    assert len(no_network) == 1  # one reachability probe, no retries


def test_a_pickle_is_refused_without_allow_pickle_and_quiet_with_it(tmp_path, capfd):
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"\x80\x04\x95not really a pickle")
    with pytest.raises(ModelLoadError, match="pickle, which can run code .* --allow-pickle"):
        load_model(ckpt, device="cpu")
    with pytest.raises(ModelLoadError) as e:
        load_model(ckpt, device="cpu", allow_pickle=True)
    assert "\n" not in str(e.value)
    out, err = capfd.readouterr()
    assert out == "" and err == ""  # no library noise


def _variant(tiny_dir: Path, tmp_path: Path, kind: str) -> Path:
    import shutil

    folder = tmp_path / kind
    shutil.copytree(tiny_dir, folder)

    def edit(name, **changes):
        p = folder / name
        p.write_text(json.dumps({**json.loads(p.read_text()), **changes}))

    if kind == "sd3":
        edit("model_index.json", _class_name="StableDiffusion3Pipeline")
    elif kind == "inpainting":
        edit("unet/config.json", in_channels=9)
    elif kind == "text_time_without_pooled":
        edit("unet/config.json", addition_embed_type="text_time")
    elif kind == "flux_transformer":
        shutil.rmtree(folder / "unet")
        (folder / "transformer").mkdir()
        edit("model_index.json", _class_name="FluxPipeline", transformer=["diffusers", "FluxTransformer2DModel"], unet=None)
        index = json.loads((folder / "model_index.json").read_text())
        del index["unet"]
        (folder / "model_index.json").write_text(json.dumps(index))
    elif kind == "image_variation":
        shutil.rmtree(folder / "text_encoder")
        edit("model_index.json", _class_name="StableDiffusionImageVariationPipeline",
             image_encoder=["transformers", "CLIPVisionModelWithProjection"], text_encoder=None)
    elif kind == "no_text_encoder":
        shutil.rmtree(folder / "text_encoder")
    elif kind == "unknown_pipeline":
        edit("model_index.json", _class_name="SomeFuturePipeline")
    return folder


@pytest.mark.parametrize("kind, needle", [
    ("sd3", "StableDiffusion3Pipeline without its transformer"), ("inpainting", "UNet takes 9"),
    ("text_time_without_pooled", "text_time"), ("no_text_encoder", "without a text encoder"),
    ("unknown_pipeline", "SomeFuturePipeline"), ("flux_transformer", "FluxPipeline, FLUX.1, a guidance-distilled transformer: it has no unconditional branch"),
    ("image_variation", "image-variation model"),
])
def test_unsupported_architectures_are_refused_at_load(kind, needle, tiny_dir, tmp_path, photo, capsys):
    folder = _variant(tiny_dir, tmp_path, kind)
    with pytest.raises(ModelLoadError, match=needle) as e:
        load_model(folder, device="cpu")
    assert "nulltext supports Stable Diffusion 1.x/2.x, SDXL and SD 3.x models (StableDiffusionPipeline" in str(e.value)
    code, out, err = run(capsys, "invert", photo[0], "--prompt", photo[1], "--model", folder, "-o", tmp_path / "x.nti")
    assert_one_line_error(code, err, needle)
    assert not (tmp_path / "x.nti").exists()


# ---------------------------------------------------------------------------------------------
# 4. Races on outputs


def test_a_file_appearing_during_the_run_is_kept_and_the_result_written_beside_it(photo, tiny_dir, tmp_path, capsys,
                                                                                  monkeypatch):
    target = tmp_path / "x.nti"
    real = save_file

    def other_run_finishes_first(tensors, filename, metadata=None):
        target.write_bytes(b"the other run's result")
        real(tensors, filename, metadata=metadata)

    monkeypatch.setattr("nulltext.inversion.file.save_file", other_run_finishes_first)
    code, out, err = run(capsys, "invert", photo[0], "--prompt", photo[1], "--model", tiny_dir, "-o", target,
                         "--steps", 2, "--inner-steps", 1, "-q")
    assert_one_line_error(code, err, "appeared while nulltext was working", "x.2.nti")
    assert target.read_bytes() == b"the other run's result"
    assert load_inversion(tmp_path / "x.2.nti").config.num_steps == 2
    assert sorted(files(tmp_path)) == ["x.2.nti", "x.nti"]


def test_concurrent_writers_of_one_name_both_keep_their_result(tmp_path):
    target, barrier, outcomes = tmp_path / "out.png", threading.Barrier(4), []

    def writer(n: int) -> None:
        def write(tmp: Path) -> None:
            tmp.write_text(f"result {n}")
            barrier.wait()  # all four have written; now all publish at once

        try:
            publish(target, write, keep_both=True)
            outcomes.append("published")
        except OutputExistsError as e:
            outcomes.append(str(e))

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count("published") == 1 and sum("appeared while" in o for o in outcomes) == 3
    contents = files(tmp_path)
    assert sorted(contents) == ["out.2.png", "out.3.png", "out.4.png", "out.png"]
    assert sorted(contents.values()) == [f"result {n}".encode() for n in range(4)]


def test_without_keep_both_an_appearing_file_is_kept_and_nothing_written(tmp_path):
    target = tmp_path / "a.txt"
    with pytest.raises(OutputExistsError, match="exists; pass --force"):
        publish(target, lambda tmp: (target.write_text("theirs"), tmp.write_text("ours")))
    assert files(tmp_path) == {"a.txt": b"theirs"}
    publish(target, lambda tmp: tmp.write_text("ours"), force=True)
    assert files(tmp_path) == {"a.txt": b"ours"}


# ---------------------------------------------------------------------------------------------
# 5. Interrupts, a full disk, unwritable outputs


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_stale_temp_files_of_dead_runs_are_removed_by_the_next_write(tmp_path):
    dead = tmp_path / f".x.nti.{_dead_pid()}.abcd{TEMP_SUFFIX}"
    alive = tmp_path / f".y.nti.{os.getppid()}.abcd{TEMP_SUFFIX}"  # a running process's write in progress
    old_alive = tmp_path / f".z.nti.{os.getppid()}.abcd{TEMP_SUFFIX}"
    foreign = tmp_path / ".notes.part"  # not ours: never touched
    for p in (dead, alive, old_alive, foreign):
        p.write_text("partial")
    os.utime(old_alive, (0, 0))  # 1970: older than any write takes
    publish(tmp_path / "new.txt", lambda tmp: tmp.write_text("done"))
    assert sorted(files(tmp_path)) == sorted([alive.name, foreign.name, "new.txt"])


def test_sigkill_during_a_write_leaves_a_temp_file_the_next_run_removes(tmp_path):
    script = (f"import sys, time; sys.path.insert(0, {str(Path(__file__).parents[1] / 'src')!r})\n"
              "from nulltext.io.outputs import publish\n"
              "def write(tmp):\n"
              "    tmp.write_text('half'); print('writing', flush=True); time.sleep(60)\n"
              f"publish({str(tmp_path / 'out.nti')!r}, write)\n")
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "writing"
    child.kill()
    child.wait()
    left = [p for p in tmp_path.iterdir() if p.name.endswith(TEMP_SUFFIX)]
    assert len(left) == 1 and left[0].name.startswith(".out.nti.")
    assert remove_stale_temps(tmp_path) == left and files(tmp_path) == {}


def _full_disk(tensors, filename, metadata=None):
    with open(filename, "wb") as f:
        f.write(b"half an inversion")
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_is_one_line_and_leaves_no_temp_file(photo, tiny_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("nulltext.inversion.file.save_file", _full_disk)
    argv = ["invert", photo[0], "--prompt", photo[1], "--model", tiny_dir, "--steps", 2, "--inner-steps", 1, "-q"]
    code, out, err = run(capsys, *argv, "-o", tmp_path / "x.nti")
    assert_one_line_error(code, err, "cannot write", "x.nti", "the disk is full", "free some space")
    assert files(tmp_path) == {}
    (tmp_path / "x.nti").write_bytes(b"an earlier result")  # --force over an existing file: it survives
    code, out, err = run(capsys, *argv, "-o", tmp_path / "x.nti", "--force")
    assert_one_line_error(code, err, "the disk is full")
    assert files(tmp_path) == {"x.nti": b"an earlier result"}


def test_library_write_errors_are_typed(tmp_path, inversion, monkeypatch):
    monkeypatch.setattr("nulltext.inversion.file.save_file", _full_disk)
    with pytest.raises(OutputError, match="the disk is full") as e:
        save_inversion(inversion, tmp_path / "x.nti")
    assert e.value.errno == errno.ENOSPC and isinstance(e.value, OSError) and files(tmp_path) == {}


@pytest.mark.parametrize("where, needle", [
    ("under_a_file", "is a file, not a folder"),
    ("onto_a_folder", "it is a folder"),
    ("read_only", "read-only"),
    ("exists", "exists; pass --force"),
])
def test_unwritable_outputs_are_found_before_the_work(where, needle, photo, tiny_dir, tmp_path, capsys, monkeypatch):
    (tmp_path / "a_file").write_text("keep me")
    (tmp_path / "a_folder").mkdir()
    (tmp_path / "done.nti").write_text("an earlier result")
    out = {"under_a_file": tmp_path / "a_file" / "sub" / "x.nti", "onto_a_folder": tmp_path / "a_folder",
           "read_only": tmp_path / "x.nti", "exists": tmp_path / "done.nti"}[where]
    if where == "read_only":  # tests run as root, which writes anywhere: the probe's creation fails as on a RO mount
        real_open = os.open

        def read_only(path, flags, mode=0o777, **kw):
            if str(path).endswith(TEMP_SUFFIX):
                raise OSError(errno.EROFS, "Read-only file system")
            return real_open(path, flags, mode, **kw)

        monkeypatch.setattr("nulltext.io.outputs.os.open", read_only)
    monkeypatch.setattr("nulltext.model.load_model", lambda *a, **k: pytest.fail("loaded the model first"))
    before = files(tmp_path)
    code, _, err = run(capsys, "invert", photo[0], "--prompt", photo[1], "--model", tiny_dir, "-o", out, "-q")
    assert_one_line_error(code, err, needle)
    assert files(tmp_path) == before
    code, _, err = run(capsys, "edit", tmp_path / "missing.nti", "-o", tmp_path / "a_file", "--model", tiny_dir)
    assert_one_line_error(code, err, "is a file, not a folder")


def test_ctrl_c_clears_the_progress_bar_and_leaves_nothing(photo, tiny_dir, tmp_path, capsys, monkeypatch):
    from nulltext.inversion import StepReport

    def interrupted(model, image, prompt, config, callback, **kw):
        callback(StepReport(1, config.num_steps, timestep=999, inner_iterations=3, loss=0.5))  # the bar is on screen …
        raise KeyboardInterrupt  # … when Ctrl-C comes

    monkeypatch.setattr("nulltext.inversion.null_text.invert", interrupted)
    code, out, err = run(capsys, "invert", photo[0], "--prompt", photo[1], "--model", tiny_dir, "-o", tmp_path / "x.nti")
    assert code == 130 and "loss=" in err
    assert err.split("\r")[-1].startswith("nulltext: interrupted")  # on a cleared line, not after the bar
    assert files(tmp_path) == {}


def test_pillow_warnings_do_not_leak(tmp_path, monkeypatch):
    image = Image.new("RGB", (48, 48), (200, 30, 30))
    exif = Image.Exif()
    exif[0x0112], exif[0x010E] = 6, "a description long enough to live outside the IFD"
    image.save(tmp_path / "exif.jpg", exif=exif.tobytes())
    raw = bytearray((tmp_path / "exif.jpg").read_bytes())
    at = raw.find(b"Exif") + 6 + 10 + 4  # the description tag's count field: now larger than the file
    raw[at] ^= 0xFF
    (tmp_path / "exif.jpg").write_bytes(bytes(raw))
    image.save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 48 * 48 * 3 // 4)  # 48×48 is over the limit, under twice it
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert load_image(tmp_path / "exif.jpg", 32).image.size == (32, 32)
        assert load_image(tmp_path / "big.png", 32).image.size == (32, 32)
    assert [str(w.message) for w in caught] == []
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 48 * 48 // 3)  # over twice the limit: a one-line refusal
    with pytest.raises(ImageError, match="too large to decode safely"):
        load_image(tmp_path / "big.png", 32)


def test_unexpected_errors_are_one_line_with_a_pointer_to_debug(good_nti, capsys, monkeypatch):
    def broken(*args, **kwargs):
        raise KeyError("an internal surprise\nwith a second line")

    monkeypatch.setattr("nulltext.inversion.header.read_file_header", broken)
    code, out, err = run(capsys, "info", good_nti)
    assert_one_line_error(code, err, "KeyError", "an internal surprise", "(run with --debug for the traceback)")
    with pytest.raises(KeyError):
        main(["info", str(good_nti), "--debug"])


# ---------------------------------------------------------------------------------------------
# 6. Prompts with invalid UTF-8


@pytest.mark.parametrize("where, name", [("prompt", "--prompt"), ("target", "a target prompt"), ("blend", "--blend"),
                                         ("reweight", "--reweight")])
def test_invalid_utf8_on_the_command_line_names_the_argument(where, name, photo, good_nti, tiny_dir, tmp_path, capsys):
    bad = os.fsdecode(b"a red \xff\xfe circle")  # what Python makes of undecodable argv bytes
    if where == "prompt":
        argv = ["invert", photo[0], "--prompt", bad, "-o", tmp_path / "x.nti"]
    else:
        argv = ["edit", good_nti, bad if where == "target" else "a circle", "-o", tmp_path / "e"]
        argv += {"target": [], "blend": ["--blend", bad], "reweight": ["--reweight", f"{bad}=2"]}[where]
    code, out, err = run(capsys, *argv, "--model", tiny_dir, "-q")
    assert_one_line_error(code, err, f"{name} is not valid UTF-8", "byte 0xff at character 7")
    assert files(tmp_path) == {}


def test_invalid_utf8_prompt_is_a_typed_library_error(tiny, photo):
    bad = os.fsdecode(b"a red \xff circle")
    with pytest.raises(PromptError, match=r"not valid UTF-8 \(byte 0xff at character 7\)"):
        tiny.check_prompt(bad)
    with pytest.raises(PromptError, match="not valid UTF-8"):
        invert(tiny, to_tensor(Image.open(photo[0]).convert("RGB")), bad, InversionConfig(num_steps=2))
