"""Run by torchrun in test_training_trainer: train a few steps on every rank, save the result."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from tiny_components import HashTextEncoder, TinyVideos, flow_trainer, tiny_wan  # noqa: E402

from pyramidflow.training.config import LoopConfig  # noqa: E402


def main(out: str, steps: int, grad_accum: int = 1) -> None:
    from accelerate import Accelerator

    torch.set_num_threads(1)
    acc = Accelerator(cpu=True)  # gloo when launched by torchrun with several processes
    text = HashTextEncoder()
    loop = LoopConfig(batch_size=8, max_steps=steps, grad_accum=grad_accum, ema_decay=0.9,
                      checkpoint_every=0, progress=False)
    trainer = flow_trainer(tiny_wan(), text, TinyVideos(), out, loop, accelerator=acc)
    stats = trainer.train()
    model = trainer.modules["transformer"]
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    torch.save({"state": state, "loss": stats["loss"], "backend": str(acc.distributed_type)},
               Path(out) / f"rank{acc.process_index}.pt")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 1)
