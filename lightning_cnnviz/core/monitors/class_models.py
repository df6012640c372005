"""ClassModelMonitor's logic, Trainer-free: Simonyan et al.'s class models, one image per class, batched over the
classes, and their evolution over calls."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import Tensor, nn

from lightning_cnnviz.core.checks import check_choice, check_number, check_positive_int
from lightning_cnnviz.core.context import Context, InputScale
from lightning_cnnviz.core.drawing.basic import captioned_grid, to_rgb
from lightning_cnnviz.core.drawing.history import EvolutionHistory
from lightning_cnnviz.core.drawing.render import display_rgb, render_evolution
from lightning_cnnviz.core.inputs.probe import Probe
from lightning_cnnviz.core.inputs.task import decide_task
from lightning_cnnviz.core.methods.feature_vis import color_correlation, render_objective, render_pixels
from lightning_cnnviz.core.methods.objectives import Objective, class_logit, class_probability
from lightning_cnnviz.core.model.layers import LayerMap
from lightning_cnnviz.core.model.modules import class_name, evaluating, logits_of, model_device
from lightning_cnnviz.core.protocol import DoesNotApply, Snapshot

__all__ = ["ClassModels"]

#: Simonyan et al.'s lambda, per squared pixel deviation from mid-grey (our render) or per squared input (plain).
L2 = 1e-3


class ClassModels:
    """Class models (Simonyan, Vedaldi and Zisserman 2013, "Deep inside convolutional networks"): for each class,
    the image that maximises its score ``S_c(I) - lambda ||I||^2``, what the network thinks the class looks like;
    one image per class, all classes in one batch. ``cnnviz/class_models`` (captioned by class name) and
    ``cnnviz/class_models_evolution`` (classes x calls, kept in :meth:`state_dict`).

    By default the image is rendered as FeatureVisMonitor renders (decorrelated Fourier parameterisation in the
    probe images' colours, squashed to [0, 1], random jitter, scale and rotation at each step), and the L2 term is
    ``l2 * ||image - 0.5||^2``; ``plain=True`` is the paper's own variant: unbounded inputs in the model's input
    space from zero (the mean image), no parameterisation, no transformation, ``l2 * ||input||^2``, drawn stretched.

    Args:
        classes: class indices (default: the first 10 of the model's outputs).
        objective: ``"logit"`` (the paper's: the class score before the softmax) or ``"probability"`` (the softmax
            probability, which the essay finds gives worse images), or any
            :class:`~lightning_cnnviz.core.methods.objectives.Objective` scoring ``len(classes)`` images.
        l2: the paper's lambda (default :data:`L2`, 1e-3).
        plain: the paper's plain-pixel variant.
        steps, lr, seed: the optimisation (Adam); each class's image starts from ``seed`` and its class.
        size: side of the images (default: the probe images').
        class_names: names for the captions.
        mean, std, normalize: how the model's inputs are normalised (else the context's).

    Example:
        >>> from lightning_cnnviz.core import Context, Moment
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 3))
        >>> models = ClassModels(steps=4)
        >>> shot = models.snapshot(net, Probe(torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 0])),
        ...                        Context(Moment(epoch=0, step=0)))
        >>> sorted(shot.images), tuple(models.last_images.shape)
        (['cnnviz/class_models', 'cnnviz/class_models_evolution'], (3, 3, 8, 8))
    """

    what = "the class models"  # what a log of it draws, in words (said when it takes long)

    def __init__(
        self,
        *,
        classes: Sequence[int] | None = None,
        objective: str | Objective = "logit",
        l2: float = L2,
        plain: bool = False,
        steps: int = 64,
        lr: float = 0.15,
        seed: int = 0,
        size: int | None = None,
        class_names: Sequence[str] | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        normalize: Callable[[Tensor], Tensor] | None = None,
        max_evolution_columns: int = 24,
        who: str | None = None,
    ) -> None:
        self.who = who = who or type(self).__name__  # the name its messages start with
        if classes is not None:
            classes = [int(c) for c in classes]
            if not classes or min(classes) < 0:
                raise ValueError(f"{who}: `classes` are class indices >= 0 (or None for the first 10), got {classes}.")
        self.classes = classes
        if not isinstance(objective, Objective):
            check_choice(who, "objective", objective, ("logit", "probability"))
        self.objective = objective
        self.l2 = check_number(who, "l2", l2, lambda v: v >= 0, "a number >= 0")
        self.plain = bool(plain)
        self.steps = check_positive_int(who, "steps", steps)
        self.lr = check_number(who, "lr", lr, lambda v: v > 0, "a positive number")
        self.seed, self.size = int(seed), None if size is None else check_positive_int(who, "size", size)
        self.class_names = list(class_names) if class_names is not None else None
        self.scale = InputScale(mean, std, normalize)
        self.history = EvolutionHistory(check_positive_int(who, "max_evolution_columns", max_evolution_columns), 48)
        self.last_images: Tensor | None = None  # the latest renders (classes, C, H, W), on the host
        self.chosen: list[int] = []

    def attach(self, model: nn.Module, example: Tensor | None = None) -> None:
        """Given an example batch, check that the model gives class scores (:class:`DoesNotApply` otherwise, and
        for a network without ``nn.Conv2d``: the renders are 2-D images)."""
        LayerMap.of(model).need_images()
        if example is not None:
            self.choose(model, example, None, known=False)

    def choose(self, model: nn.Module, images: Tensor, labels: Tensor | None, known: bool = True) -> list[int]:
        """The classes drawn: ``classes``, else the first 10 of the output's; :class:`DoesNotApply` unless the task
        is classification or multi-label (decided from the labels, else the output). Before the labels are
        ``known`` (an example batch without them), an output of one vector per image may still be class scores."""
        with evaluating(model):
            output = model(images[:2])
        task, why = decide_task("auto", None if labels is None else labels[:2], output, images[:2])
        if task not in ("classification", "multilabel") and (known or task != "embedding"):
            raise DoesNotApply(f"it needs class scores, and the task is {task} ({why}).")
        count = logits_of(output).shape[1]
        chosen = self.classes if self.classes is not None else list(range(min(10, count)))
        if max(chosen) >= count:
            raise ValueError(f"{self.who} `classes`: class {max(chosen)} is out of range: the model gives {count} "
                             f"class scores, so 0..{count - 1} are allowed.")  # fmt: skip
        self.chosen = list(chosen)
        return self.chosen

    def wanted(self, classes: Sequence[int]) -> Objective:
        """The objective of one image per class."""
        if isinstance(self.objective, Objective):
            return self.objective
        return (class_logit if self.objective == "logit" else class_probability)(list(classes))

    def render(self, model: nn.Module, classes: Sequence[int], probe: Tensor, scale: InputScale) -> Tensor:
        """One image per class (len(classes), C, H, W): pixels in [0, 1], or the plain variant's inputs."""
        side = self.size
        shape = (probe.shape[1], side or probe.shape[-2], side or probe.shape[-1])
        device = model_device(model)
        if self.plain:
            return render_pixels(model, self.wanted(classes), (len(classes), *shape), steps=self.steps, lr=self.lr,
                                 l2=self.l2, device=device)  # fmt: skip
        colors = color_correlation(scale.to_pixels(probe[:256].float()))
        seeds = [self.seed * 1_000_003 + c for c in classes]
        return render_objective(
            model, self.wanted(classes), len(classes), size=shape[1:], in_channels=shape[0], steps=self.steps,
            lr=self.lr, seeds=seeds, colors=colors, normalize=scale.to_model, l2=self.l2, device=device,
        )  # fmt: skip

    def snapshot(self, model: nn.Module, probe: Probe | None, context: Context) -> Snapshot:
        """Every chosen class's model and the evolution (rendered and drawn on rank zero)."""
        guard, moment, shot = context.guard, context.moment, Snapshot()
        if probe is None or not context.ranks.is_zero or probe.images.dim() != 4:
            return shot
        images = probe.images.to(model_device(model))
        classes = guard.run("the class-model picture", self.choose, model, images, probe.labels)
        if not classes:
            return shot
        scale = self.scale.over(context.scale)
        rendered = guard.run("the class-model picture", self.render, model, classes, images, scale)
        if rendered is None or not guard.finite(rendered, what="the class models", moment=moment):
            return shot
        self.last_images = rendered.cpu()
        shown = display_rgb(rendered.float()) if self.plain else to_rgb(rendered.float().clamp(0, 1))
        names = [class_name(c, self.class_names) for c in classes]
        self.history.add("classes", self.history.caption(moment.epoch, moment.step), shown, moment.step)
        thumbnails, captions = self.history.stacked("classes")
        what = "plain inputs, stretched" if self.plain else "rendered"
        shot.images["cnnviz/class_models"] = captioned_grid(shown, names)
        shot.captions["cnnviz/class_models"] = f"class models ({self.describe()}, {what}): {', '.join(names)}"
        shot.images["cnnviz/class_models_evolution"] = render_evolution(thumbnails, captions, classes,
                                                                        row_labels=names)  # fmt: skip
        shot.captions["cnnviz/class_models_evolution"] = f"class models over training (rows: classes {classes})"
        return shot

    def describe(self) -> str:
        objective = str(self.objective) if isinstance(self.objective, Objective) else f"class {self.objective}"
        return f"{objective} - {self.l2:g} L2"

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history.load_state_dict(state.get("history", {}))

