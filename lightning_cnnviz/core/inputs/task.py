"""What a network is trained for, read off its labels or its output, and what its saliency maps explain for it: a
:class:`Target`, one score per image that every method differentiates (or occludes) alike."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from lightning_cnnviz.core.model.modules import class_name, logits_of
from lightning_cnnviz.core.protocol import DoesNotApply

__all__ = ["TASKS", "Target", "choose_target", "decide_task", "describe_labels", "detections_of", "label_kind"]

TASKS = ("classification", "multilabel", "regression", "segmentation", "reconstruction", "embedding", "detection")
Task = Literal[
    "auto", "classification", "multilabel", "regression", "segmentation", "reconstruction", "embedding", "detection"
]
LabelKind = Literal["class", "multilabel", "value", "mask"]
TargetSpec = Literal["auto", "true", "predicted"] | int | Callable[[Any, Any], Tensor]
Score = Callable[[Any, Tensor, Tensor], Tensor]  # (model output, inputs, each input's image index) -> (n,)
TASK_OF_LABELS: dict[str, str] = {
    "class": "classification", "multilabel": "multilabel", "value": "regression", "mask": "segmentation"
}  # fmt: skip


def label_kind(labels: Tensor | None, count: int) -> LabelKind | None:
    """What ``labels`` (for ``count`` images) are: ``"class"`` (integer (N,)), ``"multilabel"`` (multi-hot (N, C)
    of zeros and ones), ``"value"`` (floating (N,), (N, 1), or (N, K) not multi-hot), ``"mask"`` (integer
    (N, H, W)); None for anything else.

    Example:
        >>> label_kind(torch.tensor([3, 1]), 2), label_kind(torch.tensor([[0.0, 1.0], [1.0, 1.0]]), 2)
        ('class', 'multilabel')
        >>> label_kind(torch.rand(2, 1), 2), label_kind(torch.zeros(2, 8, 8, dtype=torch.long), 2)
        ('value', 'mask')
    """
    if not isinstance(labels, Tensor) or labels.dim() == 0 or labels.shape[0] != count or labels.is_complex():
        return None
    binary = labels.dim() == 2 and labels.shape[1] > 1 and bool(((labels == 0) | (labels == 1)).all())
    if labels.is_floating_point():
        if labels.dim() == 1 or (labels.dim() == 2 and labels.shape[1] == 1):
            return "value"
        return ("multilabel" if binary else "value") if labels.dim() == 2 else None
    if labels.dim() == 1:
        return "class"
    return "mask" if labels.dim() == 3 else "multilabel" if binary else None


def task_of_output(output: Tensor, images: Tensor) -> str:
    """The task a model's (main) output suggests without labels: reconstruction for an output of the input's
    shape, segmentation for another (N, C, H, W), regression for one value per image, else embedding."""
    if output.shape == images.shape:
        return "reconstruction"
    if output.dim() == 4:
        return "segmentation"
    if output.dim() == 1 or (output.dim() == 2 and output.shape[1] == 1):
        return "regression"
    return "embedding"


def decide_task(task: str, labels: Tensor | None, output: Any, images: Tensor) -> tuple[str, str]:
    """``(task, why)``: ``task`` itself unless it is ``"auto"``, which decides from the labels first (integer (N,):
    classification; multi-hot (N, C): multilabel; floating (N,) or (N, 1): regression; integer (N, H, W):
    segmentation), else from the output (:func:`task_of_output`); ``why`` says what was found.

    Example:
        >>> decide_task("auto", None, torch.zeros(2, 3, 8, 8), torch.zeros(2, 3, 8, 8))[0]
        'reconstruction'
    """
    kind = label_kind(labels, len(images))
    if task != "auto":
        return task, f"task={task!r} was given"
    if detections_of(output) is not None:
        return "detection", f"the model gives boxes, labels and scores for each of the {len(images)} images"
    main = logits_of(output)
    if kind is not None:
        return TASK_OF_LABELS[kind], f"the batches hold {_describe_kind(kind, labels)}"
    chosen = task_of_output(main, images)
    return chosen, f"the batches hold no labels and the model's output is {tuple(main.shape)}"


def detections_of(output: Any) -> list[Mapping[str, Tensor]] | None:
    """A detector's output, one dict per image with at least ``scores`` (and, as torchvision's, ``boxes`` and
    ``labels``, sorted by score or not); None for any other output.

    Example:
        >>> detections_of([{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0)}]) is not None
        True
    """
    if not isinstance(output, (list, tuple)) or not output:
        return None
    if all(isinstance(item, Mapping) and isinstance(item.get("scores"), Tensor) for item in output):
        return list(output)
    return None


def top_boxes(output: Any) -> list[tuple[int, float, int] | None]:
    """Per image of a detector's output, ``(class, score, boxes)`` of its highest-scoring box (class 0 when the
    detector gives no labels) and how many boxes it gave; None for an image without one."""
    found: list[tuple[int, float, int] | None] = []
    for item in detections_of(output) or []:
        scores = item["scores"].detach()
        if scores.numel() == 0:
            found.append(None)
            continue
        best = int(scores.argmax())
        labels = item.get("labels")
        found.append((int(labels[best]) if isinstance(labels, Tensor) else 0, float(scores[best]), len(scores)))
    return found


def _detection_target(target: TargetSpec, output: Any, images: Tensor, class_names: Sequence[str] | None) -> Target:
    """The score of each image's highest-scoring box, or of its best box of class ``target``: the highest score
    among the boxes of that class, so a noisy or occluded copy is scored by the same class (zero without one)."""
    if detections_of(output) is None:
        raise DoesNotApply(
            f"task='detection' explains box scores, and the model's output is {type(output).__name__}, not one dict "
            "of boxes, labels and scores per image: pass task='auto' or a callable target."
        )
    if target == "true":
        raise DoesNotApply(
            "target='true' chooses between classes, and a detector's batches hold boxes: pass target='auto' (the "
            "highest-scoring box), a class index, or a callable `target(output, batch)`."
        )
    if isinstance(target, int):
        classes = torch.full((len(images),), target, dtype=torch.long)
        rule = f"best box of class {class_name(target, class_names)}"
    else:
        classes = torch.tensor([-1 if top is None else top[0] for top in top_boxes(output)], dtype=torch.long)
        rule = "highest-scoring box"
    wanted = classes.tolist()

    def best_box(out: Any, inputs: Tensor, rows: Tensor) -> Tensor:
        found = detections_of(out)
        if found is None or len(found) != len(inputs):
            raise TypeError(f"the detector gave {type(out).__name__} for {len(inputs)} images, not one dict each")
        values = []
        for i, (item, row) in enumerate(zip(found, rows.tolist())):
            scores, labels = item["scores"], item.get("labels")
            if isinstance(labels, Tensor) and wanted[row] >= 0:
                scores = scores[labels == wanted[row]]
            elif wanted[row] < 0:
                scores = scores[:0]
            # no box: zero, and no gradient, through the detector's scores and the input alike
            values.append(scores.max() if scores.numel() else (item["scores"].sum() + inputs[i].sum()) * 0)
        return torch.stack(values)

    return Target(rule, best_box, best_box, classes.to(images.device))


def _describe_kind(kind: str, labels: Any) -> str:
    shape = tuple(labels.shape)
    return {"class": f"integer class labels {shape}", "multilabel": f"multi-hot labels {shape}",
            "value": f"floating values {shape}", "mask": f"integer masks {shape}"}[kind]  # fmt: skip


@dataclass(frozen=True)
class Target:
    """What the maps explain: ``score(output, inputs, rows)``, one value per input (``rows``: each input's image,
    so a noisy or occluded copy is scored for its image), the ``rule`` that names it in captions, and what
    occlusion measures the drop of (``change``, the score itself unless a probability is more telling). A
    class target (and a segmentation's) also keeps the class of each image in ``classes``; a classification's the
    maps take directly.
    """

    rule: str
    score: Score
    change: Score
    classes: Tensor | None = None

    def __call__(self, output: Any, inputs: Tensor, rows: Tensor) -> Tensor:
        return self.score(output, inputs, rows)


def class_score(classes: Tensor, probability: Callable[[Tensor], Tensor] | None = None) -> Score:
    """The score of each input's image's class: its logit, or its ``probability`` (softmax, sigmoid) of the
    logits.

    Example:
        >>> class_score(torch.tensor([1, 0]))(torch.tensor([[0.0, 2.0], [3.0, 1.0]]), None, torch.arange(2))
        tensor([2., 3.])
    """

    def score(output: Any, inputs: Tensor, rows: Tensor) -> Tensor:
        logits = logits_of(output)
        return (logits if probability is None else probability(logits)).gather(1, classes[rows, None])[:, 0]

    return score


def check_scores(value: Any, count: int, what: str = "a target score") -> Tensor:
    """``value`` when it is one score per input, shape (``count``,); else TypeError naming ``what``."""
    if not isinstance(value, Tensor) or value.shape != (count,):
        raise TypeError(f"{what} must be one value per input, shape ({count},), got {value!r:.100}")
    return value


def _class_target(rule: str, classes: Tensor, probability: Callable[[Tensor], Tensor]) -> Target:
    return Target(rule, class_score(classes), class_score(classes, probability), classes)


def _plain(rule: str, score: Score) -> Target:
    return Target(rule, score, score)


def _needs(task: str, output: Tensor, dims: Sequence[int], what: str, override: str) -> None:
    if output.dim() not in dims:
        raise DoesNotApply(
            f"task={task!r} explains {what}, and the model's output is {tuple(output.shape)}: pass {override}."
        )


def choose_target(
    task: str,
    target: TargetSpec,
    output: Any,
    images: Tensor,
    labels: Tensor | None,
    class_names: Sequence[str] | None = None,
) -> Target:
    """The :class:`Target` of ``task`` (a decided one, not ``"auto"``) for images whose clean ``output`` is
    known. ``target``: ``"auto"`` picks per task (the true class; the predicted class without labels; the top
    true class of multi-hot labels; the output of a regression; the predicted class summed over the pixels
    predicted as it (pytorch-grad-cam's ``SemanticSegmentationTarget``); the reconstruction error; the embedding's
    L2 norm; the highest-scoring box of a detector); ``"true"``/``"predicted"`` choose for class tasks; an int is
    a class (an output, for regression);
    a callable ``target(output, (inputs, labels)) -> (N,)`` is used as given. :class:`DoesNotApply` when the
    output or labels do not allow it.

    Example:
        >>> logits = torch.tensor([[0.0, 2.0], [3.0, 1.0]])
        >>> chosen = choose_target("classification", "auto", logits, torch.zeros(2, 1, 4, 4), None)
        >>> chosen.rule, chosen.classes.tolist()
        ('predicted class', [1, 0])
    """
    count, device = len(images), images.device
    kind = label_kind(labels, count)
    if callable(target) and not isinstance(target, int):
        user = target

        def custom(output: Any, inputs: Tensor, rows: Tensor) -> Tensor:
            value = user(output, (inputs, None if labels is None else labels.to(inputs.device)[rows]))
            return check_scores(value, len(inputs), "what `target` returns")

        return _plain(f"{getattr(user, '__name__', 'custom')} target", custom)
    if task == "detection":
        return _detection_target(target, output, images, class_names)
    main = logits_of(output).detach()
    if task in ("classification", "multilabel"):
        over = "task='regression' or 'embedding'"
        _needs(task, main, (2,), "class scores (N, classes)", over)
        if isinstance(target, int):
            classes = torch.full((count,), target, dtype=torch.long, device=device)
            rule = f"class {class_name(target, class_names)}"
        elif task == "classification" and target in ("auto", "true") and kind == "class":
            classes, rule = labels.to(device).long(), "true class"  # type: ignore[union-attr]
        elif task == "multilabel" and target in ("auto", "true") and kind == "multilabel":
            positive = labels.to(device) > 0.5  # type: ignore[union-attr]
            masked = main.to(device).masked_fill(~positive, float("-inf"))
            none = ~positive.any(dim=1)
            classes = torch.where(none, main.to(device).argmax(dim=1), masked.argmax(dim=1))
            rule = "top true class" if not bool(none.any()) else "top true class (top predicted without one)"
        elif target == "true":
            found = _describe_kind(kind, labels) if kind else "no labels"
            wanted = "integer class labels (N,)" if task == "classification" else "multi-hot labels (N, C)"
            raise DoesNotApply(
                f"target='true' needs {wanted}, and the batches hold {found}: pass target='auto' or 'predicted', a "
                "class index, or `batch_to_labels=`."
            )
        else:
            classes = main.argmax(dim=1).to(device)
            rule = "predicted class" if task == "classification" else "top predicted class"
        probability = (lambda x: x.softmax(dim=1)) if task == "classification" else torch.sigmoid
        return _class_target(rule, classes, probability)
    if target in ("true", "predicted"):
        raise DoesNotApply(
            f"target={target!r} chooses between classes, and the task is {task}: pass target='auto', an index, or "
            "a callable `target(output, batch)`."
        )
    if task == "regression":
        if isinstance(target, int):
            column = target
            return _plain(f"output {column}", lambda out, x, rows: logits_of(out).flatten(1)[:, column])
        several = main.flatten(1).shape[1] > 1
        return _plain("sum of the outputs" if several else "output",
                      lambda out, x, rows: logits_of(out).flatten(1).sum(dim=1))  # fmt: skip
    if task == "segmentation":
        _needs(task, main, (4,), "per-pixel class scores (N, C, H, W)", "task='reconstruction' or a callable target")
        predicted = main.argmax(dim=1).to(device)  # (N, h, w)
        if isinstance(target, int):
            classes = torch.full((count,), target, dtype=torch.long, device=device)
            rule = f"class {class_name(target, class_names)} over its predicted pixels"
        else:
            classes, rule = main_class(predicted, main.shape[1]), "predicted class over its pixels"
        pixels = (predicted == classes[:, None, None]).to(main.dtype)

        def region(out: Any, x: Tensor, rows: Tensor) -> Tensor:
            scores = logits_of(out)
            chosen = scores.gather(1, classes[rows, None, None, None].expand(-1, 1, *scores.shape[2:]))[:, 0]
            return (chosen * pixels[rows]).sum(dim=(1, 2))

        return Target(rule, region, region, classes)
    if task == "reconstruction":
        if main.shape[1:] != images.shape[1:]:
            raise DoesNotApply(
                f"task='reconstruction' explains the error of an output shaped like the input {tuple(images.shape)}, "
                f"and the model's output is {tuple(main.shape)}: pass task='auto' or a callable target."
            )
        return _plain("reconstruction error",
                      lambda out, x, rows: (logits_of(out) - x).pow(2).flatten(1).mean(dim=1))  # fmt: skip
    if task == "embedding":
        return _plain("embedding norm", lambda out, x, rows: logits_of(out).flatten(1).norm(dim=1))
    raise ValueError(f"unknown task {task!r}; the tasks are {', '.join(map(repr, TASKS))} and 'auto'")


def main_class(predicted: Tensor, classes: int) -> Tensor:
    """Per image, the class predicted on most pixels other than class 0 (the background, in torchvision's and
    most datasets' convention), or 0 when nothing else is predicted."""
    counts = torch.zeros(len(predicted), classes, device=predicted.device)
    counts.scatter_add_(1, predicted.flatten(1), torch.ones_like(predicted.flatten(1), dtype=counts.dtype))
    foreground = counts[:, 1:]
    if foreground.shape[1] == 0:
        return torch.zeros(len(predicted), dtype=torch.long, device=predicted.device)
    best = foreground.argmax(dim=1) + 1
    return torch.where(foreground.amax(dim=1) > 0, best, torch.zeros_like(best))


def describe_labels(labels: Tensor | None, class_names: Sequence[str] | None = None) -> list[str]:
    """What each image's label says, for captions: its class, its positive classes, its value; empty strings for
    no labels or masks.

    Example:
        >>> describe_labels(torch.tensor([[1.0, 0.0, 1.0]]), ["cat", "dog", "car"])
        ['cat,car']
    """
    if labels is None:
        return []
    kind = label_kind(labels, len(labels))
    values = labels.detach().cpu()
    if kind == "class":
        return [class_name(int(v), class_names) for v in values.tolist()]
    if kind == "multilabel":
        return positive_names(values > 0.5, class_names)
    if kind == "value":
        return shown_values(values)
    return ["" for _ in range(len(values))]


def positive_names(positive: Tensor, class_names: Sequence[str] | None = None) -> list[str]:
    """Per row of a boolean (N, C), its positive classes by name, ``"none"`` for none: ``['cat,car', 'none']``."""
    rows = positive.detach().cpu()
    return [",".join(class_name(int(c), class_names) for c in row.nonzero().flatten().tolist()) or "none"
            for row in rows]  # fmt: skip


def shown_values(values: Tensor) -> list[str]:
    """Per image, its first three values to three digits: ``['0.83', '1.2, -0.5']``."""
    rows = values.detach().cpu().reshape(len(values), -1)
    return [", ".join(f"{v:.3g}" for v in row.tolist()[:3]) for row in rows]
