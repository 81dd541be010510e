"""Reading a diffusers Wan2.1 pipeline folder: a tiny real WanPipeline built offline, saved, loaded."""

import json
import shutil

import pytest
import torch
from wan_folder import build_wan_pipeline

from pyramidflow.errors import PyramidflowError
from pyramidflow.models.wan_folder import inspect_wan_folder, is_wan_folder, load_wan_folder


@pytest.fixture(scope="module")
def wan_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("wan") / "Wan2.1-T2V-tiny"
    pipe = build_wan_pipeline()
    pipe.save_pretrained(path)
    return path, pipe


def test_inspect_reads_the_layout_and_the_scheduler_shift(wan_dir):
    path, _ = wan_dir
    folder = inspect_wan_folder(path)
    assert folder.shift == 3.0 and folder.generation == {} and is_wan_folder(path)


@torch.no_grad()
def test_loaded_parts_compute_what_diffusers_computes(wan_dir):
    path, pipe = wan_dir
    parts = load_wan_folder(path, max_length=32)
    # transformer: PyramidDiT with Wan's weights against WanTransformer3DModel
    x = torch.randn(2, 4, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([700.0, 120.0])
    text = torch.randn(2, 32, 32, generator=torch.Generator().manual_seed(1))
    ours = parts.transformer(x, t, text).sample
    theirs = pipe.transformer(x, t, text, return_dict=False)[0]
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    # text encoder with the sibling tokenizer/: the prompt embeddings WanPipeline makes
    prompts = ["a red circle moving right", "a blue square"]
    embeds, mask = parts.text_encoder.encode(prompts)
    ref = pipe.encode_prompt(prompts, do_classifier_free_guidance=False, max_sequence_length=32)[0]
    torch.testing.assert_close(embeds, ref, rtol=1e-5, atol=1e-6)
    assert mask.sum(1).tolist() == [len(pipe.tokenizer(p).input_ids) for p in prompts]
    # VAE: the adapter's latents are Wan's (z - mean) / std of the mean
    video = torch.rand(1, 3, 5, 16, 16, generator=torch.Generator().manual_seed(2)) * 2 - 1
    z = parts.vae.encode(video)
    assert z.shape == (1, 4, 2, 2, 2)
    ref_z = pipe.vae.encode(video).latent_dist.mean
    torch.testing.assert_close(z, ref_z, rtol=1e-5, atol=1e-5)  # latents_mean 0, std 1 here


def test_bf16_sharded_weights_load(wan_dir, tmp_path):
    path, pipe = wan_dir
    copy = tmp_path / "bf16"
    shutil.copytree(path, copy)
    shutil.rmtree(copy / "transformer")
    pipe.transformer.to(torch.bfloat16).save_pretrained(copy / "transformer", max_shard_size="20KB")
    pipe.transformer.float()
    assert len(list((copy / "transformer").glob("*.safetensors"))) > 1  # really sharded
    parts = load_wan_folder(copy, dtype=torch.bfloat16, max_length=32)
    assert parts.transformer.blocks[0].attn1.to_q.weight.dtype == torch.bfloat16
    assert parts.transformer.scale_shift_table.dtype == torch.float32  # Wan's float32-only modules stay so
    for name, p in pipe.transformer.state_dict().items():
        torch.testing.assert_close(parts.transformer.state_dict()[name].float(), p.to(torch.bfloat16).float())


def _edit_index(path, **changes):
    index = json.loads((path / "model_index.json").read_text())
    index.update(changes)
    (path / "model_index.json").write_text(json.dumps(index))


def test_a_folder_that_is_not_a_wan_t2v_pipeline_is_one_line(wan_dir, tmp_path):
    path, _ = wan_dir
    with pytest.raises(FileNotFoundError, match="no Wan pipeline folder"):
        inspect_wan_folder(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="model_index.json is missing"):
        inspect_wan_folder(tmp_path / "empty")
    cases = [
        (dict(_class_name="WanImageToVideoPipeline"), "holds a 'WanImageToVideoPipeline' pipeline"),
        (dict(transformer_2=["diffusers", "WanTransformer3DModel"]), "Wan2.2 mixture of experts"),
        (dict(tokenizer=[None, None]), "names no tokenizer"),
        (dict(vae=["diffusers", "AutoencoderKL"]), "the vae is a AutoencoderKL, expected AutoencoderKLWan"),
    ]
    for i, (change, message) in enumerate(cases):
        copy = tmp_path / f"case{i}"
        shutil.copytree(path, copy)
        _edit_index(copy, **change)
        with pytest.raises(PyramidflowError, match=message) as err:
            inspect_wan_folder(copy)
        assert "\n" not in str(err.value)
    copy = tmp_path / "noweights"
    shutil.copytree(path, copy)
    for f in (copy / "transformer").glob("*.safetensors"):
        f.unlink()
    with pytest.raises(FileNotFoundError, match="transformer: no safetensors weights"):
        inspect_wan_folder(copy)
    copy = tmp_path / "notokenizer"
    shutil.copytree(path, copy)
    shutil.rmtree(copy / "tokenizer")
    with pytest.raises(FileNotFoundError, match="the tokenizer/ folder is missing"):
        inspect_wan_folder(copy)
    (copy / "generation.json").write_text(json.dumps({"fps": 16}))
    shutil.copytree(path / "tokenizer", copy / "tokenizer")
    with pytest.raises(PyramidflowError, match=r"unknown keys \['fps'\]"):
        inspect_wan_folder(copy)


def test_text_encoder_alone_finds_its_sibling_tokenizer(wan_dir):
    from pyramidflow.models import load_text_encoder

    path, _ = wan_dir
    encoder = load_text_encoder(path / "text_encoder", max_length=16)
    embeds, mask = encoder.encode(["a green triangle"])
    assert embeds.shape == (1, 16, 32) and mask.any()


def test_a_tiny_umt5_made_from_captions_loads_as_a_text_encoder(tmp_path):
    from pyramidflow.data.shapes import ShapesDataset
    from pyramidflow.models import load_text_encoder
    from pyramidflow.models.text_encoders.tiny_umt5 import save_tiny_umt5

    data = ShapesDataset(32, 4, length=200)
    captions = [data[i]["text"] for i in range(200)]
    save_tiny_umt5(captions, tmp_path, vocab_size=120, d_model=32, num_heads=4)
    encoder = load_text_encoder(tmp_path / "text_encoder", max_length=32)
    embeds, mask = encoder.encode(["a red circle moving left on a black background", "a blue square"])
    assert embeds.shape == (2, 32, 32) and mask[0].sum() > mask[1].sum() > 0
    ids = encoder.tokenizer("a magenta triangle").input_ids
    assert encoder.tokenizer.unk_token_id not in ids  # the vocabulary covers the captions' words
