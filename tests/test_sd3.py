"""SD 3.x end to end on a tiny random SD 3.x built from config offline (an MMDiT with joint attention, q/k
RMS norms and a dual-attention block, two CLIPs, T5, a shifted VAE, the flow-matching scheduler):
conditioning and schedule as diffusers builds them, the pivot as the flow ODE's Euler inversion,
null-text inversion against it, the .nti file replayed by the stock StableDiffusion3Pipeline,
Prompt-to-Prompt on joint attention, and the faces (CLI, batch, web app)."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

from nulltext.bundled import data
from nulltext.cli import main
from nulltext.core.ddim import ddim_step
from nulltext.core.sampling import guided_ddim
from nulltext.core.schedule import ScheduleError, make_schedule
from nulltext.editing import attention_maps, edit, reconstruct
from nulltext.editing.config import EditConfig
from nulltext.inversion import InversionConfig, invert
from nulltext.inversion.file import InversionFileError, check_model, load_inversion, save_inversion
from nulltext.inversion.pivot import ddim_invert
from nulltext.io.images import to_tensor
from nulltext.model import ModelLoadError, bundled_model_path, load_model
from numerics import relative_error
from stock_replay import stock_pooled_reconstruction
from pivot_checks import error_and_work, null_text_against_ddim

CAPTION_INDEX = 3  # "a blue triangle on a black background"


def _pipeline(model, scheduler_config, t5: bool = True) -> StableDiffusion3Pipeline:
    pipe = StableDiffusion3Pipeline(
        transformer=model.unet, vae=model.vae, text_encoder=model.text_encoder, tokenizer=model.tokenizer,
        text_encoder_2=model.text_encoder_2, tokenizer_2=model.tokenizer_2,
        text_encoder_3=model.text_encoder_3 if t5 else None, tokenizer_3=model.tokenizer_3 if t5 else None,
        scheduler=FlowMatchEulerDiscreteScheduler.from_config(scheduler_config))
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def photo(tiny_sd3):
    return data.sample("test", CAPTION_INDEX, tiny_sd3.default_size[0])


@pytest.fixture(scope="module")
def inversion(tiny_sd3, photo):
    return invert(tiny_sd3, to_tensor(photo[0]), photo[1], InversionConfig(num_steps=8))


def test_conditioning_is_what_the_sd3_pipeline_builds(tiny_sd3):
    """Both CLIPs' penultimate features side by side, padded to the joint width, then T5's; the pooled pair."""
    prompt = "a red circle on a blue background"
    ours = tiny_sd3.text_conditioning([prompt, ""])
    tokens, _, pooled, _ = _pipeline(tiny_sd3, tiny_sd3.scheduler_config).encode_prompt(
        [prompt, ""], None, None, do_classifier_free_guidance=False, max_sequence_length=tiny_sd3.max_sequence_length)
    assert ours.tokens.shape == (2, 16 + 256, 64) and ours.pooled.shape == (2, 16 + 32)
    assert torch.equal(ours.tokens, tokens) and torch.equal(ours.pooled, pooled)
    assert ours.tokens[:, :16, 48:].abs().max() == 0  # CLIP's 16 + 32 features, zero-padded to 64
    assert ours.tokens[:, 16:].abs().amax() > 0  # T5's features follow along the sequence
    with pytest.raises(ValueError, match="pooled"):  # token embeddings alone cannot drive the transformer
        tiny_sd3.predict(torch.zeros(1, 4, 16, 16), 500.0, ours.tokens[:1])


def test_the_schedule_and_step_are_the_flow_schedulers_own(tiny_sd3):
    """Shifted sigmas and float timesteps as FlowMatchEulerDiscreteScheduler sets them; our step is its Euler step."""
    ours = make_schedule(tiny_sd3.scheduler_config, 10)
    sched = FlowMatchEulerDiscreteScheduler.from_config(tiny_sd3.scheduler_config)
    sched.set_timesteps(10)
    assert ours.prediction_type == "flow" and ours.timesteps.dtype == torch.float32
    assert torch.equal(ours.timesteps, sched.timesteps.flip(0)) and torch.equal(ours.sigmas.float(), sched.sigmas.flip(0))
    assert ours.level(0) == (1.0, 0.0) and ours.sigmas[-1] == 1.0 and 0 < ours.sigmas[5] < 1
    z, v = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0)).unbind(0)
    for k, t in enumerate(sched.timesteps):  # sampling from level 10 down to 0, as the pipeline steps
        theirs = sched.step(v[None], t, z[None], return_dict=False)[0][0]
        assert torch.equal(ddim_step(v, z, 10 - k, ours), theirs)
    with pytest.raises(ScheduleError, match="use_dynamic_shifting"):  # a resolution-dependent shift (FLUX's)
        make_schedule({**tiny_sd3.scheduler_config, "use_dynamic_shifting": True}, 10)


@pytest.mark.parametrize("settings, needle", [
    ({"use_karras_sigmas": True, "use_exponential_sigmas": True}, "Only one of"),
    ({"time_shift_type": "cubic"}, "time_shift_type"),
    ({"use_beta_sigmas": True}, "scipy"),  # with scipy made unavailable below
])
def test_a_flow_config_diffusers_refuses_is_one_line(tiny_sd3, settings, needle, monkeypatch):
    import diffusers.schedulers.scheduling_flow_match_euler_discrete as flow

    monkeypatch.setattr(flow, "is_scipy_available", lambda: False)
    with pytest.raises(ScheduleError, match=needle) as e:
        make_schedule({**tiny_sd3.scheduler_config, **settings}, 10)
    assert "\n" not in str(e.value) and str(e.value).startswith("diffusers' FlowMatchEulerDiscreteScheduler refuses")


def test_the_pivot_is_the_flow_odes_inversion(tiny_sd3, photo):
    """Euler inversion at w = 1 with the sampler's own sigmas: replayed forward, it returns to z0 (the inversion's
    only error is evaluating the velocity at the level below); a step size halved halves that error."""
    x = to_tensor(photo[0])
    z0, cond = tiny_sd3.encode_image(x), tiny_sd3.text_conditioning([photo[1]])
    errors = []
    for steps in (10, 20):
        schedule = make_schedule(tiny_sd3.scheduler_config, steps)
        pivot = ddim_invert(tiny_sd3, z0, cond, schedule)
        with torch.no_grad():
            back = guided_ddim(tiny_sd3, pivot[-1:], cond, cond.expand(steps), schedule, 1.0)
        errors.append(float(((back - z0) ** 2).mean() / (z0 ** 2).mean()))
    assert errors[1] < 0.75 * errors[0], errors  # first order: halving the step roughly halves it


def test_null_text_follows_the_pivot_where_plain_inversion_drifts(tiny_sd3, photo):
    """The paper's claim on SD 3.x's architecture: latent MSE ≥ 10× lower than plain flow inversion at
    w = 7.5 (measured ~60× with the paper's Adam, ~180× with the default), PSNR near the VAE bound."""
    check = null_text_against_ddim(tiny_sd3, photo[0], photo[1], InversionConfig.paper(num_steps=10))
    nt = check.null_text
    assert nt.null_embeddings.shape == (10, 16 + 256, 64) and nt.null_pooled.shape == (10, 48)
    assert not torch.equal(nt.null_pooled[0], nt.null_pooled[-1])  # the pooled part is optimised too
    assert check.mse_null_text * 10 <= check.mse_ddim, \
        f"latent MSE null-text {check.mse_null_text:.2e} vs plain inversion {check.mse_ddim:.2e}"
    assert check.psnr >= check.vae_bound - 0.5, f"null-text PSNR {check.psnr:.2f} dB vs VAE bound {check.vae_bound:.2f} dB"


def test_default_optimiser_beats_the_papers_adam_at_under_half_its_work_on_sd3(tiny_sd3, photo):
    secant = error_and_work(tiny_sd3, photo[0], photo[1], InversionConfig(num_steps=10))
    adam = error_and_work(tiny_sd3, photo[0], photo[1], InversionConfig.paper(num_steps=10))
    assert secant.mse <= adam.mse and secant.passes <= adam.passes / 2, (secant, adam)


def stock_sd3_reconstruction(model, inversion):
    """diffusers' own SD 3.x pipeline: latents = z*_T, negative token and pooled embeddings = ∅_t per step."""
    return stock_pooled_reconstruction(_pipeline(model, inversion.scheduler_config), model, inversion, "pooled_prompt_embeds")


def test_the_file_round_trips_and_the_stock_pipeline_replays_it(tiny_sd3, tiny, inversion, tmp_path):
    loaded = load_inversion(save_inversion(inversion, tmp_path / "sd3.nti"), tiny_sd3)
    for name in ("latent_T", "null_embeddings", "null_pooled", "pivot"):
        assert torch.equal(getattr(loaded, name), getattr(inversion, name)), name
    assert loaded.scheduler_config["_class_name"] == "FlowMatchEulerDiscreteScheduler"
    ours, theirs = reconstruct(tiny_sd3, loaded), stock_sd3_reconstruction(tiny_sd3, loaded)
    assert (ours - theirs).abs().max() < 2e-3  # same sampler, two implementations
    plain = dataclasses.replace(loaded, null_pooled=loaded.null_pooled.clone())
    plain.null_pooled[:] = tiny_sd3.null_conditioning().pooled.float()  # ψ("")'s pooled part: it matters
    assert (stock_sd3_reconstruction(tiny_sd3, plain) - ours).abs().mean() > 20 * (ours - theirs).abs().mean()
    with pytest.raises(InversionFileError, match="made with model"):  # an SD 1.x model is not this one
        check_model(loaded, tiny)


def test_edits_on_joint_attention(tiny_sd3, inversion):
    """Row 0 is the reconstruction; the target row's cross maps are the source's (the word swap's injection);
    with local blend on the swapped word, the edit changes its region and leaves every other latent pixel."""
    target = inversion.prompt.replace("blue", "green")
    result = edit(tiny_sd3, inversion, [target], EditConfig(cross_replace=1.0, composite="off"), record_attention=True)
    assert relative_error(result.images[0], reconstruct(tiny_sd3, inversion)[0]) < 1e-3  # measured ~1e-6
    assert (result.images[1] - result.images[0]).abs().mean() > 1e-2  # the target differs
    # every step injects the source's maps into the target: their attention per token is the source's
    assert relative_error(result.attention[1], result.attention[0]) < 1e-4
    free = edit(tiny_sd3, inversion, [target], EditConfig(cross_replace=0.0, self_replace=0.0, composite="off"),
                record_attention=True)
    assert relative_error(free.attention[1], free.attention[0]) > 1e-3  # without injection they differ

    blended = edit(tiny_sd3, inversion, [target], EditConfig(blend_words=["blue"], blend_threshold=0.9,
                                                              blend_dilation=0.0, blend_min_radius=0, composite="off"))
    mask = blended.masks[0]
    assert 0 < mask.float().mean() < 1, "the word's region is part of the picture"
    change = (blended.latents[1] - blended.latents[0]).abs().mean(0)  # (h, w)
    assert change[mask].mean() > 1e-2 and change[~mask].max() == 0


def test_attention_maps_per_caption_token(tiny_sd3, inversion):
    tokens, maps, image = attention_maps(tiny_sd3, inversion)
    assert tokens == inversion.prompt.split() + ["<|endoftext|>"]
    assert maps.shape == (len(tokens), *inversion.latent_T.shape[-2:]) and maps.amax((1, 2)).allclose(torch.ones(len(tokens)))
    assert relative_error(image, reconstruct(tiny_sd3, inversion)) < 1e-6  # recording leaves the layers' outputs as they were


def test_without_t5_the_text_sequence_has_zeros_where_t5_was(tiny_sd3_dir, tmp_path, photo):
    """T5 is optional, as in the pipeline: zeros of T5's length; the model inverts and edits without it."""
    folder = tmp_path / "no_t5"
    shutil.copytree(tiny_sd3_dir, folder)
    shutil.rmtree(folder / "text_encoder_3"), shutil.rmtree(folder / "tokenizer_3")
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "text_encoder_3": [None, None],
                                                         "tokenizer_3": [None, None]}))
    model = load_model(folder, device="cpu")
    assert model.text_encoder_3 is None
    cond = model.text_conditioning([photo[1]])
    tokens, _, pooled, _ = _pipeline(model, model.scheduler_config, t5=False).encode_prompt(
        photo[1], None, None, do_classifier_free_guidance=False)
    assert torch.equal(cond.tokens, tokens) and torch.equal(cond.pooled, pooled) and cond.tokens[:, 16:].abs().max() == 0
    inv = invert(model, to_tensor(photo[0]), photo[1], InversionConfig(num_steps=4))
    assert edit(model, inv, [photo[1].replace("blue", "red")]).images.shape == (2, 3, 32, 32)


