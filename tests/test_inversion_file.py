"""The .nti file: bit-identical round trip, refusal of foreign, corrupt and mismatched files, atomic writes."""

import json

import pytest
import torch
from safetensors.torch import save_file

from nulltext.bundled import data
from nulltext.editing import reconstruct
from nulltext.io.images import to_tensor
from nulltext.inversion import InversionConfig, invert
from nulltext.inversion.file import InversionFileError, load_inversion, save_inversion
from nulltext.model import load_model


@pytest.fixture(scope="module")
def inversion(tiny):
    image, caption = data.sample("test", 0, tiny.default_size[0])
    return invert(tiny, to_tensor(image), caption, InversionConfig(num_steps=8, trials=3),
                  photo=torch.from_numpy(__import__("numpy").asarray(image).copy()))


def test_save_load_reconstruct_is_bit_identical(tiny, inversion, tmp_path):
    path = save_inversion(inversion, tmp_path / "x.nti")
    loaded = load_inversion(path, tiny)
    for name in ("latent_T", "null_embeddings", "pivot", "photo"):
        assert torch.equal(getattr(loaded, name), getattr(inversion, name)), name
    assert loaded.prompt == inversion.prompt and loaded.config == inversion.config
    assert loaded.losses == inversion.losses and loaded.inner_iterations == inversion.inner_iterations
    assert torch.equal(reconstruct(tiny, loaded), reconstruct(tiny, inversion))


def test_foreign_model_is_refused(inversion, tmp_path, tiny_v_dir):
    path = save_inversion(inversion, tmp_path / "x.nti")
    other = load_model(tiny_v_dir, device="cpu")
    with pytest.raises(InversionFileError) as e:
        load_inversion(path, other)
    message = str(e.value)
    assert inversion.model_identity in message and other.identity in message and "\n" not in message


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_file_is_refused(inversion, tmp_path, damage):
    path = save_inversion(inversion, tmp_path / "x.nti")
    raw = path.read_bytes()
    path.write_bytes({"truncate": raw[: len(raw) // 2], "garbage": b"\x00\x01not a file" * 50, "empty": b""}[damage])
    with pytest.raises(InversionFileError, match="re-run `nulltext invert`"):
        load_inversion(path)


def test_foreign_safetensors_and_wrong_version_are_refused(inversion, tmp_path):
    save_file({"weight": torch.zeros(2)}, str(tmp_path / "lora.safetensors"))
    with pytest.raises(InversionFileError, match="not a nulltext inversion"):
        load_inversion(tmp_path / "lora.safetensors")
    save_file({"latent_T": torch.zeros(1, 4, 2, 2)}, str(tmp_path / "v9.nti"),
              metadata={"format": "nulltext-inversion", "format_version": "9", "nulltext": "{}"})
    with pytest.raises(InversionFileError, match="version 9"):
        load_inversion(tmp_path / "v9.nti")
    with pytest.raises(InversionFileError, match="no inversion file"):
        load_inversion(tmp_path / "missing.nti")


def test_inconsistent_shapes_are_refused(inversion, tmp_path):
    path = save_inversion(inversion, tmp_path / "x.nti")
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    tensors["null_embeddings"] = tensors["null_embeddings"][:-1].contiguous()
    save_file(tensors, str(path), metadata=meta)
    with pytest.raises(InversionFileError, match="null_embeddings has shape"):
        load_inversion(path)


@pytest.mark.parametrize("stored, optimizer, trials", [({}, "adam", None), ({"optimizer": "secant", "inner_steps": 7}, "secant", 7)])
def test_files_from_before_the_secant_default_keep_their_optimiser(inversion, tmp_path, stored, optimizer, trials):
    """A file whose settings name no optimiser ran the paper's Adam (the default then); a `--fast` file
    without a trial cap ran at most `inner_steps` trials; neither refined ∅_1 past the threshold. Neither
    takes today's defaults."""
    import json

    from safetensors import safe_open

    path = save_inversion(inversion, tmp_path / "old.nti")
    with safe_open(str(path), "pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    header = json.loads(meta["nulltext.header"])
    for key in ("optimizer", "trials", "inner_steps", "refine_last_step"):
        header["config"].pop(key)
    header["config"].update(stored)
    meta["nulltext.header"] = json.dumps(header)
    save_file(tensors, str(path), metadata=meta)
    config = load_inversion(path).config
    assert (config.optimizer, config.refine_last_step) == (optimizer, False)
    if trials is not None:
        assert config.trials == trials


def test_interrupted_write_keeps_the_old_file(inversion, tmp_path, monkeypatch):
    path = save_inversion(inversion, tmp_path / "x.nti")
    before = path.read_bytes()

    def failing(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr("nulltext.inversion.file.save_file", failing)
    with pytest.raises(KeyboardInterrupt):
        save_inversion(inversion, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.nti"]


def test_header_is_plain_json_under_namespaced_keys(inversion, tmp_path):
    from safetensors import safe_open

    path = save_inversion(inversion, tmp_path / "x.nti")
    with safe_open(str(path), "pt") as f:
        metadata = f.metadata()
    assert metadata["format"] == "pt"  # the framework tag Hugging Face tools read stays theirs
    assert metadata["nulltext.format"] == "nulltext-inversion" and metadata["nulltext.format_version"] == "1"
    header = json.loads(metadata["nulltext.header"])
    assert header["prompt"] == inversion.prompt
    assert header["config"]["guidance_scale"] == 7.5 and header["config"]["num_steps"] == 8
    assert len(header["losses"]) == 8 and header["model_identity"] == inversion.model_identity


def test_files_of_nulltext_0_1_0_are_still_read(inversion, tmp_path, tiny):
    """The first format kept its header under the plain keys `format`, `format_version` and `nulltext`."""
    from safetensors import safe_open

    path = save_inversion(inversion, tmp_path / "new.nti")
    with safe_open(str(path), "pt") as f:
        metadata, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    old = tmp_path / "old.nti"
    save_file(tensors, str(old), metadata={"format": "nulltext-inversion", "format_version": "1",
                                           "nulltext": metadata["nulltext.header"]})
    loaded = load_inversion(old, tiny)
    assert loaded.prompt == inversion.prompt and torch.equal(loaded.null_embeddings, inversion.null_embeddings)
    assert torch.equal(reconstruct(tiny, loaded), reconstruct(tiny, load_inversion(path, tiny)))


def test_library_refuses_to_replay_on_another_model(inversion, tiny_v_dir):
    from nulltext.editing import edit

    other = load_model(tiny_v_dir, device="cpu")
    with pytest.raises(InversionFileError, match="was made with model"):
        reconstruct(other, inversion)
    with pytest.raises(InversionFileError, match="was made with model"):
        edit(other, inversion, [inversion.prompt])
