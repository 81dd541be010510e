"""Vocabulary of the procedural shapes dataset: attributes, caption templates and a caption parser.

Every caption :func:`make_caption` writes can be read back by :func:`parse_prompt`, which is what
the evaluator (:mod:`pyramidflow.eval`) uses to learn what a prompt asked for. The parser is also
lenient with hand-written prompts: it looks for the vocabulary words anywhere in the text.
"""

from __future__ import annotations

import re

from pyramidflow.errors import PyramidflowError

# Object colours (RGB in [0, 1]); saturated and far apart so that a blurred, noisy object still
# lands on its own palette entry (smallest pairwise distance ~0.6).
COLORS: dict[str, tuple[float, float, float]] = {
    "red": (0.90, 0.10, 0.10),
    "green": (0.10, 0.75, 0.15),
    "blue": (0.10, 0.25, 0.95),
    "yellow": (0.95, 0.85, 0.10),
    "magenta": (0.85, 0.10, 0.85),
    "cyan": (0.10, 0.80, 0.85),
}

# Solid backgrounds; every object colour is at least 0.6 away from every background.
BACKGROUNDS: dict[str, tuple[float, float, float]] = {
    "black": (0.0, 0.0, 0.0),
    "white": (1.0, 1.0, 1.0),
    "gray": (0.5, 0.5, 0.5),
}

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")

# Unit motion per direction in image coordinates (x right, y down); "still" does not move.
DIRECTIONS: dict[str, tuple[float, float]] = {
    "left": (-1.0, 0.0),
    "right": (1.0, 0.0),
    "up": (0.0, -1.0),
    "down": (0.0, 1.0),
    "up-left": (-0.7071067811865476, -0.7071067811865476),
    "up-right": (0.7071067811865476, -0.7071067811865476),
    "down-left": (-0.7071067811865476, 0.7071067811865476),
    "down-right": (0.7071067811865476, 0.7071067811865476),
    "still": (0.0, 0.0),
}
MOVING_DIRECTIONS: tuple[str, ...] = tuple(d for d in DIRECTIONS if d != "still")

# Speed = fraction of the free travel range (frame size minus object size) covered over the clip,
# so motion is visible in a 4-frame 32x32 clip and a 16-frame clip still stays inside the frame.
SPEEDS: dict[str, float] = {"slow": 0.4, "medium": 0.65, "fast": 0.9}

# How directions and speeds are worded in captions.
DIRECTION_PHRASES: dict[str, str] = {
    "left": "left",
    "right": "right",
    "up": "up",
    "down": "down",
    "up-left": "up and to the left",
    "up-right": "up and to the right",
    "down-left": "down and to the left",
    "down-right": "down and to the right",
}
SPEED_ADVERBS: dict[str, str] = {"slow": "slowly", "medium": "steadily", "fast": "quickly"}

# {color} {shape} {motion} {background}; {motion} is e.g. "moving quickly up and to the left",
# "staying still", or "" for images.
TEMPLATES: tuple[str, ...] = (
    "a {color} {shape} {motion} on a {background} background",
    "a {color} {shape} {motion} over a {background} background",
    "{background} background, a {color} {shape} {motion}",
    "a video of a {color} {shape} {motion} against a {background} background",
)


def motion_phrase(direction: str | None, speed: str | None) -> str:
    """Caption words for a motion: ``"moving quickly left"``, ``"staying still"``, ``""`` (image)."""
    if not direction:
        return ""
    if direction == "still":
        return "staying still"
    if direction not in DIRECTION_PHRASES:
        raise PyramidflowError(f"unknown direction {direction!r}; valid: {', '.join(DIRECTIONS)}")
    adverb = SPEED_ADVERBS[speed] + " " if speed else ""
    return f"moving {adverb}{DIRECTION_PHRASES[direction]}"


def make_caption(
    color: str, shape: str, background: str, direction: str | None, speed: str | None, template: int = 0
) -> str:
    """Caption of one clip from its attributes with template number ``template``.

    ``direction`` ``None``/``""`` means an image (no motion words); ``speed`` may be empty.
    """
    text = TEMPLATES[template % len(TEMPLATES)].format(
        color=color, shape=shape, background=background, motion=motion_phrase(direction, speed)
    )
    return re.sub(r"\s+", " ", text).replace(" ,", ",").strip()


# Hyphenated names, then phrases longest first, so "down-left" and "up and to the left" win over
# "up" and "left".
_DIRECTION_PATTERNS: list[tuple[str, re.Pattern]] = [
    (name, re.compile(r"\b" + re.escape(name) + r"\b"))
    for name in ("up-left", "up-right", "down-left", "down-right")
] + [
    (name, re.compile(r"\b" + re.escape(phrase) + r"\b"))
    for name, phrase in sorted(DIRECTION_PHRASES.items(), key=lambda kv: -len(kv[1]))
]
_STILL = re.compile(r"\b(still|static|stationary|not moving|motionless)\b")
_BACKGROUND = re.compile(r"\b(" + "|".join(BACKGROUNDS) + r")\s+background\b|\bbackground\s+(?:is\s+)?("
                         + "|".join(BACKGROUNDS) + r")\b")


def _first_word(text: str, words) -> str | None:
    best = None
    for w in words:
        m = re.search(r"\b" + re.escape(w) + r"s?\b", text)
        if m and (best is None or m.start() < best[0]):
            best = (m.start(), w)
    return best[1] if best else None


def parse_prompt(text: str) -> dict[str, str | None]:
    """Attributes named in a caption: ``color``, ``shape``, ``background``, ``direction``, ``speed``.

    A value is ``None`` when the text does not mention it (``direction`` is ``None`` for image
    captions; ``"still"`` for "staying still"). The background is the colour word next to
    "background"; the object colour is the first palette colour word outside that phrase.
    """
    t = " ".join(text.lower().replace("grey", "gray").split())
    background = None
    m = _BACKGROUND.search(t)
    if m:
        background = m.group(1) or m.group(2)
        t_obj = t[: m.start()] + " " + t[m.end():]
    else:
        t_obj = t
    direction = None
    for name, pattern in _DIRECTION_PATTERNS:
        if pattern.search(t_obj):
            direction = name
            break
    if direction is None and _STILL.search(t_obj):
        direction = "still"
    speed = None
    for name, adverb in SPEED_ADVERBS.items():
        if re.search(r"\b(" + adverb + "|" + name + r")\b", t_obj):
            speed = name
    return {
        "color": _first_word(t_obj, COLORS),
        "shape": _first_word(t_obj, SHAPES),
        "background": background,
        "direction": direction,
        "speed": speed,
    }


def is_shapes_prompt(text: str) -> bool:
    """Does ``text`` describe a clip of the shapes dataset (does it name one of :data:`SHAPES`)?
    The shapes evaluator's checks mean something only for such prompts."""
    return parse_prompt(text)["shape"] is not None
