"""The web app's handlers as functions: the model list, checking requests, generating, errors, the queue.

The page itself is driven in a real browser in tests/test_app_browser.py.
"""

from __future__ import annotations

import json
import os
import threading
import time

import numpy as np
import pytest
import torch

from pyramidflow.app.handlers import AppError, Request, check_image, check_request, generate, parse_steps
from pyramidflow.app.registry import ModelEntry, ModelRegistry, discover
from pyramidflow.cli import main
from pyramidflow.demo import DEFAULT_CHECKPOINT
from pyramidflow.eval import describe_video
from pyramidflow.io import read_video

RED = "a red circle moving slowly left on a black background"


def need_gradio():
    """Gradio comes with the app extra (make test installs it); in CI its absence is a failure."""
    if os.environ.get("CI", "").lower() in ("1", "true"):
        import gradio
        return gradio
    return pytest.importorskip("gradio", reason='the app extra is not installed: pip install -e ".[app]"')


@pytest.fixture(scope="module")
def registry():
    return ModelRegistry(discover())


@pytest.fixture(scope="module")
def info(registry):
    return registry.info("shapes-tiny")  # the 4-frame model: quick to sample


def _fake_pipeline(folder):
    folder.mkdir(parents=True)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "PyramidFlowPipeline"}))
    return folder


def test_discover_lists_the_shipped_model_first_and_given_folders_before_it(tmp_path):
    assert discover()[0] == ModelEntry(DEFAULT_CHECKPOINT.name, DEFAULT_CHECKPOINT.resolve())
    scan = tmp_path / "checkpoints"
    b, a = _fake_pipeline(scan / "b-model"), _fake_pipeline(scan / "a-model")
    (scan / "not-a-model").mkdir()
    assert [e.path for e in discover(scan=scan)] == [a, b]  # no shipped default there: sorted
    other = _fake_pipeline(tmp_path / "elsewhere" / "a-model")
    entries = discover([other, b], scan=scan)
    assert [e.path for e in entries] == [other, b, a]  # given first (the default), no repeats
    assert [e.name for e in entries] == ["a-model", "b-model", str(a)]  # names stay unique
    with pytest.raises(FileNotFoundError, match="--checkpoint .*nope: no such folder"):
        discover([tmp_path / "nope"], scan=scan)
    with pytest.raises(FileNotFoundError, match="no model found .* give one with --checkpoint"):
        discover(scan=tmp_path / "empty")


def test_model_info_is_read_from_the_pipeline(registry, info):
    assert registry.names[0] == registry.default == "shapes-long"  # the demo's model is the default
    assert registry.info("shapes-long").frames == 32
    assert info.mode == "autoregressive" and info.space == "pixel" and info.num_stages == 3
    assert info.frame_values == list(range(1, 17)) and info.frames == 4
    assert (info.height, info.width, info.size_step, info.max_size) == (32, 32, 16, 128)
    assert info.steps == (10, 10, 10) and (info.guidance, info.video_guidance) == (4.0, 2.0)
    assert info.image_to_video and info.negative_prompt  # the pipeline takes a negative prompt
    assert "shapes-tiny" in info.summary() and "image-to-video: yes" in info.summary()
    with pytest.raises(AppError, match="unknown model 'nope'; valid: shapes-long, shapes-tiny"):
        registry.info("nope")


def test_parse_steps():
    assert parse_steps("10,10,10", 3, "steps") == (10, 10, 10)
    assert parse_steps(" 4-5 6 ", 3, "steps") == (4, 5, 6)
    assert parse_steps("", 3, "steps") is None and parse_steps(None, 3, "steps") is None
    with pytest.raises(AppError, match="3 stages, so give 3 numbers"):
        parse_steps("10,10", 3, "steps")
    with pytest.raises(AppError, match="whole numbers"):
        parse_steps("ten", 3, "steps")
    with pytest.raises(AppError, match="between 1 and 100"):
        parse_steps("0,1,1", 3, "steps")


@pytest.mark.parametrize("changes, message", [
    (dict(prompt=""), "write a prompt first"),
    (dict(prompt="   \n"), "write a prompt first"),
    (dict(prompt="x" * 501), "at most 500"),
    (dict(mode="video-to-audio"), "unknown mode"),
    (dict(frames=0), "cannot make 0 frames: valid values are 1, 2, 3"),
    (dict(frames=17), "cannot make 17 frames.*at most 16"),
    (dict(frames=2.5), "frames must be a whole number"),
    (dict(frames="many"), "frames must be a whole number"),
    (dict(height=24), "height 24 is out of range.*multiple of 16 from 16 to 128"),
    (dict(width=256), "width 256 is out of range"),
    (dict(width=0), "width 0 is out of range"),
    (dict(steps="10,10"), "3 stages"),
    (dict(first_steps="1,2,x"), "first-frame steps must be whole numbers"),
    (dict(guidance=25), r"guidance \(first frame\) must be between 0 and 20"),
    (dict(video_guidance=-1), r"guidance \(later frames\)"),
    (dict(seed=-3), "seed must be between 0 and"),
    (dict(mode="image-to-video"), "needs a first frame: upload an image"),
    (dict(mode="image-to-video", frames=1, image="x.png"), "at least 2 frames"),
])
def test_bad_requests_are_sentences(info, changes, message):
    request = Request(**{**dict(model="shapes-tiny", prompt=RED), **changes})
    with pytest.raises(AppError, match=message):
        check_request(request, info)


