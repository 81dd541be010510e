"""The app's handlers as plain functions: check a request, run the pipeline, write the result.

Everything a person can get wrong (an empty prompt, frames or a size the model cannot take, steps
that do not match its stages, an unreadable upload) raises :class:`AppError` with a sentence for the
page (the model list's errors are the same kind); the web layer shows it and carries on. No web
framework is imported here.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyramidflow.app.registry import AppError, ModelInfo, ModelRegistry
from pyramidflow.errors import PyramidflowError
from pyramidflow.io import write_video

MODES = ("text-to-video", "image-to-video", "text-to-image")
MAX_PROMPT = 500  # characters
MAX_STEPS = 100  # per stage
MAX_GUIDANCE = 20.0
MAX_SEED = 2**31 - 1
IMAGE_TYPES = "PNG, JPEG, WebP, BMP or GIF"
EXAMPLE_PROMPT = "a red circle moving slowly left on a black background"


@dataclass
class Request:
    """One press of the generate button; values as the page sends them (numbers may be floats or None)."""

    model: str
    prompt: str
    mode: str = "text-to-video"
    negative_prompt: str = ""
    frames: float | None = None
    height: float | None = None
    width: float | None = None
    steps: str = ""
    first_steps: str = ""
    guidance: float | None = None
    video_guidance: float | None = None
    seed: float | None = 0
    random_seed: bool = False
    image: str | Path | None = None


@dataclass
class Result:
    """A written result and the settings that made it."""

    path: Path
    kind: str  # video | image
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def caption(self) -> str:
        s = self.settings
        size = f"{s['height']}x{s['width']}"
        size = f"{s['frames']}x{size}" if s["frames"] > 1 else size
        guidance = f"{s['guidance']:g}" + (f"/{s['video_guidance']:g}" if s["frames"] > 1 else "")
        return (f"{s['prompt']} · {s['model']} · {s['mode']} · {size} · steps "
                f"{'-'.join(map(str, s['steps']))} · guidance {guidance} · seed {s['seed']}")


def parse_steps(text: str | None, stages: int, name: str) -> tuple[int, ...] | None:
    """'10,10,10' (or '10-10-10', '10 10 10') -> (10, 10, 10); empty -> None (the model's default)."""
    text = (text or "").strip()
    if not text:
        return None
    parts = [p for p in re.split(r"[,\-\s]+", text) if p]
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        example = ",".join(["10"] * stages)
        raise AppError(f"{name} must be whole numbers like {example}, got {text!r}") from None
    if len(values) != stages:
        plural = "s" if stages != 1 else ""
        raise AppError(f"{name}: this model has {stages} stage{plural}, so give {stages} number{plural} "
                       f"(e.g. {','.join(['10'] * stages)}), got {len(values)}")
    if any(not 1 <= v <= MAX_STEPS for v in values):
        raise AppError(f"{name} must each be between 1 and {MAX_STEPS}, got {text!r}")
    return values


def _number(value, name: str, what: str) -> float | None:
    """A form field as a float (None when left empty), or an AppError naming the field."""
    if value is None or value == "":
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise AppError(f"{name} must be {what}, got {value!r}") from None


def _whole(value, name: str, default: int) -> int:
    number = _number(value, name, "a whole number")
    if number is None:
        return default
    if number != int(number):
        raise AppError(f"{name} must be a whole number, got {value}")
    return int(number)


def _scale(value, name: str, default: float) -> float:
    number = _number(value, name, "a number")
    if number is None:
        return default
    if not 0.0 <= number <= MAX_GUIDANCE:
        raise AppError(f"{name} must be between 0 and {MAX_GUIDANCE:g}, got {number:g}")
    return number


def check_image(path: str | Path | None) -> Path:
    """An uploaded first frame that Pillow can decode; anything else is an :class:`AppError`."""
    from PIL import Image

    if path is None or str(path) == "":
        raise AppError("image-to-video needs a first frame: upload an image")
    path = Path(path)
    if not path.is_file():
        raise AppError(f"the uploaded file {path.name} is gone; upload it again")
    try:
        with Image.open(path) as img:
            img.verify()
        with Image.open(path) as img:  # verify() leaves the image unusable; decode it for real
            img.convert("RGB").load()
    except Exception as err:  # Pillow raises many kinds for broken or hostile files
        raise AppError(f"cannot read {path.name} as an image ({IMAGE_TYPES}): "
                       f"{type(err).__name__}") from None
    return path


def check_request(request: Request, info: ModelInfo) -> dict[str, Any]:
    """The request as pipeline keyword arguments, or an :class:`AppError` naming the problem."""
    if request.mode not in MODES:
        raise AppError(f"unknown mode {request.mode!r}; valid: {', '.join(MODES)}")
    prompt = (request.prompt or "").strip()
    if not prompt:
        raise AppError(f'write a prompt first, e.g. "{EXAMPLE_PROMPT}"')
    if len(prompt) > MAX_PROMPT:
        raise AppError(f"the prompt is {len(prompt)} characters long; at most {MAX_PROMPT}")
    frames = 1 if request.mode == "text-to-image" else _whole(request.frames, "frames", info.frames)
    if frames not in info.frame_values:
        shown = ", ".join(map(str, info.frame_values[:6])) + (", ..." if len(info.frame_values) > 6 else "")
        raise AppError(f"{info.name} cannot make {frames} frames: valid values are {shown} "
                       f"(at most {info.max_frames})")
    if request.mode == "image-to-video" and frames < 2:
        raise AppError("image-to-video needs at least 2 frames (the first is the uploaded image)")
    height = _whole(request.height, "height", info.height)
    width = _whole(request.width, "width", info.width)
    for name, size in (("height", height), ("width", width)):
        if not info.size_step <= size <= info.max_size or size % info.size_step:
            raise AppError(f"{name} {size} is out of range for {info.name}: use a multiple of "
                           f"{info.size_step} from {info.size_step} to {info.max_size}")
    kwargs: dict[str, Any] = dict(
        prompt=prompt, num_frames=frames, height=height, width=width,
        num_inference_steps=parse_steps(request.steps, info.num_stages, "steps per stage") or info.steps,
        guidance_scale=_scale(request.guidance, "guidance (first frame)", info.guidance),
        video_guidance_scale=_scale(request.video_guidance, "guidance (later frames)", info.video_guidance),
    )
    first = parse_steps(request.first_steps, info.num_stages, "first-frame steps")
    if info.mode == "autoregressive":
        kwargs["first_steps"] = first or info.first_steps or kwargs["num_inference_steps"]
    negative = (request.negative_prompt or "").strip()
    if negative and info.negative_prompt:
        kwargs["negative_prompt"] = negative
    if request.mode == "image-to-video":
        if not info.image_to_video:
            raise AppError(f"{info.name} cannot start from an image (it needs an autoregressive model "
                           "with units of one frame): use text-to-video")
        kwargs["image"] = str(check_image(request.image))
    if request.random_seed:
        seed = secrets.randbelow(MAX_SEED + 1)
    else:
        seed = _whole(request.seed, "seed", 0)
        if not 0 <= seed <= MAX_SEED:
            raise AppError(f"seed must be between 0 and {MAX_SEED}, or tick random, got {seed}")
    kwargs["seed"] = seed
    return kwargs


def generate(registry: ModelRegistry, request: Request, out_dir: str | Path,
             on_step: Callable[[int, int], None] | None = None) -> Result:
    """Check ``request``, run it on its model (one at a time per model) and write an mp4 (a png for
    one frame) under ``out_dir``. ``on_step(done, total)`` follows the pipeline's step callback."""
    info = registry.info(request.model)
    kwargs = check_request(request, info)
    pipe = registry.pipeline(request.model)
    callback = None
    if on_step is not None:
        def callback(_pipe, index, total, _info):
            on_step(index + 1, total)
    with registry.locks[request.model]:
        start = time.perf_counter()
        try:
            video = pipe(**kwargs, output_type="pt", progress=False, callback_on_step_end=callback).frames[0]
        except PyramidflowError as err:  # what the pipeline itself rejects, in its words
            raise AppError(str(err)) from None
        seconds = time.perf_counter() - start
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    kind = "image" if video.shape[0] == 1 else "video"
    stem = f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}-{_slug(kwargs['prompt'])}"
    path = write_video(out_dir / f"{stem}.{'png' if kind == 'image' else 'mp4'}", video.cpu(), fps=info.fps)
    settings = {
        "model": request.model, "mode": request.mode, "prompt": kwargs["prompt"],
        "negative_prompt": kwargs.get("negative_prompt", ""), "frames": int(video.shape[0]),
        "height": int(video.shape[2]), "width": int(video.shape[3]), "fps": info.fps,
        "steps": list(kwargs["num_inference_steps"]),
        "first_steps": list(kwargs["first_steps"]) if "first_steps" in kwargs else None,
        "guidance": kwargs["guidance_scale"], "video_guidance": kwargs["video_guidance_scale"],
        "seed": kwargs["seed"], "image": Path(kwargs["image"]).name if "image" in kwargs else None,
        "seconds": round(seconds, 3), "file": path.name,
    }
    return Result(path, kind, settings)


def _slug(text: str, limit: int = 40) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit].rstrip("-") or "clip"
