"""Latent cache: shards, index, resume, multi-worker split, checksums, reading back."""

import json

import pytest
import torch

from pyramidflow.data import latent_cache as lc
from pyramidflow.errors import PyramidflowError
from pyramidflow.models.vae import CausalVideoVAE
from pyramidflow.training.vae.cache import build_latent_cache


class Clips(torch.utils.data.Dataset):
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        frames = 5 if i % 2 else 9  # mixed lengths are fine: one tensor per clip
        return {
            "video": torch.rand(frames, 3, 8, 8, generator=g),
            "caption": f"clip {i}",
            "path": f"v{i}.mp4",
        }


def fake_text(captions):
    emb = torch.stack([torch.full((3, 4), float(len(c))) for c in captions])
    return emb, torch.ones(len(captions), 3, dtype=torch.bool)


@pytest.fixture(scope="module")
def vae():
    torch.manual_seed(0)
    model = CausalVideoVAE(
        latent_channels=2,
        block_out_channels=(4, 4),
        spatial_down=(True, False),
        temporal_down=(True, True),
        layers_per_block=1,
        decoder_layers_per_block=1,
        norm_groups=2,
    )
    model.set_latent_stats([0.5, -0.5], [2.0, 0.25])
    return model.eval()


def test_two_workers_fill_one_cache_and_reading_matches_encode(tmp_path, vae):
    data = Clips(5)
    kw = dict(shard_size=2, num_workers=2, text_encoder=fake_text, show_progress=False)
    first = build_latent_cache(data, vae, tmp_path, worker_id=0, **kw)
    assert first["written"] == [0, 2] and not first["index"]["complete"]
    with pytest.raises(PyramidflowError, match="2 of 3 shards"):
        lc.LatentCacheDataset(tmp_path)
    second = build_latent_cache(data, vae, tmp_path, worker_id=1, **kw)
    assert second["written"] == [1] and second["index"]["complete"]
    cache = lc.LatentCacheDataset(tmp_path, verify=True)
    assert len(cache) == 5 and cache.header["latents_std"] == [2.0, 0.25]
    by_source = {cache[k]["source"]: cache[k] for k in range(len(cache))}
    for i in range(5):
        item = by_source[f"v{i}.mp4"]
        x = data[i]["video"].permute(1, 0, 2, 3)[None] * 2 - 1
        torch.testing.assert_close(item["latents"], vae.encode(x)[0])
        assert item["caption"] == f"clip {i}"
        torch.testing.assert_close(item["text_embeds"], torch.full((3, 4), float(len(f"clip {i}"))))
    assert cache[0]["latents"].shape == (2, 3, 4, 4) and cache[1]["latents"].shape == (2, 2, 4, 4)


def test_resume_skips_complete_and_redoes_corrupt_shards(tmp_path, vae):
    data = Clips(4)
    build_latent_cache(data, vae, tmp_path, shard_size=2, show_progress=False)
    shard = tmp_path / f"{lc.shard_stem(1, 2)}.safetensors"
    before = shard.read_bytes()
    shard.write_bytes(before[:-8] + b"garbage!")  # a damaged file no longer matches its checksum
    with pytest.raises(PyramidflowError, match="checksum mismatch"):
        lc.LatentCacheDataset(tmp_path, verify=True)
    again = build_latent_cache(data, vae, tmp_path, shard_size=2, show_progress=False)
    assert again["skipped"] == [0] and again["written"] == [1]
    assert shard.read_bytes() == before
    assert not list(tmp_path.glob(".*tmp*"))
    index = json.loads((tmp_path / "index.json").read_text())
    assert index["complete"] and index["header"]["text_embeddings"] is False
    assert "text_embeds" not in lc.LatentCacheDataset(tmp_path)[0]


def test_worker_split_and_errors(tmp_path):
    assert lc.shards_for_worker(7, 1, 3) == [1, 4]
    assert [list(r) for r in lc.shard_ranges(5, 2)] == [[0, 1], [2, 3], [4]]
    with pytest.raises(PyramidflowError, match="worker id"):
        lc.shards_for_worker(4, 2, 2)
    with pytest.raises(FileNotFoundError, match="cache-latents"):
        lc.LatentCacheDataset(tmp_path)


def test_cache_latents_command(tmp_path, vae, monkeypatch, capsys):
    from pyramidflow import cli
    from pyramidflow.training.vae import data as vae_data

    vae.save_pretrained(tmp_path / "vae")
    monkeypatch.setattr(vae_data, "manifest_clips", lambda path, **kw: Clips(3))
    args = [
        "cache-latents",
        "--manifest",
        "m.jsonl",
        "--vae",
        str(tmp_path / "vae"),
        "--out",
        str(tmp_path / "c"),
    ]
    assert cli.main([*args, "--shard-size", "2", "--quiet"]) == 0
    assert "3 clips (complete)" in capsys.readouterr().out
    assert len(lc.LatentCacheDataset(tmp_path / "c", verify=True)) == 3
    assert cli.main([*args, "--frames", "4"]) == 2
    assert "valid: 1, 5, 9" in capsys.readouterr().err