def test_good_requests_map_to_pipeline_arguments(info):
    kwargs = check_request(Request(model="shapes-tiny", prompt=f"  {RED} ", frames=6.0, height=48.0,
                                   steps="3,2,1", guidance=5, seed=7), info)
    assert kwargs == dict(prompt=RED, num_frames=6, height=48, width=32, num_inference_steps=(3, 2, 1),
                          first_steps=(3, 2, 1), guidance_scale=5.0, video_guidance_scale=2.0, seed=7)
    image = check_request(Request(model="shapes-tiny", prompt=RED, mode="text-to-image", frames=8), info)
    assert image["num_frames"] == 1 and image["num_inference_steps"] == (10, 10, 10)
    seeds = {check_request(Request(model="shapes-tiny", prompt=RED, random_seed=True), info)["seed"]
             for _ in range(4)}
    assert len(seeds) > 1 and all(0 <= s < 2**31 for s in seeds)
    used = check_request(Request(model="shapes-tiny", prompt=RED, negative_prompt="blurry"), info)
    assert used["negative_prompt"] == "blurry"  # guidance steers away from it
    blank = check_request(Request(model="shapes-tiny", prompt=RED, negative_prompt="  "), info)
    assert "negative_prompt" not in blank


def test_unreadable_uploads_are_sentences(tmp_path):
    from PIL import Image

    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(AppError, match=r"cannot read notes.png as an image \(PNG, JPEG"):
        check_image(tmp_path / "notes.png")
    Image.new("RGB", (40, 30), (0, 0, 255)).save(tmp_path / "good.png")
    cut = (tmp_path / "good.png").read_bytes()[:60]
    (tmp_path / "cut.png").write_bytes(cut)
    with pytest.raises(AppError, match="cannot read cut.png"):
        check_image(tmp_path / "cut.png")
    with pytest.raises(AppError, match="is gone; upload it again"):
        check_image(tmp_path / "missing.png")
    assert check_image(tmp_path / "good.png") == tmp_path / "good.png"


def test_text_to_video_writes_an_mp4_of_the_prompted_colour(registry, tmp_path):
    steps = []
    result = generate(registry, Request(model="shapes-tiny", prompt=RED, seed=3), tmp_path,
                      on_step=lambda i, n: steps.append((i, n)))
    assert result.kind == "video" and result.path.suffix == ".mp4" and result.path.parent == tmp_path
    assert steps == [(i, 120) for i in range(1, 121)]  # 4 units x 3 stages x 10 steps
    video, fps = read_video(result.path)
    assert video.shape == (4, 3, 32, 32) and fps == 8
    seen = describe_video(video)
    assert seen["color"] == "red" and seen["background"] == "black", seen
    s = result.settings
    assert (s["prompt"], s["frames"], s["height"], s["width"], s["seed"]) == (RED, 4, 32, 32, 3)
    assert s["steps"] == [10, 10, 10] and s["file"] == result.path.name and s["seconds"] > 0
    assert RED in result.caption and "seed 3" in result.caption and "4x32x32" in result.caption


def test_the_shipped_wan_teacher_is_listed_and_generates(registry, tmp_path):
    """checkpoints/wan-teacher-shapes (a diffusers WanPipeline folder) is offered beside the default
    and generates its 4k + 1 frames with its one stage."""
    assert "wan-teacher-shapes" in registry.names and registry.default == "shapes-long"
    info = registry.info("wan-teacher-shapes")
    assert (info.mode, info.space, info.num_stages, info.frames) == ("full_sequence", "latent", 1, 17)
    assert "1 stage," in info.summary() and info.frame_values[:3] == [1, 5, 9]
    with pytest.raises(AppError, match="this model has 1 stage, so give 1 number "):
        check_request(Request(model="wan-teacher-shapes", prompt=RED, steps="10,10"), info)
    request = Request(model="wan-teacher-shapes", prompt=RED, frames=5, steps="8")
    result = generate(registry, request, tmp_path)
    video, _ = read_video(result.path)
    assert video.shape == (5, 3, 32, 32) and result.settings["steps"] == [8]


