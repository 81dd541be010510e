"""Reading a user's first frame for image-to-video: any path, PIL image, array or tensor."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from pyramidflow.data.video import center_crop, cover_size
from pyramidflow.errors import PyramidflowError


def load_image(image, height: int, width: int) -> Tensor:
    """(3, height, width) float in [0, 1]: resized on the shorter side (bicubic), centre-cropped.

    ``image``: a file path, a PIL image, an (H, W, 3) uint8 array or a (3, H, W) tensor in [0, 1].
    """
    from PIL import Image, UnidentifiedImageError

    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"image not found: {path}")
        try:
            with Image.open(path) as img:
                image = img.convert("RGB")
        except (UnidentifiedImageError, OSError) as err:
            raise PyramidflowError(f"cannot read image {path}: {err}") from err
    elif isinstance(image, Tensor):
        if image.ndim != 3 or image.shape[0] != 3:
            raise PyramidflowError(f"an image tensor must be (3, H, W) in [0, 1], got {tuple(image.shape)}")
        image = Image.fromarray(image.clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy())
    elif isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise PyramidflowError(f"an image array must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
        image = Image.fromarray(image)
    elif not isinstance(image, Image.Image):
        raise PyramidflowError(f"unsupported image type {type(image).__name__}: give a path, a PIL image, "
                               "an (H, W, 3) uint8 array or a (3, H, W) tensor")
    image = image.convert("RGB")
    size = cover_size(image.width, image.height, height, width)
    arr = np.asarray(image.resize(size, Image.Resampling.BICUBIC))[None]  # (1, H', W', 3)
    arr = center_crop(arr, height, width)[0]
    return torch.from_numpy(np.array(arr)).permute(2, 0, 1).float().div(255)
