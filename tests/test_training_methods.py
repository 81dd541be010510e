"""Training methods: the flow method passes definition-2 clean targets through; the interface's
defaults; one loop drives several optimizers in phases (the VAE)."""

import torch
from tiny_components import HashTextEncoder, TinyVideos, tiny_wan

from pyramidflow.pyramid import HaarTransform, PyramidConfig, TemporalConfig
from pyramidflow.training.flow_loss import pyramid_flow_loss
from pyramidflow.training.methods.base import MicroBatch
from pyramidflow.training.methods.flow import FlowMatching
from pyramidflow.training.packed_loss import packed_flow_loss
from pyramidflow.training.trainer import example_generator


class WithPyramids(TinyVideos):
    """Items carry definition-2 clean signals: here the Haar pyramid of the clip, shifted by 0.5."""

    def __getitem__(self, i):
        item = super().__getitem__(i)
        x = item["video"].permute(1, 0, 2, 3) * 2 - 1  # (3, T, H, W) in model space
        t = HaarTransform()
        item["clean_pyramid"] = [t.down(x[None], level)[0] + 0.5 for level in (2, 1, 0)]
        return item


def _batch(data, n=4):
    return MicroBatch(step=0, index=0, positions=list(range(n)), items=[data[i] for i in range(n)],
                      generators=[example_generator(0, 0, j) for j in range(n)])


def _reference(method, batch, packed: bool):
    """The loss computed by hand with the items' pyramids (same generators, same draw order)."""
    gens = [example_generator(0, 0, j) for j in batch.positions]
    texts = ["" if float(torch.rand((), generator=g)) < method.text_dropout else it["text"]
             for g, it in zip(gens, batch.items, strict=True)]
    text = method.encode_text(texts)
    x0 = torch.stack([it["video"] for it in batch.items]).permute(0, 2, 1, 3, 4) * 2 - 1
    pyramids = [it["clean_pyramid"] for it in batch.items]
    if packed:
        batched = [[lv[None] for lv in p] for p in pyramids]
        return packed_flow_loss(method.transformer, list(x0.split(1)), text, method.schedule,
                                method.transform, gens, method.temporal, clean_pyramids=batched).total
    stacked = [torch.stack(level) for level in zip(*pyramids, strict=True)]
    return pyramid_flow_loss(method.transformer, x0, text, method.schedule, method.transform, gens,
                             clean_pyramid=stacked).total


def test_flow_method_uses_definition_two_targets_from_the_data():
    data, plain = WithPyramids(n=4), TinyVideos(n=4)
    method = FlowMatching(tiny_wan(), HashTextEncoder(), pyramid=PyramidConfig())
    got = method.loss("main", _batch(data)).total
    torch.testing.assert_close(got, _reference(method, _batch(data), packed=False), rtol=0, atol=0)
    without = method.loss("main", _batch(plain)).total
    assert not torch.allclose(got, without)  # the shifted pyramid really is what the loss saw


def test_autoregressive_flow_method_uses_definition_two_history_too():
    from test_training_temporal import tiny_dit

    data = WithPyramids(n=4, frames=2)
    method = FlowMatching(tiny_dit(), HashTextEncoder(), temporal=TemporalConfig("autoregressive", 1))
    got = method.loss("main", _batch(data)).total
    torch.testing.assert_close(got, _reference(method, _batch(data), packed=True), rtol=0, atol=0)
    assert not torch.allclose(got, method.loss("main", _batch(TinyVideos(n=4, frames=2))).total)


def test_flow_method_roles():
    text = HashTextEncoder()
    trained = FlowMatching(tiny_wan(), text, train_text_encoder=True)
    assert set(trained.modules()) == {"transformer", "text_encoder"} and trained.ema_roles() == tuple(
        trained.modules())
    assert set(trained.frozen_modules()) == {"autoencoder"}  # pixel space: the identity autoencoder
    frozen = FlowMatching(tiny_wan(), text)
    assert set(frozen.modules()) == {"transformer"} and "text_encoder" in frozen.frozen_modules()
    assert frozen.optimizers()["main"].roles == ("transformer",)