def test_text_to_image_and_image_to_video(registry, tmp_path):
    from PIL import Image

    still = generate(registry, Request(model="shapes-tiny", prompt="a green square on a white background",
                                       mode="text-to-image", steps="4,4,4"), tmp_path)
    assert still.kind == "image" and still.path.suffix == ".png" and still.settings["frames"] == 1
    assert "4x4" not in still.caption and "32x32" in still.caption

    first = np.zeros((40, 60, 3), np.uint8)
    first[12:28, 22:38] = (0, 0, 255)  # a blue square in the middle of black
    Image.fromarray(first).save(tmp_path / "first.png")
    clip = generate(registry, Request(model="shapes-tiny", prompt="a blue square moving right on a black "
                                      "background", mode="image-to-video", frames=3, steps="4,4,4",
                                      image=str(tmp_path / "first.png")), tmp_path)
    video, _ = read_video(clip.path)
    assert video.shape == (3, 3, 32, 32) and clip.settings["image"] == "first.png"
    assert video[0, 2, 16, 16] > 0.8 and video[0, 0, 16, 16] < 0.2 and video[0, :, 2, 2].max() < 0.2


def test_an_error_leaves_the_model_usable(registry, tmp_path):
    def boom(i, n):
        if i == 3:
            raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        generate(registry, Request(model="shapes-tiny", prompt=RED, steps="2,2,2"), tmp_path, on_step=boom)
    with pytest.raises(AppError, match="write a prompt first"):
        generate(registry, Request(model="shapes-tiny", prompt=""), tmp_path)
    assert not registry.locks["shapes-tiny"].locked()
    again = generate(registry, Request(model="shapes-tiny", prompt=RED, steps="2,2,2"), tmp_path)
    assert again.path.is_file()


def test_one_generation_at_a_time_per_model(registry, tmp_path):
    active, most, errors = [0], [0], []
    guard = threading.Lock()

    def step(i, n):
        with guard:
            if i == 1:
                active[0] += 1
                most[0] = max(most[0], active[0])
            if i == n:
                active[0] -= 1
        time.sleep(0.002)

    def run(seed):
        try:
            generate(registry, Request(model="shapes-tiny", prompt=RED, seed=seed, steps="2,2,2"), tmp_path,
                     on_step=step)
        except Exception as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=run, args=(s,)) for s in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors and most[0] == 1 and len(list(tmp_path.glob("*.mp4"))) == 3


def test_the_page_builds_and_shows_errors_as_messages(registry, tmp_path):
    gr = need_gradio()
    from pyramidflow.app.ui import _error, build_app, control_values, settings_markdown

    app = build_app(registry, tmp_path)
    ids = {c.elem_id for c in app.blocks.values() if getattr(c, "elem_id", None)}
    assert {"prompt", "generate", "result-video", "gallery", "upload", "frames", "seed"} <= ids
    message = _error(AppError("height <24> is out of range"))
    assert isinstance(message, gr.Error) and message.message == "height &lt;24&gt; is out of range"
    crash = _error(RuntimeError("CUDA out of memory\nTraceback (most recent call last): ..."))
    assert crash.message == "generation failed: RuntimeError: CUDA out of memory"
    values = control_values(registry.info("shapes-tiny"))
    assert values["height"] == dict(value=32, minimum=16, maximum=128, step=16)
    assert values["first_steps"]["visible"] and values["negative"]["visible"]
    shown = settings_markdown({"prompt": "a <b> *c*", "steps": [1, 2, 3], "first_steps": None})
    assert shown == "**prompt** a &lt;b&gt; &#42;c&#42; · **steps** 1-2-3"


def test_app_command_errors_are_one_line(tmp_path, capsys):
    assert main(["app", "--checkpoint", str(tmp_path / "nope"), "--port", "7999"]) == 2
    assert "pyramidflow app: error: --checkpoint" in capsys.readouterr().err
    assert main(["app", "--port", "0"]) == 2
    assert "--port must be between 1 and 65535" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["app", "--help"])
    assert "--checkpoint DIR" in capsys.readouterr().out


def test_a_busy_port_is_one_line(capsys):
    import socket

    need_gradio()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["app", "--port", str(port), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"cannot serve on 127.0.0.1:{port}" in err and "choose another with --port" in err, err


def test_without_gradio_the_command_says_how_to_install_it(monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "gradio", None)  # import gradio -> ImportError
    assert main(["app", "--port", "7999"]) == 2
    assert 'pip install -e ".[app]"' in capsys.readouterr().err


def test_the_command_line_loads_neither_gradio_nor_torch():
    """``pyramidflow --help`` stays fast with the app command registered."""
    import subprocess
    import sys

    code = "import sys, pyramidflow.cli; print(sorted({'gradio', 'torch'} & set(sys.modules)))"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.strip() == "[]", run.stderr[-2000:]


def test_a_failing_model_load_is_a_sentence(tmp_path):
    broken = _fake_pipeline(tmp_path / "broken")
    registry = ModelRegistry(discover([broken], scan=None))
    with pytest.raises(AppError, match="cannot load model broken"):
        registry.info("broken")
    assert torch.get_num_threads() >= 1
