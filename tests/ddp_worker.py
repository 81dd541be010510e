"""Run by torchrun in test_training_trainer: train a few steps on every rank, save the result."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from tiny_components import HashTextEncoder, TinyVideos, tiny_wan  # noqa: E402

from pyramidflow.training.trainer import LoopConfig, Trainer, TrainerConfig  # noqa: E402


def main(out: str, steps: int, grad_accum: int = 1) -> None:
    from accelerate import Accelerator

    torch.set_num_threads(1)
    acc = Accelerator(cpu=True)  # gloo when launched by torchrun with several processes
    text = HashTextEncoder()
    loop = LoopConfig(batch_size=8, max_steps=steps, grad_accum=grad_accum, ema_decay=0.9,
                      checkpoint_every=0, progress=False)
    config = TrainerConfig(loop=loop)
    trainer = Trainer(tiny_wan(), text, TinyVideos(), config, out, extra_trainable={"text_encoder": text},
                      accelerator=acc)
    stats = trainer.train()
    model = trainer.wrapped["transformer"]
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    torch.save({"state": state, "loss": stats["loss"], "backend": str(acc.distributed_type)},
               Path(out) / f"rank{acc.process_index}.pt")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 1)
