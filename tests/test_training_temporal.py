"""The temporal-pyramid training loss: sequences, draws, equivalences and mixed clip lengths."""

import pytest
import torch
from tiny_components import TinyVideos, flow_trainer

from pyramidflow.models import PyramidDiT
from pyramidflow.pyramid import HaarTransform, PyramidSchedule, TemporalConfig, training_sample
from pyramidflow.pyramid.temporal import compress_history, history_levels
from pyramidflow.training.config import LoopConfig
from pyramidflow.training.flow_loss import pyramid_flow_loss
from pyramidflow.training.packed_loss import draw_example, packed_flow_loss

K = 3


def tiny_dit(seed=0, channels=3):
    torch.manual_seed(seed)
    return PyramidDiT(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=channels,
                      out_channels=channels, text_dim=8, freq_dim=16, ffn_dim=32, num_layers=2)


def _setup():
    return PyramidSchedule(K), HaarTransform()


def test_autoregressive_example_layout():
    schedule, transform = _setup()
    x0 = torch.randn(1, 3, 4, 16, 16, dtype=torch.float64)
    ar = TemporalConfig("autoregressive", 1, corrupt_max=0.0)
    seen = set()
    for seed in range(40):
        ex = draw_example(x0, schedule, transform, torch.Generator().manual_seed(seed), ar, patch_frames=1)
        u, s = ex.unit, ex.stage
        seen.add((u, s))
        *hist, cur = ex.segments
        assert cur.unit == u and len(hist) == u
        levels = history_levels(u, s, K)
        expected = compress_history(list(x0.split(1, 2))[:u], s, K, transform)
        for h, e, lv in zip(hist, expected, levels, strict=True):
            assert torch.equal(h.latent, e.latent)  # no corruption: the exact compressed clean history
            assert float(torch.as_tensor(h.timestep)) == 0.0  # labelled clean, as at inference
            f = 2 ** (lv - (K - 1 - s))  # block centres on the current stage's grid
            assert tuple(h.scale) == (1.0, f, f) and h.offset[0] == e.unit
        assert cur.latent.shape[-1] == 16 // 2 ** (K - 1 - s) and cur.offset[0] == u
        # the current segment is the training path of unit u, drawn right after the unit index
        g = torch.Generator().manual_seed(seed)
        torch.randint(4, (), generator=g)
        ts = training_sample(x0[:, :, u : u + 1], schedule, transform, generator=g)
        assert torch.equal(cur.latent, ts.x_t[0][None]) and torch.equal(ex.target, ts.target[0][None])
        assert float(torch.as_tensor(cur.timestep)) == pytest.approx(1000 * float(ts.sigma[0]))
    assert {u for u, _ in seen} == {0, 1, 2, 3} and {s for _, s in seen} == {0, 1, 2}


def test_history_corruption_levels_are_uniform():
    """Corruption level s ~ U(0, 1/3) per example: recover s from the mean of the corrupted
    history over many draws (Monte Carlo, tolerance from the sample size)."""
    schedule, transform = _setup()
    x0 = torch.full((1, 3, 2, 8, 8), 2.0, dtype=torch.float64)
    ar = TemporalConfig("autoregressive", 1, corrupt_max=1 / 3)
    levels = []
    for seed in range(2000):
        g = torch.Generator().manual_seed(seed)
        ex = draw_example(x0, schedule, transform, g, ar, patch_frames=1)
        if ex.unit == 1:
            h = ex.segments[0].latent  # (1 - s) * 2 + s * eps; eps mean over few pixels is noisy
            levels.append(float(1 - h.mean() / 2))
    levels = torch.tensor(levels, dtype=torch.float64)
    n = len(levels)
    assert n > 800
    # s_hat = s (1 - mean(eps) / 2): E = E[s] = 1/6; Var = Var(s) + E[s^2] Var(mean eps) / 4, where
    # Var(s) = 1/108, E[s^2] = 1/27 and Var(mean eps) = 1 / pixels <= 1/12 (the 2x2 level)
    var_lo, var_hi = 1 / 108, 1 / 108 + (1 / 27) / (4 * 12)
    assert abs(float(levels.mean()) - 1 / 6) < 4 * (var_hi / n) ** 0.5
    se_var = ((1 / 3) ** 4 * (1 / 80 - 1 / 144) / n) ** 0.5 * 1.5  # fourth-moment SE, padded for the eps term
    assert var_lo - 4 * se_var < float(levels.var()) < var_hi + 4 * se_var


