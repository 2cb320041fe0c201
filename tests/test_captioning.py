"""A caption for a photo without one: the bundled world's captioner measured on the test split, a
transformers captioner wired through on a tiny BLIP built from config offline, and one-line refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from nulltext.bundled import data
from nulltext.captioning import BundledCaptioner, CaptionError, TransformersCaptioner, load_captioner
from nulltext.cli import main
from nulltext.inversion import load_inversion


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def build_tiny_blip(path, seed: int = 0):
    """A random-init BLIP captioning model and its processor, saved as a folder; its words are the bundled
    world's (so any caption it writes is one the tiny Stable Diffusion's tokenizer takes)."""
    from transformers import (BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor,
                              BlipProcessor)

    path.mkdir(parents=True)
    (path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *data.vocabulary_words()]) + "\n")
    tokenizer = BertTokenizer(str(path / "vocab.txt"))
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    processor = BlipProcessor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer=tokenizer)
    torch.manual_seed(seed)
    text = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=32, bos_token_id=tokenizer.bos_token_id,
                pad_token_id=tokenizer.pad_token_id, sep_token_id=tokenizer.sep_token_id,
                eos_token_id=tokenizer.sep_token_id)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32,
                  patch_size=8)
    BlipForConditionalGeneration(BlipConfig(text_config=text, vision_config=vision, projection_dim=32)).save_pretrained(path)
    processor.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def blip_dir(tmp_path_factory):
    return build_tiny_blip(tmp_path_factory.mktemp("captioner") / "blip")


def test_bundled_captioner_names_the_test_photos():
    """≥ 95 % of 240 test photos (MODEL.md's test captions) get their own caption, word for word
    (measured: 240 of 240), in the one template the training captions use most."""
    captioner, n = BundledCaptioner(), 240
    right = [captioner(image) == caption for image, caption in (data.sample("test", i) for i in range(n))]
    print(f"\nbundled captioner: {np.mean(right):.1%} of {n} test photos captioned exactly")
    assert np.mean(right) >= 0.95


def test_invert_without_a_prompt_captions_the_photo_and_reconstructs_as_with_the_true_caption(tmp_path, capsys, bundled):
    """`nulltext invert PHOTO` on the bundled model: it prints the caption it used, the .nti stores it, and
    the file is the one `--prompt <true caption>` makes (the same reconstruction)."""
    image, caption = data.sample("test", 7)
    image.save(tmp_path / "photo.png")
    settings = ("--steps", 5, "--inner-steps", 2, "--quiet")
    code, out, err = run(capsys, "invert", tmp_path / "photo.png", "-o", tmp_path / "auto.nti", *settings)
    assert code == 0 and err == "", err
    assert f'caption: "{caption}" (by the bundled captioner' in out
    code, _, err = run(capsys, "invert", tmp_path / "photo.png", "--prompt", caption, "-o", tmp_path / "given.nti", *settings)
    assert code == 0, err
    auto, given = load_inversion(tmp_path / "auto.nti", bundled), load_inversion(tmp_path / "given.nti", bundled)
    assert auto.prompt == given.prompt == caption
    assert torch.equal(auto.latent_T, given.latent_T) and torch.equal(auto.null_embeddings, given.null_embeddings)


def test_a_transformers_captioner_from_a_folder_is_its_models_greedy_caption(blip_dir, tiny_dir, tmp_path, capsys, tiny):
    """The tiny BLIP's caption through `load_captioner` is what the model generates and decodes itself;
    `--captioner FOLDER` prints it and stores it in the .nti."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    image, _ = data.sample("test", 3, 32)
    captioner = load_captioner(blip_dir, tiny.source)
    assert isinstance(captioner, TransformersCaptioner)
    processor, model = AutoProcessor.from_pretrained(blip_dir), AutoModelForImageTextToText.from_pretrained(blip_dir)
    with torch.no_grad():
        tokens = model.generate(**processor(images=image, return_tensors="pt"), max_new_tokens=40, do_sample=False)
    expected = " ".join(processor.batch_decode(tokens, skip_special_tokens=True)[0].split())
    assert expected and captioner(image) == expected  # a random BLIP writes words; which ones is its weights'
    image.save(tmp_path / "photo.png")
    code, out, err = run(capsys, "invert", tmp_path / "photo.png", "--captioner", blip_dir, "--model", tiny_dir,
                         "-o", tmp_path / "x.nti", "--steps", 3, "--inner-steps", 1, "--quiet")
    assert code == 0 and err == "", err
    assert f'caption: "{expected}"' in out and load_inversion(tmp_path / "x.nti", tiny).prompt == expected


@pytest.mark.parametrize("argv, message", [
    ([], "pass one with --prompt"),  # a model other than the bundled one, and no captioner
    (["--captioner", "{missing}"], "cannot load captioner"),
    (["--captioner", "{photo}"], "is a file"),
    (["--captioner", "nobody/no-such-captioner"], "local Hugging Face cache"),
    (["--prompt", "a red circle", "--captioner", "bundled"], "pass one of the two"),
])
def test_captioner_refusals_are_one_line_before_any_output(tmp_path, capsys, tiny_dir, argv, message):
    image, _ = data.sample("test", 0, 32)
    image.save(tmp_path / "photo.png")
    argv = [a.format(missing=tmp_path / "nowhere", photo=tmp_path / "photo.png") for a in argv]
    code, out, err = run(capsys, "invert", tmp_path / "photo.png", *argv, "--model", tiny_dir, "-o", tmp_path / "x.nti", "-q")
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "x.nti").exists()


def test_the_bundled_captioner_refuses_a_photo_with_no_shape_in_one_line():
    with pytest.raises(CaptionError, match="--prompt"):
        BundledCaptioner()(Image.new("RGB", (64, 64), data.PALETTE["blue"]))
    assert load_captioner(None, "bundled").name == "bundled" and load_captioner("bundled", "elsewhere").name == "bundled"
