"""LoRAs: a real LoRA made offline on the bundled model (PEFT adapters on the cross-attention keys and
values, written by diffusers' `save_lora_weights`), fused by `load_model(loras=...)` and `--lora`: the
edits show its effect, the identity tells the models apart, and bad LoRAs are one line."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from nulltext.bundled import data
from nulltext.bundled.judge import foreground, judge
from nulltext.cli import main
from nulltext.editing import edit
from nulltext.inversion import InversionConfig, invert, load_inversion, save_inversion
from nulltext.io.images import to_pil, to_tensor
from nulltext.model import ModelLoadError, load_model

peft = pytest.importorskip("peft", reason="LoRAs need the lora extra (peft)")

CONTEXTS = [f"a {{}} {shape} on a {bg} background" for shape in data.SHAPES for bg in data.COLOURS
            if bg not in ("red", "yellow")]
KEPT = [f"a {colour} {shape} on a {bg} background" for shape in data.SHAPES for colour in data.COLOURS
        for bg in data.COLOURS if len({colour, bg, "red", "yellow"}) == 4]


def red_to_yellow_lora(path, rank: int = 16, ridge: float = 1e-3):
    """A LoRA in closed form, as TIME (Orgad et al. 2023) edits cross-attention: on every cross-attention key
    and value projection W, the least-squares ΔW that maps the text features R of captions with "red"
    (every token from "red" on: the encoder is causal) to what W gives for the same captions with "yellow"
    (P), and keeps the features K of captions without either colour: ΔW = W (P − R) Rᵀ (R Rᵀ + K Kᵀ + λI)⁻¹,
    cut to its top `rank` singular directions. Stored as PEFT adapters (B A = ΔW) by diffusers' LoRA writer."""
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig, get_peft_model_state_dict

    model = load_model(device="cpu")  # a private copy: the adapters never touch the shared model
    features = lambda captions: model.encode_text(captions).float()[:, 2:].flatten(0, 1).T  # noqa: E731  (d, N)
    R, P = (features([c.format(word) for c in CONTEXTS]) for word in ("red", "yellow"))
    K = features(KEPT)
    solve = torch.linalg.inv(R @ R.T + K @ K.T + ridge * torch.eye(R.shape[0]))  # (d, d)
    targets = [name for name, m in model.unet.named_modules() if name.endswith(("attn2.to_k", "attn2.to_v"))]
    model.unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=targets, init_lora_weights=False))
    with torch.no_grad():
        for name in targets:
            layer = model.unet.get_submodule(name)
            W = layer.base_layer.weight.float()  # (out, d)
            U, S, Vh = torch.linalg.svd(W @ (P - R) @ R.T @ solve, full_matrices=False)  # ΔW (out, d)
            layer.lora_A["default"].weight.copy_(Vh[:rank])  # (rank, d)
            layer.lora_B["default"].weight.copy_(U[:, :rank] * S[:rank])  # (out, rank)
    StableDiffusionPipeline.save_lora_weights(path, unet_lora_layers=get_peft_model_state_dict(model.unet),
                                              safe_serialization=True)
    return path / "pytorch_lora_weights.safetensors"


@pytest.fixture(scope="module")
def lora_file(tmp_path_factory):
    return red_to_yellow_lora(tmp_path_factory.mktemp("lora"))


@pytest.fixture(scope="module")
def with_lora(lora_file):
    return load_model(device="cpu", loras=[lora_file])


def _blue_circle():
    index = next(i for i in range(200) if data.scene("test", i).colour == "blue" and data.scene("test", i).background != "yellow")
    return index, *data.sample("test", index)


def test_a_lora_changes_the_edits_and_an_inversion_keeps_its_model(bundled, with_lora, lora_file, tmp_path):
    """Photo of a blue shape, "blue" → "red": drawn red by the bundled model, yellow to orange through the LoRA
    (the closed-form LoRA moves red most of the way to yellow); each inversion reconstructs its photo through
    its own model; the file of one refuses the other in one line."""
    index, image, caption = _blue_circle()
    scene = data.scene("test", index)
    target = caption.replace("a blue", "a red", 1)
    config = InversionConfig(num_steps=10)
    colours, green = {}, {}
    for name, model in (("plain", bundled), ("lora", with_lora)):
        inv = invert(model, to_tensor(image), caption, config)
        result = edit(model, inv, [target])
        rec, edited = to_pil(result.images)
        assert judge(rec).colour == "blue"  # the inversion reconstructs the photo through either model
        colours[name] = judge(edited).colour
        green[name] = float(np.asarray(edited, dtype=np.float64)[foreground(edited)][:, 1].mean())
        save_inversion(inv, tmp_path / f"{name}.nti")
    # the shape's mean colour, measured: through the LoRA (216, 156, 52) with the default edit, (223, 178, 65) with
    # the authors' self-attention (palette: red 220, 40, 40; yellow 240, 220, 40; orange 245, 140, 30); its green
    # channel 156 against the plain edit's 47
    assert colours["plain"] == "red" and colours["lora"] in ("yellow", "orange"), (scene, colours)
    print(f"\nmean green channel of the edited shape: {green}")
    assert green["lora"] > green["plain"] + 80, green  # the LoRA's yellow lifts the green channel
    assert with_lora.identity != bundled.identity and with_lora.loras == (f"{lora_file.name}:1",)
    with pytest.raises(ValueError, match="was made with model") as e:
        load_inversion(tmp_path / "plain.nti", with_lora)
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="was made with model"):
        load_inversion(tmp_path / "lora.nti", bundled)
    half = load_model(device="cpu", loras=[f"{lora_file}:0.5"])
    assert half.identity not in (with_lora.identity, bundled.identity) and half.loras == (f"{lora_file.name}:0.5",)


