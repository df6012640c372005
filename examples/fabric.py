"""The monitors under Lightning Fabric: the same Trainer-free core objects as ``plain_pytorch.py``, on the network
that Fabric wraps (hooks go on the network itself; its forwards run through Fabric's wrapper), written to Fabric's
own loggers by the sinks their types call for (``sink_for(fabric.loggers, ...)``: TensorBoard here; a CSVLogger
gets PNG files).

    python examples/fabric.py --epochs 3 --logdir runs/fabric
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from lightning.fabric import Fabric
from lightning.fabric.loggers import TensorBoardLogger
from plain_pytorch import Pictures, arguments, digits

from lightning_cnnviz.core import select_balanced
from lightning_cnnviz.demo.models import SmallCNN
from lightning_cnnviz.sinks import Sinks, sink_for


def main(argv: list[str] | None = None) -> Path:
    args = arguments(argv, __doc__.splitlines()[0], "runs/fabric")
    fabric = Fabric(accelerator="auto", devices=1, loggers=TensorBoardLogger(args.logdir, name="fabric"))
    fabric.seed_everything(0)
    net = SmallCNN(in_channels=1, num_classes=10, channels=(16, 32, 32))
    model, optimizer = fabric.setup(net, torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9))
    x_train, y_train, x_val, y_val, mean, std = digits(fabric.device)
    chosen = select_balanced(y_val.cpu(), 64)
    sink = sink_for(fabric.loggers, root=args.logdir) if fabric.is_global_zero else Sinks()  # rank zero writes
    pictures = Pictures(sink, x_val[chosen], y_val[chosen], window=10)
    with pictures.start(net, mean, std) as tap:
        for epoch in range(args.epochs):
            model.train()
            order = torch.randperm(len(x_train), device=fabric.device)
            for batch in order[: 64 * args.steps_per_epoch].split(64):
                loss = F.cross_entropy(model(x_train[batch]), y_train[batch])
                optimizer.zero_grad()
                with tap.paused():
                    fabric.backward(loss)
                optimizer.step()
                pictures.step()
            if fabric.is_global_zero:
                pictures.epoch_end(net, epoch)
    sink.close()
    fabric.logger.finalize("success")
    fabric.print(f"TensorBoard: tensorboard --logdir {args.logdir}")
    return Path(args.logdir)


if __name__ == "__main__":
    main()