def test_batched_inversion_is_each_photos_inversion(tiny_sd3, photo):
    """K photos per transformer call give what K single inversions give (token and pooled parts of ∅_t)."""
    from nulltext.inversion import invert_batch

    other = data.sample("test", 0, tiny_sd3.default_size[0])
    config = InversionConfig(num_steps=4)
    batch = invert_batch(tiny_sd3, [to_tensor(photo[0]), to_tensor(other[0])], [photo[1], other[1]], config)
    for inv, (image, caption) in zip(batch, (photo, other)):
        alone = invert(tiny_sd3, to_tensor(image), caption, config)
        assert relative_error(inv.latent_T, alone.latent_T) < 1e-4
        assert relative_error(inv.null_pooled, alone.null_pooled) < 1e-3
        assert relative_error(reconstruct(tiny_sd3, inv), reconstruct(tiny_sd3, alone)) < 1e-3


def test_bfloat16_reconstructs_as_float32(tiny_sd3_dir, tiny_sd3, photo):
    """The transformer and encoders in bf16, ∅_t and the loss in fp32: the reconstruction within 0.1 dB of fp32's."""
    from nulltext.evaluation.metrics import psnr
    from nulltext.io.images import to_pil

    half = load_model(tiny_sd3_dir, device="cpu", dtype="bfloat16")
    assert half.unet.dtype == torch.bfloat16 and half.identity == tiny_sd3.identity
    scores = []
    for model in (tiny_sd3, half):
        inv = invert(model, to_tensor(photo[0]), photo[1], InversionConfig(num_steps=6))
        assert inv.null_embeddings.dtype == torch.float32 and inv.null_pooled.dtype == torch.float32
        scores.append(psnr(to_pil(reconstruct(model, inv))[0], photo[0]))
    assert abs(scores[1] - scores[0]) < 0.1, scores


