"""Train with LightningCLI from a YAML config that names the model, the data and the monitors (``class_path``).

    python examples/train.py fit --config lightning_cnnviz/demo/configs/digits.yaml
    python examples/train.py fit --config my_run.yaml --trainer.max_epochs 20

This is what ``cnnviz demo`` runs on the packaged demo configs; copy one of them to start a config of your own.
When fitting ends it prints the commands that open TensorBoard on the run and report on its checkpoint.
"""

from lightning_cnnviz.cli import lightning_cli

if __name__ == "__main__":
    lightning_cli()