def test_history_shift_moves_each_history_unit_and_nothing_else():
    """history_shift (7.4): the current segment and target are untouched, each history unit is
    moved as a whole by its own draw, scaled to its level; the draws' spread matches the std
    (Monte Carlo over the full-resolution units of 400 examples: the sample std of N(0, s^2) has
    relative error 1/sqrt(2n))."""
    schedule, transform = _setup()
    size = 32
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float64), torch.arange(size, dtype=torch.float64),
                            indexing="ij")
    blob = torch.exp(-((yy - 15.5) ** 2 + (xx - 15.5) ** 2) / (2 * 3.0**2))
    x0 = blob.expand(1, 3, 3, size, size).clone()
    plain = TemporalConfig("autoregressive", 1, corrupt_max=0.0)
    moved = TemporalConfig("autoregressive", 1, corrupt_max=0.0, history_shift=0.5)
    moves = []
    for seed in range(400):
        a = draw_example(x0, schedule, transform, torch.Generator().manual_seed(seed), plain, patch_frames=1)
        b = draw_example(x0, schedule, transform, torch.Generator().manual_seed(seed), moved, patch_frames=1)
        assert a.unit == b.unit and a.stage == b.stage
        assert torch.equal(a.segments[-1].latent, b.segments[-1].latent) and torch.equal(a.target, b.target)
        for ha, hb in zip(a.segments[:-1], b.segments[:-1], strict=True):
            f = ha.latent[0, 0, 0]  # one channel: the move is the same for all
            w = hb.latent[0, 0, 0]
            n = f.shape[-1]
            grid = (torch.arange(n, dtype=torch.float64) + 0.5) * (size / n) - 0.5  # full-resolution pixels
            cy = float((w.sum(1) * grid).sum() / w.sum() - (f.sum(1) * grid).sum() / f.sum())
            cx = float((w.sum(0) * grid).sum() / w.sum() - (f.sum(0) * grid).sum() / f.sum())
            if n == size:  # full resolution: the most precise centroid
                moves += [cy, cx]
            assert torch.equal(hb.latent[0, 0], hb.latent[0, 2])
    m = torch.tensor(moves)
    assert len(m) > 100
    assert abs(float(m.mean())) < 4 * 0.5 / len(m) ** 0.5
    assert abs(float(m.std()) / 0.5 - 1) < 4 / (2 * len(m)) ** 0.5 + 0.05  # + bicubic's centroid error
    with pytest.raises(ValueError, match="history_shift"):
        TemporalConfig("autoregressive", 1, history_shift=-1.0).check()