def test_a_loaded_sd3_pipeline_is_the_folders_model(tiny_sd3, tiny_sd3_dir, inversion):
    pipe = StableDiffusion3Pipeline.from_pretrained(tiny_sd3_dir, local_files_only=True)
    model = load_model(pipe)
    assert model.unet is pipe.transformer and model.identity == tiny_sd3.identity
    assert torch.equal(reconstruct(model, inversion), reconstruct(tiny_sd3, inversion))


def test_the_faces_take_the_model(tiny_sd3_dir, photo, tmp_path, capsys):
    """invert, info, reconstruct, edit, attention and batch through the CLI."""
    path = tmp_path / "photo.png"
    photo[0].save(path)
    nti = tmp_path / "x.nti"
    common = ["--model", str(tiny_sd3_dir), "--quiet"]
    assert main(["invert", str(path), "--prompt", photo[1], "-o", str(nti), "--steps", "6", *common]) == 0
    assert main(["info", str(nti)]) == 0
    out = capsys.readouterr().out
    assert photo[1] in out and "6 flow-matching Euler steps" in out and "pooled (6, 48)" in out
    assert main(["reconstruct", str(nti), "-o", str(tmp_path / "rec.png"), *common[:2]]) == 0
    psnr, bound = (float(part.split(" dB")[0].split()[-1]) for part in capsys.readouterr().out.split(";"))
    assert psnr >= bound - 0.5, (psnr, bound)  # at the VAE-only bound, as the paper claims
    assert main(["edit", str(nti), photo[1].replace("blue", "red"), "-o", str(tmp_path / "edits"), "--blend", "blue",
                 *common]) == 0
    assert (tmp_path / "edits" / "edit_01.png").exists() and (tmp_path / "edits" / "edit_01_mask.png").exists()
    assert main(["attention", str(nti), "-o", str(tmp_path / "maps.png"), *common]) == 0
    assert (tmp_path / "maps.png").exists()
    manifest = tmp_path / "rows.jsonl"
    manifest.write_text(json.dumps({"image": str(path), "prompt": photo[1], "num_steps": 4,
                                    "edits": [photo[1].replace("blue", "red")]}) + "\n")
    assert main(["batch", str(manifest), "-o", str(tmp_path / "out"), *common]) == 0
    [row] = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert row["status"] == "done" and (tmp_path / "out" / row["inversion"]).exists(), row


