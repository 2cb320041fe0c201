"""Loading models: sources, identity, dtype and device rules, prompt and size checks, one-line errors."""

import pytest
import torch

from nulltext.model import ModelLoadError, PromptError, load_model, resolve_dtype


def test_identity_is_stable_across_loads_and_dtypes_and_differs_between_models(tiny_dir, tiny_v_dir, tiny):
    again = load_model(tiny_dir, device="cpu")
    bf16 = load_model(tiny_dir, device="cpu", dtype="bfloat16")
    other = load_model(tiny_v_dir, device="cpu")
    assert again.identity == tiny.identity == bf16.identity
    assert other.identity != tiny.identity and len(tiny.identity) == 16
    assert bf16.dtype == torch.bfloat16 and tiny.dtype == torch.float32


@pytest.mark.parametrize("name", ["tiny", "tiny_xl", "tiny_sd3"])
def test_device_and_dtype_are_the_denoisers_as_diffusers_reads_them(request, name):
    """`Model.device` / `.dtype` read the first parameter (no walk over every module); they agree with
    diffusers' own properties for each family."""
    model = request.getfixturevalue(name)
    assert (model.device, model.dtype) == (model.unet.device, model.unet.dtype) == (torch.device("cpu"), torch.float32)


def test_a_bf16_model_reads_bf16_and_its_vae_encodes_in_it(tiny_dir):
    bf16 = load_model(tiny_dir, device="cpu", dtype="bf16")
    assert (bf16.device, bf16.dtype) == (bf16.unet.device, bf16.unet.dtype) == (torch.device("cpu"), torch.bfloat16)
    assert bf16.encode_image(torch.zeros(1, 3, 32, 32)).dtype == bf16.vae.dtype == torch.bfloat16


def test_sizes_and_factors_come_from_the_configs(tiny, bundled):
    assert tiny.vae_scale_factor == 2 and tiny.default_size == (32, 32) and tiny.size_multiple == 4
    assert bundled.vae_scale_factor == 4 and bundled.default_size == (64, 64)
    assert bundled.scaling_factor == bundled.vae.config.scaling_factor != 0.18215
    bundled.check_size((96, 64))
    with pytest.raises(ValueError, match="not a multiple of 8"):
        bundled.check_size((60, 64))


def test_dtype_rules():
    assert resolve_dtype(None, torch.device("cpu")) == torch.float32
    assert resolve_dtype(None, torch.device("cuda")) == torch.float16
    assert resolve_dtype("bf16", torch.device("cuda")) == torch.bfloat16
    assert resolve_dtype("float16", torch.device("cpu")) == torch.float16  # torch runs fp16 on the CPU too
    with pytest.raises(ModelLoadError, match="unknown dtype"):
        resolve_dtype("int8", torch.device("cpu"))


@pytest.mark.parametrize("kind", ["missing", "empty_dir", "bad_file", "txt", "hub"])
def test_unloadable_models_give_one_line(tmp_path, monkeypatch, kind):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    source = {
        "missing": tmp_path / "nope",
        "empty_dir": tmp_path,
        "bad_file": tmp_path / "model.safetensors",
        "txt": tmp_path / "model.txt",
        "hub": "someone/not-cached-model",
    }[kind]
    if kind in ("bad_file", "txt"):
        source.write_text("not weights")
    with pytest.raises(ModelLoadError) as e:
        load_model(source, device="cpu")
    message = str(e.value)
    assert "\n" not in message and str(source) in message and "—" in message


def test_prompt_checks(tiny):
    with pytest.raises(PromptError, match="empty"):
        tiny.check_prompt("   ")
    with pytest.raises(PromptError, match=r"is 42 tokens long; this model reads at most 16"):
        tiny.check_prompt("a " * 40)
    tiny.check_prompt("a red circle")
    emb = tiny.encode_text(["", "a red circle"])
    assert emb.shape == (2, 16, 32) and not torch.equal(emb[0], emb[1])