def test_full_sequence_packed_equals_batched_loss():
    schedule, transform = _setup()
    model = tiny_dit()
    x0 = torch.randn(4, 3, 2, 8, 8)
    text = torch.randn(4, 5, 8)
    gens = lambda: [torch.Generator().manual_seed(100 + i) for i in range(4)]  # noqa: E731
    a = pyramid_flow_loss(model, x0, text, schedule, transform, gens())
    b = packed_flow_loss(model, list(x0.split(1)), text, schedule, transform, gens(), TemporalConfig())
    assert torch.equal(a.stage, b.stage)
    torch.testing.assert_close(a.per_example, b.per_example, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(a.loss, b.loss, rtol=1e-4, atol=1e-6)


def test_packed_examples_do_not_interact():
    """An example's loss is the same alone or packed with others (videos and images mixed)."""
    schedule, transform = _setup()
    model = tiny_dit()
    ar = TemporalConfig("autoregressive", 1)
    clips = [torch.randn(1, 3, 4, 8, 8), torch.randn(1, 3, 1, 8, 8), torch.randn(1, 3, 3, 8, 8)]
    text = torch.randn(3, 5, 8)
    gens = lambda: [torch.Generator().manual_seed(7 + i) for i in range(3)]  # noqa: E731
    together = packed_flow_loss(model, clips, text, schedule, transform, gens(), ar)
    for i in range(3):
        alone = packed_flow_loss(model, [clips[i]], text[i : i + 1], schedule, transform, [gens()[i]], ar)
        torch.testing.assert_close(alone.per_example[0], together.per_example[i], rtol=1e-4, atol=1e-6)


def test_loss_ignores_future_units():
    """Block causality in training: frames after the drawn unit never change its loss."""
    schedule, transform = _setup()
    model = tiny_dit()
    ar = TemporalConfig("autoregressive", 1)
    x0 = torch.randn(1, 3, 4, 8, 8)
    text = torch.randn(1, 5, 8)
    for seed in range(6):
        ex = draw_example(x0, schedule, transform, torch.Generator().manual_seed(seed), ar, 1)
        changed = x0.clone()
        changed[:, :, ex.unit + 1 :] += 5.0
        g = lambda seed=seed: [torch.Generator().manual_seed(seed)]  # noqa: E731
        a = packed_flow_loss(model, [x0], text, schedule, transform, g(), ar)
        b = packed_flow_loss(model, [changed], text, schedule, transform, g(), ar)
        torch.testing.assert_close(a.loss, b.loss, rtol=0, atol=0)


def test_bad_temporal_config_and_frame_counts():
    schedule, transform = _setup()
    with pytest.raises(ValueError, match="full_sequence, autoregressive"):
        TemporalConfig("sideways").check()
    ar = TemporalConfig("autoregressive", 2)
    with pytest.raises(ValueError, match="multiple of 2"):
        draw_example(torch.randn(1, 3, 3, 8, 8), schedule, transform, torch.Generator(), ar, 1)


class MixedLengths(TinyVideos):
    """Every third item is a one-frame image."""

    def __getitem__(self, i):
        item = super().__getitem__(i)
        if i % 3 == 0:
            item["video"] = item["video"][:1]
        return item


@pytest.mark.parametrize("mode", ["full_sequence", "autoregressive"])
def test_trainer_mixes_images_and_videos(tmp_path, mode):
    from tiny_components import HashTextEncoder

    text = HashTextEncoder()
    loop = LoopConfig(batch_size=6, max_steps=3, checkpoint_every=0, progress=False)
    trainer = flow_trainer(tiny_dit(), text, MixedLengths(n=6, frames=2), tmp_path, loop,
                           temporal=TemporalConfig(mode))
    before = [p.detach().clone() for p in trainer.modules["transformer"].parameters()]
    stats = trainer.train()
    assert torch.isfinite(torch.tensor(stats["loss"]))
    after = list(trainer.modules["transformer"].parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))


def test_packed_gradients_equal_separate_gradients():
    """The padded packed attention and expanded modulation give the gradients of separate calls."""
    schedule, transform = _setup()
    model = tiny_dit()
    ar = TemporalConfig("autoregressive", 1)
    clips = [torch.randn(1, 3, 4, 8, 8) for _ in range(3)]
    text = torch.randn(3, 5, 8)
    gens = lambda: [torch.Generator().manual_seed(30 + i) for i in range(3)]  # noqa: E731
    packed_flow_loss(model, clips, text, schedule, transform, gens(), ar).total.backward()
    together = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    for i in range(3):
        alone = packed_flow_loss(model, [clips[i]], text[i : i + 1], schedule, transform, [gens()[i]], ar)
        alone.total.backward()
    for a, p in zip(together, model.parameters(), strict=True):
        torch.testing.assert_close(a, p.grad, rtol=1e-4, atol=1e-6)