def test_the_web_app_inverts_and_edits_with_it(tiny_sd3, photo, tmp_path):
    pytest.importorskip("gradio")
    from nulltext.app import Session, WebApp

    path = tmp_path / "photo.png"
    photo[0].save(path)
    app, session = WebApp(tiny_sd3), Session()
    app.invert(session, str(path), photo[1], method="null-text", steps=4, guidance=7.5, trials=3,
               progress=lambda *a, **k: None)
    assert session.inversion is not None and session.inversion.null_pooled.shape == (4, 48)
    gallery, edited, files, note, maps = app.edit(session, photo[1].replace("blue", "red"), "auto", 0.8, 0.4, "", "blue",
                                                  "", None, lambda *a, **k: None)
    assert edited.size == photo[0].size and files and note.startswith("Edited")


def test_architectures_sd3_cannot_drive_are_refused_in_one_line(tiny_sd3_dir, tmp_path):
    folder = tmp_path / "wide_t5"
    shutil.copytree(tiny_sd3_dir, folder)
    config = json.loads((folder / "text_encoder_3" / "config.json").read_text())
    (folder / "text_encoder_3" / "config.json").write_text(json.dumps({**config, "d_model": 96}))
    with pytest.raises(ModelLoadError, match="reading 64-wide text while its T5 encoder gives 96") as e:
        load_model(folder, device="cpu")
    assert "\n" not in str(e.value)
    lora = tmp_path / "style.safetensors"
    lora.write_bytes(b"")
    with pytest.raises(ModelLoadError, match="LoRAs on SD 3.x"):
        load_model(tiny_sd3_dir, device="cpu", loras=[str(lora)])