def test_the_fused_weights_are_the_base_plus_the_low_rank_update(bundled, with_lora, lora_file):
    """Fusing is W + scale · B A on the adapted layers (PEFT's lora_alpha / r = 1 here) and nothing elsewhere."""
    from safetensors.torch import load_file

    state = load_file(lora_file)
    name = next(k for k in state if k.endswith("attn2.to_k.lora_A.weight")).removeprefix("unet.").removesuffix(".lora_A.weight")
    A, B = state[f"unet.{name}.lora_A.weight"], state[f"unet.{name}.lora_B.weight"]
    base, fused = (m.unet.get_submodule(name).weight for m in (bundled, with_lora))
    torch.testing.assert_close(fused, base + B @ A, rtol=1e-4, atol=1e-5)
    half = load_model(device="cpu", loras=[(lora_file, 0.5)]).unet.get_submodule(name).weight
    torch.testing.assert_close(half, base + 0.5 * B @ A, rtol=1e-4, atol=1e-5)
    assert torch.equal(bundled.unet.conv_in.weight, with_lora.unet.conv_in.weight)
    assert not any("lora" in k for k in with_lora.unet.state_dict())  # a plain UNet runs: the adapters are gone


def test_lora_on_the_command_line(lora_file, tmp_path, capsys):
    image, caption = data.sample("test", 0)
    image.save(tmp_path / "photo.png")
    argv = ["invert", str(tmp_path / "photo.png"), "--prompt", caption, "--steps", "3", "--inner-steps", "1", "-q"]
    assert main([*argv, "-o", str(tmp_path / "x.nti"), "--lora", f"{lora_file}:0.8"]) == 0
    assert main(["info", str(tmp_path / "x.nti")]) == 0
    capsys.readouterr()
    code = main(["reconstruct", str(tmp_path / "x.nti"), "-o", str(tmp_path / "rec.png"), "-q"])  # without it
    err = capsys.readouterr().err
    assert code == 2 and "was made with model" in err and err.count("\n") == 1, err


@pytest.mark.parametrize("spec, message", [
    ("{tmp}/missing.safetensors", "is not a file"),
    ("{tmp}/weights.bin", "is not a .safetensors file"),
    ("{tmp}/garbage.safetensors", "cannot read LoRA"),
    ("{tmp}/other.safetensors", "does not have"),
])
def test_bad_loras_are_one_line(tmp_path, capsys, spec, message):
    from safetensors.torch import save_file

    (tmp_path / "weights.bin").write_bytes(b"\0" * 16)
    (tmp_path / "garbage.safetensors").write_bytes(b"not a safetensors file")
    save_file({"transformer.blocks.0.attn.to_q.lora_A.weight": torch.zeros(4, 8),
               "transformer.blocks.0.attn.to_q.lora_B.weight": torch.zeros(8, 4)}, str(tmp_path / "other.safetensors"))
    image, caption = data.sample("test", 0)
    image.save(tmp_path / "photo.png")
    code = main(["invert", str(tmp_path / "photo.png"), "--prompt", caption, "-o", str(tmp_path / "x.nti"), "-q",
                 "--lora", spec.format(tmp=tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "x.nti").exists()
    with pytest.raises(ModelLoadError, match=message):
        load_model(device="cpu", loras=[spec.format(tmp=tmp_path)])


def test_the_web_apps_model_line_lists_the_loras(with_lora, lora_file):
    pytest.importorskip("gradio")
    from nulltext.app import WebApp

    page = WebApp(with_lora).build()
    [line] = [b for b in page.blocks.values() if getattr(b, "elem_id", None) == "model-line"]
    assert f"with LoRA `{lora_file.name}:1`" in line.value and "on `bundled`" in line.value
