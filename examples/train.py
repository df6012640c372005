"""Train a demo CNN with the lightning_cnnviz monitors, configured from YAML (LightningCLI).

    python examples/train.py fit --config configs/digits.yaml
    python examples/train.py fit --config configs/fashion_mnist.yaml --data.root ../shared/data/fashion-mnist
    python examples/train.py fit --config configs/cifar10.yaml

Then open TensorBoard on the run's folder (printed at the end).
"""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.cli import LightningCLI

from lightning_cnnviz.cli import tensorboard_command
from lightning_cnnviz.demo.models import ImageClassifier


class CnnvizCLI(LightningCLI):
    """LightningCLI that prints the TensorBoard command for the run when fitting ends."""

    def after_fit(self) -> None:
        trainer: pl.Trainer = self.trainer
        if trainer.is_global_zero and trainer.logger is not None and trainer.logger.log_dir:
            root = Path(trainer.logger.save_dir or trainer.logger.log_dir)
            command = " ".join(tensorboard_command(root))  # works as printed, also outside the environment
            print(f"\nTraining done. See what the network learned:\n\n    {command}\n")


def main() -> None:
    CnnvizCLI(
        ImageClassifier,
        pl.LightningDataModule,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
    )


if __name__ == "__main__":
    main()
