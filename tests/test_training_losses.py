"""The pyramidal flow-matching loss with a diffusers Wan transformer."""

import torch
from diffusers import WanTransformer3DModel

from pyramidflow.pyramid import HaarTransform, PyramidSchedule, training_sample
from pyramidflow.training.flow_loss import pyramid_flow_loss


def _tiny_wan():
    torch.manual_seed(0)
    return WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=3, out_channels=3,
        text_dim=8, freq_dim=16, ffn_dim=32, num_layers=1, rope_max_seq_len=32,
    )


def test_loss_equals_hand_computed_per_example_mse():
    model = _tiny_wan().eval()
    schedule, transform = PyramidSchedule(3), HaarTransform()
    x0 = torch.randn(6, 3, 2, 16, 16)
    text = torch.randn(6, 5, 8)
    out = pyramid_flow_loss(model, x0, text, schedule, transform, torch.Generator().manual_seed(4))
    # Recompute independently from the same draws, one example at a time.
    ts = training_sample(x0, schedule, transform, generator=torch.Generator().manual_seed(4))
    manual = []
    with torch.no_grad():
        for i in range(6):
            pred = model(hidden_states=ts.x_t[i][None], timestep=1000 * ts.sigma[i : i + 1],
                         encoder_hidden_states=text[i : i + 1], return_dict=False)[0]
            manual.append(((pred - ts.target[i][None]) ** 2).mean())
    manual = torch.stack(manual)
    torch.testing.assert_close(out.per_example, manual, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(out.loss.detach(), manual.mean(), rtol=1e-4, atol=1e-6)
    for s, value in out.per_stage.items():
        assert abs(value - float(manual[ts.stage == s].mean())) < 1e-4


def test_loss_trains_a_wan_transformer():
    """AdamW on one fixed draw of the path fits it: gradients reach every stage's prediction."""
    model = _tiny_wan()
    schedule, transform = PyramidSchedule(2), HaarTransform()
    x0 = torch.randn(4, 3, 1, 8, 8).clamp(-1, 1)
    text = torch.randn(4, 3, 8)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)

    def evaluate():
        with torch.no_grad():
            return float(pyramid_flow_loss(model, x0, text, schedule, transform,
                                           torch.Generator().manual_seed(0), stage=1).loss)

    before = evaluate()
    for _ in range(40):
        loss = pyramid_flow_loss(model, x0, text, schedule, transform,
                                 torch.Generator().manual_seed(0), stage=1).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert evaluate() < 0.5 * before
