"""Typed configs: YAML presets, key=value overrides, unknown keys rejected."""

from dataclasses import dataclass, field

import pytest

from pyramidflow.config import apply_overrides, load_config, to_dict
from pyramidflow.errors import PyramidflowError


@dataclass
class Optim:
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.95)


@dataclass
class Cfg:
    name: str = "x"
    steps: int = 10
    stages: tuple[int, ...] = (20, 20, 20)
    resume: str | None = None
    optim: Optim = field(default_factory=Optim)


def test_defaults_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("steps: 5\noptim:\n  lr: 3\n")
    cfg = load_config(Cfg, path, ["optim.betas=[0.8, 0.99]", "stages=[2,2,1]", "name=run1"])
    assert cfg.steps == 5 and cfg.optim.lr == 3.0 and isinstance(cfg.optim.lr, float)
    assert cfg.optim.betas == (0.8, 0.99) and cfg.stages == (2, 2, 1) and cfg.name == "run1"
    assert to_dict(cfg)["optim"]["betas"] == [0.8, 0.99]
    assert load_config(Cfg).steps == 10


def test_unknown_keys_and_bad_types(tmp_path):
    with pytest.raises(PyramidflowError, match="unknown config key optim.lrr; valid keys: betas, lr"):
        load_config(Cfg, None, ["optim.lrr=1"])
    path = tmp_path / "c.yaml"
    path.write_text("stepz: 5\n")
    with pytest.raises(PyramidflowError, match="unknown config key stepz"):
        load_config(Cfg, path)
    with pytest.raises(PyramidflowError, match="expected an integer"):
        load_config(Cfg, None, ["steps=1.5"])
    with pytest.raises(PyramidflowError, match="key=value"):
        apply_overrides({}, ["steps"])
    with pytest.raises(FileNotFoundError):
        load_config(Cfg, tmp_path / "missing.yaml")


def test_floats_written_like_3e_4_are_numbers(tmp_path):
    from pyramidflow.training.config import TrainConfig

    (tmp_path / "c.yaml").write_text("optim:\n  lr: 3e-4\n")
    cfg = load_config(TrainConfig, tmp_path / "c.yaml", ["optim.betas=[0.9, 9e-1]", "loop.ema_decay=1e-1"])
    assert cfg.optim.lr == 3e-4 and cfg.optim.betas == (0.9, 0.9) and cfg.loop.ema_decay == 0.1
    with pytest.raises(ValueError, match="optim.lr: expected a number"):
        load_config(TrainConfig, None, ["optim.lr=fast"])
    assert load_config(TrainConfig, None, ["checkpoint_every=7"]).loop.checkpoint_every == 7
    with pytest.raises(ValueError, match="ambiguous; write one of: data.seed, loop.seed"):
        load_config(TrainConfig, None, ["seed=3"])


def test_every_shipped_preset_loads_into_its_config():
    """Each YAML in configs/ parses into the dataclass of the command it is for (no typos, no stale keys)."""
    from pathlib import Path

    from pyramidflow.training.config import TrainConfig
    from pyramidflow.training.distill import DistillConfig
    from pyramidflow.training.vae.config import VAETrainConfig

    presets = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))
    assert len(presets) >= 4
    for path in presets:
        kinds = {"vae-": VAETrainConfig, "distill-": DistillConfig}
        cls = next((c for prefix, c in kinds.items() if path.name.startswith(prefix)), TrainConfig)
        cfg = load_config(cls, path)
        assert isinstance(cfg, cls), path.name
    shapes = load_config(VAETrainConfig, presets[[p.name for p in presets].index("vae-shapes-tiny.yaml")])
    assert shapes.model.shortcut and shapes.max_minutes == 10


def test_clean_targets_setting_is_checked():
    from pyramidflow.training.config import TrainConfig

    cfg = load_config(TrainConfig, None, ["data.clean_targets=video"])
    with pytest.raises(PyramidflowError, match="data.clean_targets must be one of auto, latent, pixel"):
        cfg.check()
    cfg = load_config(TrainConfig, None, ["data.clean_targets=pixel"])  # shapes source: nothing stored
    with pytest.raises(PyramidflowError, match="needs data.source: latents"):
        cfg.check()
    load_config(TrainConfig, None, ["data.clean_targets=latent"]).check()