def test_unreadable_files_are_left_out_never_duplicated(tmp_path, vae, capsys):
    """Reproduces: cache-latents filled the slots of unreadable files with copies of other clips
    (5 of 10 items were duplicates)."""
    from pyramidflow import cli
    from pyramidflow.data.manifest import ManifestDataset, write_manifest
    from pyramidflow.data.video import SkippedInputWarning
    from pyramidflow.io import write_video

    rows = []
    for i in range(10):
        name = f"v{i}.mp4"
        if i % 2:
            (tmp_path / name).write_bytes(b"")  # unreadable
        else:
            write_video(tmp_path / name, torch.full((5, 3, 8, 8), i / 10), fps=8)
        rows.append({"video": name, "text": f"clip {i}"})
    manifest = write_manifest(tmp_path / "m.jsonl", rows)
    with pytest.warns(SkippedInputWarning) as seen:  # one per unreadable file
        data = ManifestDataset(manifest, frames=5, size=8)
        result = build_latent_cache(data, vae, tmp_path / "c", shard_size=4, show_progress=False)
    named = sorted(str(w.message).split("/")[-1].split(":")[0] for w in seen)
    assert named == [f"v{i}.mp4" for i in (1, 3, 5, 7, 9)]
    assert [u["index"] for u in result["unreadable"]] == [1, 3, 5, 7, 9]
    assert result["unreadable"][0]["path"].endswith("v1.mp4") and result["unreadable"][0]["reason"] == "empty"
    cache = lc.LatentCacheDataset(tmp_path / "c", verify=True)
    assert sorted(cache.caption(i) for i in range(len(cache))) == [f"clip {i}" for i in (0, 2, 4, 6, 8)]
    assert len({cache[i]["source"] for i in range(len(cache))}) == len(cache) == 5
    vae.save_pretrained(tmp_path / "vae")
    args = ["cache-latents", "--manifest", str(manifest), "--vae", str(tmp_path / "vae"), "--out",
            str(tmp_path / "c2"), "--frames", "5", "--height", "8", "--width", "8", "--fps", "8",
            "--stride", "4", "--quiet"]
    with pytest.warns(SkippedInputWarning):
        assert cli.main(args) == 0
    assert "left out 5 unreadable files" in capsys.readouterr().out
    header = lc.LatentCacheDataset(tmp_path / "c2").header
    assert header["fps"] == 8 and header["stride"] == 4 and len(lc.LatentCacheDataset(tmp_path / "c2")) == 5


class WanClips(torch.utils.data.Dataset):
    def __len__(self):
        return 3

    def __getitem__(self, i):
        return {"video": torch.rand(17, 3, 32, 32, generator=torch.Generator().manual_seed(i)),
                "caption": f"clip {i}", "path": f"w{i}.mp4"}


