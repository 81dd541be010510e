"""Which models the app offers, what each one allows, and loading them once.

The list is data: every folder of ``checkpoints/`` with a ``model_index.json`` (a saved pipeline),
plus the folders given with ``--checkpoint`` (a saved pipeline, a training checkpoint or a training
output folder). The first given folder is the default; without one, the demo's shipped model.
Models are loaded on first use and kept; each has a lock so that one generation runs at a time per
model.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pyramidflow.demo import DEFAULT_CHECKPOINT
from pyramidflow.errors import PyramidflowError
from pyramidflow.pipelines import PyramidFlowPipeline

SHIPPED = DEFAULT_CHECKPOINT.parent  # checkpoints/ of the repository
MAX_SIZE_FACTOR = 4  # sizes up to 4x the trained size
MAX_FRAMES_FACTOR = 4  # frames up to 4x the trained length (at least 16)


class AppError(PyramidflowError):
    """A request the app cannot run, with the sentence to show in the page."""


@dataclass(frozen=True)
class ModelEntry:
    """A model the app lists: its name in the page and its folder."""

    name: str
    path: Path


@dataclass
class ModelInfo:
    """What the page offers for one loaded model; read from the pipeline, nothing hard-coded."""

    name: str
    mode: str  # autoregressive | full_sequence
    space: str  # pixel | latent
    frames: int  # default number of frames
    frame_values: list[int]  # every valid number of frames up to max_frames
    height: int
    width: int
    size_step: int  # sizes must be multiples of this
    max_size: int
    fps: float
    steps: tuple[int, ...]
    first_steps: tuple[int, ...] | None  # autoregressive: the first unit's steps
    num_stages: int
    guidance: float
    video_guidance: float
    image_to_video: bool
    negative_prompt: bool  # the pipeline takes a negative prompt
    parameters: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def max_frames(self) -> int:
        return self.frame_values[-1]

    def summary(self) -> str:
        """One line for the page."""
        frames = ", ".join(map(str, self.frame_values[:5]))
        more = ", ..." if len(self.frame_values) > 5 else ""
        i2v = "yes" if self.image_to_video else "no"
        return (f"**{self.name}**: {self.space} space, {self.mode.replace('_', ' ')}, "
                f"{self.num_stages} stage{'s' if self.num_stages != 1 else ''}, "
                f"{self.parameters / 1e6:.1f}M parameters; "
                f"trained at {self.frames} frames of {self.height}x{self.width}; "
                f"frames {frames}{more} (up to {self.max_frames}); sizes multiples of {self.size_step} "
                f"up to {self.max_size}; image-to-video: {i2v}")


def discover(checkpoints: Sequence[str | Path] = (), scan: Path | None = SHIPPED) -> list[ModelEntry]:
    """The given folders (first: the default), then the saved pipelines found in ``scan``.

    Without given folders the demo's shipped model comes first. Names are folder names, made unique.
    """
    given = []
    for item in checkpoints:
        path = Path(item).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"--checkpoint {item}: no such folder")
        given.append(path.resolve())
    found = []
    if scan is not None and scan.is_dir():
        found = sorted(p.parent.resolve() for p in scan.glob("*/model_index.json"))
    if not given and DEFAULT_CHECKPOINT.resolve() in found:
        found.remove(DEFAULT_CHECKPOINT.resolve())
        found.insert(0, DEFAULT_CHECKPOINT.resolve())
    paths = list(dict.fromkeys(given + found))
    if not paths:
        raise FileNotFoundError(f"no model found in {scan}: give one with --checkpoint DIR")
    entries, names = [], set()
    for path in paths:
        name = path.name if path.name not in names else str(path)
        names.add(name)
        entries.append(ModelEntry(name, path))
    return entries


def model_info(name: str, pipe: PyramidFlowPipeline) -> ModelInfo:
    """Read what ``pipe`` allows: valid frame counts and sizes are found by asking the pipeline."""
    cfg, s = pipe.config, pipe.config.sampling
    frame_limit = max(16, MAX_FRAMES_FACTOR * cfg.frames)
    frame_values = [n for n in range(1, frame_limit + 1) if _fits(pipe.model_frames, n)]
    max_size = MAX_SIZE_FACTOR * max(cfg.height, cfg.width)
    step = next((n for n in range(1, max_size + 1)
                 if _fits(pipe.model_shape, 1, frame_values[0], n, n)), cfg.height)
    first = tuple(s.first_steps) if s.first_steps else None
    video_guidance = s.guidance if s.video_guidance is None else s.video_guidance
    accepts = inspect.signature(type(pipe).__call__).parameters
    return ModelInfo(
        name=name, mode=cfg.temporal.mode, space=cfg.space, frames=cfg.frames, frame_values=frame_values,
        height=cfg.height, width=cfg.width, size_step=step, max_size=max_size, fps=cfg.fps,
        steps=tuple(s.steps), first_steps=first, num_stages=pipe.schedule.num_stages,
        guidance=float(s.guidance), video_guidance=float(video_guidance),
        image_to_video=cfg.temporal.autoregressive and cfg.temporal.frames_per_unit == 1,
        negative_prompt="negative_prompt" in accepts,
        parameters=sum(p.numel() for p in pipe.transformer.parameters()),
    )


def _fits(check, *args) -> bool:
    try:
        check(*args)
    except PyramidflowError:
        return False
    return True


class ModelRegistry:
    """The listed models, loaded on first use (thread-safe), each with its generation lock."""

    def __init__(self, entries: Sequence[ModelEntry], device: str | None = None) -> None:
        if not entries:
            raise AppError("the app needs at least one model")
        self.entries = {e.name: e for e in entries}
        self.device = device
        self._pipes: dict[str, PyramidFlowPipeline] = {}
        self._infos: dict[str, ModelInfo] = {}
        self._load_lock = threading.Lock()
        self.locks = {name: threading.Lock() for name in self.entries}

    @property
    def names(self) -> list[str]:
        return list(self.entries)

    @property
    def default(self) -> str:
        return self.names[0]

    def entry(self, name: str) -> ModelEntry:
        if name not in self.entries:
            raise AppError(f"unknown model {name!r}; valid: {', '.join(self.entries)}")
        return self.entries[name]

    def pipeline(self, name: str) -> PyramidFlowPipeline:
        entry = self.entry(name)
        with self._load_lock:
            if name not in self._pipes:
                device = self.device
                if device is None:
                    import torch

                    device = "cuda" if torch.cuda.is_available() else "cpu"
                try:
                    pipe = PyramidFlowPipeline.from_pretrained(entry.path, device=device)
                except Exception as err:  # any failure to load is a sentence, the app goes on
                    message = str(err).splitlines()[0] if str(err) else type(err).__name__
                    raise AppError(f"cannot load model {name} from {entry.path}: {message}") from err
                self._infos[name] = model_info(name, pipe)
                self._pipes[name] = pipe
            return self._pipes[name]

    def info(self, name: str) -> ModelInfo:
        self.pipeline(name)
        return self._infos[name]
