"""peft LoRA adapters on PyramidDiT's attention and feed-forward projections."""

import torch
from peft import LoraConfig

from pyramidflow.models import PyramidDiT

TINY = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4,
            text_dim=16, freq_dim=32, ffn_dim=32, num_layers=2)
TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "ffn.net.0.proj", "ffn.net.2"]


def _inputs():
    gen = torch.Generator().manual_seed(0)
    return (torch.randn(2, 4, 2, 4, 4, generator=gen), torch.tensor([800.0, 100.0]),
            torch.randn(2, 5, 16, generator=gen))


def test_lora_adapter_trains_only_lora_and_round_trips(tmp_path):
    torch.manual_seed(0)
    model = PyramidDiT(**TINY)
    x, t, text = _inputs()
    with torch.no_grad():
        before = model(x, t, text).sample
    model.requires_grad_(False)
    model.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian", target_modules=TARGETS))
    lora = {n for n, p in model.named_parameters() if p.requires_grad}
    assert lora and all("lora_" in n for n in lora)
    assert any("attn1.to_q" in n for n in lora) and any("ffn.net.2" in n for n in lora)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}

    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    target = torch.zeros_like(before)
    losses = []
    for _ in range(5):
        opt.zero_grad()
        loss = (model(x, t, text).sample - target).square().mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)

    with torch.no_grad():
        tuned = model(x, t, text).sample
    assert (tuned - before).abs().max() > 1e-4
    model.save_lora_adapter(tmp_path / "lora")  # diffusers' format: pytorch_lora_weights.safetensors
    assert (tmp_path / "lora" / "pytorch_lora_weights.safetensors").is_file()
    torch.manual_seed(0)
    fresh = PyramidDiT(**TINY)  # the same base weights
    fresh.load_lora_adapter(tmp_path / "lora", prefix=None, use_safetensors=True)
    with torch.no_grad():
        assert torch.allclose(fresh(x, t, text).sample, tuned, atol=1e-6)
        fresh.disable_adapters()
        assert torch.allclose(fresh(x, t, text).sample, before, atol=1e-6)