def test_definition2_targets_are_the_video_lowered_in_pixels_then_encoded(tmp_path):
    # 17 frames -> 9 -> 5 (causal first frame kept apart, pairs of later frames averaged), H and W
    # halved per level; each lowered video is encoded by the same VAE (docs/maths.md section 6).
    from wan_folder import build_wan_pipeline

    from pyramidflow.models.vae.wan import WanVAE
    from pyramidflow.pyramid import HaarTransform

    vae = WanVAE(build_wan_pipeline().vae)
    transform = HaarTransform(temporal=True, causal_first_frame=True)
    build_latent_cache(WanClips(), vae, tmp_path, shard_size=2, show_progress=False, pyramid_levels=2,
                       pyramid_transform=transform)
    cache = lc.LatentCacheDataset(tmp_path, verify=True)
    assert cache.header["pyramid_levels"] == 2
    item = next(cache[k] for k in range(3) if cache[k]["source"] == "w1.mp4")
    pyramid = item["clean_pyramid"]
    assert [tuple(z.shape) for z in pyramid] == [(4, 2, 1, 1), (4, 3, 2, 2), (4, 5, 4, 4)]
    assert torch.equal(pyramid[-1], item["latents"])
    x = WanClips()[1]["video"].permute(1, 0, 2, 3)[None] * 2 - 1  # (1, 3, 17, 32, 32) in [-1, 1]
    with torch.no_grad():
        for level, z in zip((2, 1), pyramid[:2], strict=True):
            low = x
            for _ in range(level):  # independent of HaarTransform: pooling by hand
                first = torch.nn.functional.avg_pool3d(low[:, :, :1], (1, 2, 2))
                rest = torch.nn.functional.avg_pool3d(low[:, :, 1:], (2, 2, 2))
                low = torch.cat([first, rest], 2)
            ref = vae.vae.encode(low).latent_dist.mean[0]  # latents_mean 0, std 1: already normalised
            torch.testing.assert_close(z, ref, rtol=1e-5, atol=1e-5)
    # training reads them (data.clean_targets): definition 2 hands the method the finest `stages`
    # targets, definition 1 none (the method then lowers the latents itself)
    from pyramidflow.config import load_config
    from pyramidflow.data.sources import LatentClips
    from pyramidflow.training.build import build_dataset
    from pyramidflow.training.config import TrainConfig

    k = next(k for k in range(3) if cache[k]["source"] == "w1.mp4")
    for mode, stages, count in (("auto", 3, 3), ("pixel", 3, 3), ("pixel", 2, 2), ("latent", 3, 0),
                                ("auto", 1, 0), ("auto", 4, 0)):
        got = LatentClips(tmp_path, mode, stages)[k]
        assert len(got.get("clean_pyramid", [])) == count, (mode, stages)
        if count:
            assert all(torch.equal(a, b) for a, b in zip(got["clean_pyramid"], pyramid[-count:], strict=True))
    with pytest.raises(PyramidflowError, match="needs a cache with 3 lowered level"):
        LatentClips(tmp_path, "pixel", 4)
    with pytest.raises(PyramidflowError, match="clean_targets must be one of"):
        LatentClips(tmp_path, "video")
    cfg = load_config(TrainConfig, None, [f"data.path={tmp_path}", "data.source=latents", "space=latent",
                                          "pyramid.num_stages=3", "data.clean_targets=pixel"])
    assert len(build_dataset(cfg)[k]["clean_pyramid"]) == 3
    # a patchification pyramid (PPF) is full resolution at every stage: the lowered levels go unused
    ppf = [f"data.path={tmp_path}", "data.source=latents", "space=latent", "pyramid.num_stages=3",
           "pyramid.patchify=true", "pyramid.stage_ends=[0.5,0.25,0.0]"]
    assert "clean_pyramid" not in build_dataset(load_config(TrainConfig, None, ppf))[k]
    with pytest.raises(PyramidflowError, match="pyramid.patchify keeps full resolution"):
        load_config(TrainConfig, None, [*ppf, "data.clean_targets=pixel", f"vae={tmp_path}"]).check()
    with pytest.raises(PyramidflowError, match="needs the pyramid's transform"):
        build_latent_cache(WanClips(), vae, tmp_path / "x", pyramid_levels=1, show_progress=False)


def test_calibrate_command_on_a_cache(tmp_path, vae, capsys):
    from pyramidflow.cli import main

    build_latent_cache(Clips(4), vae, tmp_path, shard_size=2, show_progress=False)
    args = ["calibrate", "--cache", str(tmp_path), "--stages", "2", "--pyramid", "spatial"]
    assert main([*args, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    level = result["levels"][0]
    assert result["clips"] == 4 and 0 < level["low_share"][0] <= 1 and 0 < level["rho"] <= 1
    assert level["gain"][0] == pytest.approx(2 * level["low_share"][0] ** 0.5)  # (4.2) with m = 4
    assert result["calibrated"]["stage_ends"][-1] == 0.0
    assert main(args) == 0
    assert "config: pyramid.stage_ends: [" in capsys.readouterr().out
    assert main(["calibrate", "--cache", str(tmp_path), "--stages", "1"]) == 2


def test_cache_latents_of_the_built_in_shapes(tmp_path, vae, capsys):
    # --shapes N encodes procedural clips directly (exact pixels, no lossy video files in between).
    from pyramidflow import cli
    from pyramidflow.data.shapes import ShapesDataset
    from pyramidflow.models.vae import frames_to_model

    vae.save_pretrained(tmp_path / "vae")
    args = ["cache-latents", "--shapes", "3", "--vae", str(tmp_path / "vae"), "--out", str(tmp_path / "c"),
            "--frames", "5", "--height", "8", "--width", "8", "--bounce", "--travel-frames", "3", "--quiet"]
    assert cli.main(args) == 0
    assert "3 clips (complete)" in capsys.readouterr().out
    cache = lc.LatentCacheDataset(tmp_path / "c", verify=True)
    clips = ShapesDataset(height=8, width=8, num_frames=5, length=3, bounce=True, travel_frames=3)
    for i in range(3):
        item, clip = cache[i], clips[i]
        assert item["caption"] == clip["text"]
        with torch.no_grad():
            want = vae.encode(frames_to_model(clip["video"][None]))[0]
        torch.testing.assert_close(item["latents"], want, rtol=1e-5, atol=1e-5)
    assert cli.main(["cache-latents", "--shapes", "3", "--vae", str(tmp_path / "vae"), "--out",
                     str(tmp_path / "d")]) == 2
    assert "--shapes N needs" in capsys.readouterr().err
