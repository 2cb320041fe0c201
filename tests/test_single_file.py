"""Single-file checkpoints: the bundled model (and a tiny SDXL) written in the original Stable Diffusion key layout
load through diffusers' from_single_file, offline with a local config, as the same model; pickles only when allowed."""

import pytest
import torch
from safetensors.torch import save_file

from nulltext.bundled import data
from nulltext.cli import _load_model, build_parser
from nulltext.editing import reconstruct
from nulltext.io.images import to_tensor
from nulltext.inversion import InversionConfig, invert
from nulltext.inversion.file import load_inversion, save_inversion
from nulltext.model import ModelLoadError, bundled_model_path, load_model
from original_layout import original_sdxl_state_dict, original_state_dict


@pytest.fixture(scope="module")
def checkpoint(bundled, tmp_path_factory):
    folder = tmp_path_factory.mktemp("single")
    state = original_state_dict(bundled.unet, bundled.vae, bundled.text_encoder)
    save_file(state, str(folder / "bundled.safetensors"))
    return folder / "bundled.safetensors", state


def test_single_file_is_the_same_model_as_the_folder(bundled, checkpoint, tmp_path):
    path, state = checkpoint
    assert any(k.startswith("model.diffusion_model.input_blocks.") for k in state)  # the original layout
    model = load_model(path, device="cpu", config=bundled_model_path())
    assert model.identity == bundled.identity
    for ours, theirs in ((model.unet, bundled.unet), (model.vae, bundled.vae), (model.text_encoder, bundled.text_encoder)):
        a, b = ours.state_dict(), theirs.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert model.scheduler_config == bundled.scheduler_config
    image, caption = data.sample("test", 2, 32)
    inv = invert(bundled, to_tensor(image), caption, InversionConfig(num_steps=4, trials=2))
    loaded = load_inversion(save_inversion(inv, tmp_path / "folder.nti"), model)  # identity-checked
    assert torch.equal(reconstruct(model, loaded), reconstruct(bundled, inv))


def test_sdxl_single_file_is_the_same_model_as_the_folder(tiny_xl, tiny_xl_dir, tmp_path):
    path = tmp_path / "xl.safetensors"
    state = original_sdxl_state_dict(tiny_xl.unet, tiny_xl.vae, tiny_xl.text_encoder, tiny_xl.text_encoder_2)
    assert any(k.startswith("conditioner.embedders.1.model.transformer.resblocks.") for k in state)  # OpenCLIP names
    save_file(state, str(path))
    model = load_model(path, device="cpu", config=tiny_xl_dir)
    assert model.identity == tiny_xl.identity and model.pooled_dim == tiny_xl.pooled_dim
    image, caption = data.sample("test", 2, 32)
    inv = invert(tiny_xl, to_tensor(image), caption, InversionConfig(num_steps=3, trials=2))
    loaded = load_inversion(save_inversion(inv, tmp_path / "folder.nti"), model)
    assert torch.equal(reconstruct(model, loaded), reconstruct(tiny_xl, inv))


def test_pickled_checkpoint_only_with_the_flag(bundled, checkpoint, tmp_path):
    _, state = checkpoint
    ckpt = tmp_path / "bundled.ckpt"
    torch.save({"state_dict": state}, ckpt)
    with pytest.raises(ModelLoadError) as e:
        load_model(ckpt, device="cpu", config=bundled_model_path())
    assert "\n" not in str(e.value) and "pickle" in str(e.value) and "--allow-pickle" in str(e.value)
    model = load_model(ckpt, device="cpu", config=bundled_model_path(), allow_pickle=True)
    assert model.identity == bundled.identity


def test_single_file_errors_are_one_line(checkpoint, tiny_xl_dir, tmp_path):
    path, _ = checkpoint
    with pytest.raises(ModelLoadError, match=r"an SD 1.x/2.x checkpoint but its config .* is for SDXL"):
        load_model(path, device="cpu", config=tiny_xl_dir)
    with pytest.raises(ModelLoadError, match="is not a folder"):
        load_model(path, device="cpu", config=tmp_path / "nowhere")
    args = build_parser().parse_args(["reconstruct", "x.nti", "--model", str(path), "--model-config", str(tiny_xl_dir)])
    with pytest.raises(ModelLoadError, match="its config"):  # the CLI's flag reaches load_model
        _load_model(args)