def test_a_flux_folder_is_refused_naming_why(tiny_sd3_dir, tmp_path):
    folder = tmp_path / "flux"
    shutil.copytree(tiny_sd3_dir, folder)
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "_class_name": "FluxPipeline"}))
    with pytest.raises(ModelLoadError, match="guidance-distilled transformer: it has no unconditional branch"):
        load_model(folder, device="cpu")


def test_a_single_file_checkpoint_is_the_folders_model(tiny_sd3, tiny_sd3_dir, inversion, tmp_path):
    """The transformer and VAE under original (Stability) names, the text encoders from the config folder, as
    SD 3 Medium's smallest file is used: the same weights identity, a bit-identical reconstruction."""
    from safetensors.torch import save_file

    from original_layout import original_sd3_state_dict

    path = tmp_path / "sd3_tiny.safetensors"
    save_file(original_sd3_state_dict(tiny_sd3.unet, tiny_sd3.vae), str(path))
    model = load_model(path, device="cpu", config=tiny_sd3_dir)
    assert model.identity == tiny_sd3.identity and model.text_encoder_3 is not None
    assert torch.equal(reconstruct(model, inversion), reconstruct(tiny_sd3, inversion))
    with pytest.raises(ModelLoadError, match=r"an SD 3.x checkpoint but its config .* is for SD 1.x/2.x"):
        load_model(path, device="cpu", config=bundled_model_path())


def test_a_hub_id_in_the_local_cache_loads_without_the_network(tiny_sd3, tiny_sd3_dir, photo, tmp_path):
    """`--model owner/name` from the Hugging Face cache's layout (refs/main → snapshots/<commit>), in a fresh
    process: the configs are checked, then the weights read, and the file is the folder model's."""
    import os
    import subprocess
    import sys

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--tiny--sd3"
    shutil.copytree(tiny_sd3_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    photo[0].save(tmp_path / "photo.png")
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "OMP_NUM_THREADS": "1"}
    env.pop("HF_HUB_OFFLINE", None)  # the cache is read first, so the hub is never asked
    done = subprocess.run([sys.executable, "-m", "nulltext.cli", "invert", str(tmp_path / "photo.png"), "--prompt", photo[1],
                           "--model", "tiny/sd3", "--steps", "3", "-o", str(tmp_path / "hub.nti"), "--quiet"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert load_inversion(tmp_path / "hub.nti").model_identity == tiny_sd3.identity


class _Reweight:
    """A controller that triples one token's cross-attention; `self_too` also asks for the self map (unchanged)."""

    rewrites = True

    def __init__(self, self_too: bool):
        self.self_too = self_too

    def wants(self, layer: str, is_cross: bool, pixels: int) -> bool:
        return is_cross or self.self_too

    def __call__(self, layer: str, is_cross: bool, probs: torch.Tensor) -> torch.Tensor:
        if not is_cross:
            return probs
        out = probs.clone()
        out[..., 2] *= 3.0
        return out


def test_the_lean_cross_path_is_the_explicit_layer(tiny_sd3):
    """With no self map wanted, a joint layer adds (P'_text − P_text)·V_text to its fused output instead of building
    the (pixels × pixels) matrix: the same output as the explicit layer, and not the unedited one."""
    from diffusers.models.attention_processor import JointAttnProcessor2_0

    from nulltext.editing.joint_attention import controlled_joint_attention

    attn = tiny_sd3.unet.transformer_blocks[0].attn
    g = torch.Generator().manual_seed(0)
    image, text = torch.randn(4, 64, 32, generator=g), torch.randn(4, 272, 32, generator=g)
    original = JointAttnProcessor2_0()
    with torch.no_grad():
        lean = controlled_joint_attention(attn, original, _Reweight(False), "block", 16, image, text)
        explicit = controlled_joint_attention(attn, original, _Reweight(True), "block", 16, image, text)
        plain = original(attn, image, text)
    assert relative_error(lean[0], explicit[0]) < 1e-5 and relative_error(lean[1], explicit[1]) < 1e-5
    assert relative_error(lean[0], plain[0]) > 1e-3 and torch.equal(lean[1], plain[1])  # text rows untouched
