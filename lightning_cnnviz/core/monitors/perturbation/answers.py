"""What a model answers for a few probe images, read once for the pictures that perturb them: the task, the output
the task reads, and for class scores the class of each image and how its probability is read."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lightning_cnnviz.core.inputs.task import Target, Task, choose_target, decide_task
from lightning_cnnviz.core.model.modules import evaluating, logits_of
from lightning_cnnviz.core.model.trunk import Trunk

__all__ = ["Answer", "answer_of"]


@dataclass(frozen=True)
class Answer:
    """The decided ``task``; the ``main`` output it reads (None for a detector, and for a detector's backbone, whose
    output is features, not the detector's answer); for one score per class and image (classification,
    multilabel) the ``target`` (each image's class: the true one, else the predicted one) and the ``probability`` of
    the scores over their last dimension (softmax, sigmoid); None otherwise."""

    task: str
    main: Tensor | None
    target: Target | None = None
    probability: Callable[[Tensor], Tensor] | None = None


def answer_of(
    model: nn.Module, images: Tensor, labels: Tensor | None, task: Task, class_names: Sequence[str] | None = None
) -> Answer:
    """One eval forward of ``images``, read as ``task`` (``"auto"``: from the labels, else the output).

    Example:
        >>> net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 3))
        >>> found = answer_of(net, torch.rand(2, 1, 8, 8), torch.tensor([2, 0]), "auto")
        >>> found.task, found.target.classes.tolist(), found.target.rule
        ('classification', [2, 0], 'true class')
    """
    with evaluating(model):
        output = model(images)
    if isinstance(model, Trunk):
        return Answer("detection (the images go into its backbone)", None)
    decided, _ = decide_task(task, labels, output, images)
    main = logits_of(output) if decided != "detection" else None
    if decided in ("classification", "multilabel") and main is not None and main.dim() == 2:
        target = choose_target(decided, "auto", output, images, labels, class_names)
        probability = (lambda x: x.softmax(dim=-1)) if decided == "classification" else torch.sigmoid
        return Answer(decided, main, target, probability)
    return Answer(decided, main)
