"""SaliencyMonitor's logic, Trainer-free: the maps of a probe set by each method, captioned, as pictures."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from lightning_cnnviz.core.checks import check_callable, check_choice, check_positive_int
from lightning_cnnviz.core.context import Context
from lightning_cnnviz.core.drawing.basic import annotate
from lightning_cnnviz.core.drawing.render import render_saliency
from lightning_cnnviz.core.inputs.probe import Probe
from lightning_cnnviz.core.inputs.task import (
    TASKS,
    Target,
    TargetSpec,
    Task,
    choose_target,
    decide_task,
    describe_labels,
    label_kind,
    positive_names,
    shown_values,
    top_boxes,
)
from lightning_cnnviz.core.methods import saliency as S
from lightning_cnnviz.core.methods.activation_sites import find_activation_sites
from lightning_cnnviz.core.methods.perturbation.occlusion import OcclusionMemo
from lightning_cnnviz.core.methods.saliency_methods import METHODS, SaliencySettings
from lightning_cnnviz.core.model.layers import LayerMap
from lightning_cnnviz.core.model.modules import class_name, evaluating, hooked, logits_of, model_device, resolve_modules
from lightning_cnnviz.core.protocol import Guard, Snapshot

__all__ = ["Explanation", "SaliencyPanel"]

DEFAULT_METHODS = ("vanilla_gradient", "smoothgrad", "guided_backprop", "grad_cam", "occlusion")


@dataclass(frozen=True)
class Explanation:
    """What the maps of a probe explain: the decided ``task``, the :class:`~lightning_cnnviz.core.inputs.task.Target`,
    one caption per image, and the predicted masks of a segmentation (else None)."""

    task: str
    target: Target
    captions: list[str]
    masks: Tensor | None = None
    cam_layer: str | None = None  # Grad-CAM's layer when not the last conv (segmentation: see ``explain``)


class SaliencyPanel:
    """Saliency maps of probe images, one picture per method: rows of [image | map | overlay] ([image | predicted
    mask | map | overlay] for segmentation), captioned with what the batch holds and what was predicted, and with
    the target the maps explain; normalised per image.

    Methods (:mod:`lightning_cnnviz.core.methods.saliency`): ``vanilla_gradient`` (Simonyan et al. 2013), ``smoothgrad``
    (Smilkov et al. 2017), ``guided_backprop`` (Springenberg et al. 2014), ``deconvnet`` and ``occlusion`` (Zeiler
    & Fergus 2013), ``grad_cam`` (Selvaraju et al. 2017). Every method explains the same target, one score per
    image (:func:`~lightning_cnnviz.core.inputs.task.choose_target`); occlusion measures its drop (for class targets the
    drop of the class probability). SmoothGrad noise comes from a private generator seeded with ``seed``: the same
    at every call, the global RNG untouched.

    Args:
        methods: any of ``vanilla_gradient``, ``smoothgrad``, ``guided_backprop``, ``deconvnet``, ``grad_cam``,
            ``occlusion``.
        target: ``"auto"`` (per task: the true class, the predicted class without labels, the top true class of
            multi-hot labels, the output of a regression, the predicted class over its pixels, the reconstruction
            error, the embedding's norm, the highest-scoring box of a detector), ``"true"`` or ``"predicted"``
            (class tasks), a class index (an output index for regression; the best box of that class for a
            detector), or a callable ``target(output, (images, labels)) -> (N,)``.
        task: ``"auto"`` (from the labels, else the output: :func:`~lightning_cnnviz.core.inputs.task.decide_task`),
            ``"classification"``, ``"multilabel"``, ``"regression"``, ``"segmentation"``, ``"reconstruction"``,
            ``"embedding"`` or ``"detection"`` (a model giving one dict of ``boxes``, ``labels`` and ``scores`` per
            image, as torchvision's detectors do in eval mode: the full detector is run, its own transform
            included; an image without a box is captioned so and has an empty map).
        smoothgrad_samples: noisy copies per image; ``smoothgrad_sigma``: noise level, a fraction of each
            image's value range.
        occlusion_patch: side of the occluding square (default: a quarter of the image side);
            ``occlusion_stride`` its step (default: a quarter of the patch).
        grad_cam_layer: conv layer for Grad-CAM (default: the last ``nn.Conv2d``; for segmentation the last one
            whose output is a feature map, not the class scores nor a 1x1 attention branch).
        class_names: names for the captions (default: class indices).
        seed: seed of the SmoothGrad noise.
        output_to_logits: function from the model's output to the tensor the task reads (default: the output,
            or its first tensor when it is a tuple, list, dict or dataclass; a ``logits`` entry first).

    Example:
        >>> from lightning_cnnviz.core import Context, Moment
        >>> net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        ...                     nn.Linear(4, 3))
        >>> panel = SaliencyPanel(methods=("vanilla_gradient", "grad_cam"), task="classification")
        >>> shot = panel.snapshot(net, Probe(torch.randn(2, 1, 8, 8)), Context(Moment(epoch=0, step=0)))
        >>> {tag: tuple(picture.shape) for tag, picture in shot.images.items()}
        {'cnnviz/saliency/vanilla_gradient': (3, 132, 196), 'cnnviz/saliency/grad_cam': (3, 132, 196)}
    """

    DEFAULT_METHODS: ClassVar[tuple[str, ...]] = DEFAULT_METHODS  # what ``methods`` draws by default

    what = "the saliency maps"  # what a log of it draws, in words (said when it takes long)

    def __init__(
        self,
        *,
        methods: Sequence[str] = DEFAULT_METHODS,
        target: TargetSpec = "auto",
        smoothgrad_samples: int = 25,
        smoothgrad_sigma: float = 0.15,
        occlusion_patch: int | None = None,
        occlusion_stride: int | None = None,
        grad_cam_layer: str | None = None,
        class_names: Sequence[str] | None = None,
        seed: int = 0,
        output_to_logits: Callable[[Any], Tensor] | None = None,
        task: Task = "auto",
        who: str | None = None,
    ) -> None:
        self.who = who = who or type(self).__name__  # the name its messages start with
        if isinstance(methods, str):
            methods = (methods,)
        unknown = [m for m in methods if m not in METHODS]
        if unknown or not methods:
            raise ValueError(
                f"{who}: unknown method {unknown[0] if unknown else None!r} in `methods`; the methods are "
                f"{', '.join(map(repr, METHODS))}."
            )
        check_callable(who, "output_to_logits", output_to_logits)
        named = isinstance(target, str) and target in ("auto", "true", "predicted")
        if not (named or callable(target) or (isinstance(target, int) and not isinstance(target, bool))):
            raise ValueError(
                f"{who}: `target` can be 'auto', 'true', 'predicted', a class index or a callable "
                f"target(output, batch) -> (N,), got {target!r}."
            )
        self.methods = tuple(methods)
        self.target = target
        self.task = check_choice(who, "task", task, ("auto", *TASKS))
        self.settings = SaliencySettings(
            smoothgrad_samples=check_positive_int(who, "smoothgrad_samples", smoothgrad_samples),
            smoothgrad_sigma=float(smoothgrad_sigma), seed=seed, occlusion_patch=occlusion_patch,
            occlusion_stride=occlusion_stride, grad_cam_layer=grad_cam_layer,
        )  # fmt: skip
        self.class_names = list(class_names) if class_names is not None else None
        self.output_to_logits = output_to_logits
        self._kinds: list[str] | None = None

    def attach(self, model: nn.Module, example: Tensor | None = None) -> None:
        """ValueError, at once, for a ``grad_cam_layer`` that is not a ``nn.Conv2d`` of ``model``; DoesNotApply for
        a model without one (it explains 2-D images)."""
        LayerMap.of(model).need_images()
        if self.settings.grad_cam_layer is not None:
            layer, what = self.settings.grad_cam_layer, f"{self.who} `grad_cam_layer`"
            resolve_modules(model, [layer], what=what, kinds=(nn.Conv2d,))

    def scored(self, model: nn.Module) -> Any:
        """The model as the maps see it: called through ``output_to_logits`` when one is given (without, the
        core takes the logits out of the output with ``logits_of``)."""
        return _OutputToLogits(model, self.output_to_logits) if self.output_to_logits else model

    def explain(
        self, model: nn.Module, images: Tensor, labels: Tensor | None, guard: Guard | None = None
    ) -> Explanation:
        """The task, target and captions of ``images`` (one eval forward); ``guard`` is told the task chosen.
        :class:`~lightning_cnnviz.core.protocol.DoesNotApply` when the task's target cannot be had."""
        outputs: dict[str, Tensor] = {}  # each conv's (first) output, in the order the forward made them

        def keep(name: str) -> Callable[..., None]:  # a hook returns None: a shared conv's later calls stay its own
            return lambda module, args, out: None if name in outputs else outputs.update({name: out})

        convs = [(module, keep(name)) for name, module in LayerMap.of(model).conv2d.items()]
        follow = "grad_cam" in self.methods and self.settings.grad_cam_layer is None  # the graph tells Grad-CAM's layer
        inputs = images.detach().requires_grad_(follow)
        with evaluating(model, grad=follow), hooked(convs):
            output = self.scored(model)(inputs)
            task, why = decide_task(self.task, labels, output, images)
            target = choose_target(task, self.target, output, images, labels, self.class_names)
            cam_layer = self._cam_layer(model, task, target, output, inputs, outputs)
        if guard is not None:
            guard.inform(
                f"task {task!r} ({why}), so the maps explain: {target.rule}. Pass `task=` or `target=` to choose "
                "otherwise."
            )
        masks = logits_of(output).detach().argmax(dim=1) if task == "segmentation" else None
        captions = self.describe(task, target, output, images, labels)
        return Explanation(task, target, captions, masks, cam_layer)

    def _cam_layer(
        self, model: nn.Module, task: str, target: Target, output: Any, inputs: Tensor, outputs: dict[str, Tensor]
    ) -> str | None:
        """Grad-CAM's layer when not the default (the last ``nn.Conv2d``): the last conv the target depends on
        when the last one is not (an auxiliary head's), and for segmentation the last one of features (not the
        class scores, nor a 1x1 attention branch). Read off the autograd graph of the target (no backward), only
        when Grad-CAM is drawn at its default layer."""
        if self.settings.grad_cam_layer is not None or "grad_cam" not in self.methods or not outputs:
            return None
        rows = torch.arange(len(inputs), device=inputs.device)
        reached = _graph_nodes(target(output, inputs, rows).grad_fn)
        used = [name for name, value in outputs.items() if value.grad_fn is not None and value.grad_fn in reached]
        main = logits_of(output) if task == "segmentation" else None
        if main is not None and main.dim() == 4:
            used = [n for n in used if outputs[n].shape[1] != main.shape[1] and math.prod(outputs[n].shape[2:]) > 1]
        registered = list(LayerMap.of(model).conv2d)
        if not used or (task != "segmentation" and registered[-1] in used):
            return None
        return max(used, key=registered.index)

    def describe(self, task: str, target: Target, output: Any, images: Tensor, labels: Tensor | None) -> list[str]:
        """One caption per image: what its label holds (a class, the positive classes, a value) and what the
        network made of it (``true 3 / pred 5``, ``true 0.71 / pred 0.66``, ``class 1: 12% of pixels``, ``box 2
        0.83 of 12``, ...)."""
        if task == "detection":
            return [
                "no box" if top is None else f"box {class_name(top[0], self.class_names)} {top[1]:.2f} of {top[2]}"
                for top in top_boxes(output)
            ]
        main = logits_of(output).detach()
        truth = describe_labels(labels, self.class_names) or [""] * len(images)
        if task == "classification" and main.dim() == 2:
            said = [class_name(int(p), self.class_names) for p in main.argmax(dim=1).tolist()]
        elif task == "multilabel":
            said = positive_names(main > 0, self.class_names)
        elif task == "regression":
            said = shown_values(main)
        elif task == "segmentation" and target.classes is not None and self.target == "auto":
            return self._regions(main, target.classes, labels)
        else:
            values = target.score(output, images, torch.arange(len(images), device=images.device)).detach()
            said = [f"{target.rule} {v:.3g}" for v in values.cpu().tolist()]
            return [f"{t} / {s}" if t else s for t, s in zip(truth, said)]
        return [f"true {t} / pred {s}" if t else f"pred {s}" for t, s in zip(truth, said)]

    def _regions(self, main: Tensor, classes: Tensor, labels: Tensor | None) -> list[str]:
        predicted = main.argmax(dim=1).to(classes.device)
        share = (predicted == classes[:, None, None]).flatten(1).float().mean(dim=1).cpu().tolist()
        true = None
        if label_kind(labels, len(main)) == "mask" and labels is not None and labels.shape[1:] == predicted.shape[1:]:
            chosen = labels.to(predicted.device) == classes[:, None, None]
            true = chosen.flatten(1).float().mean(dim=1).cpu().tolist()
        return [f"class {class_name(int(c), self.class_names)}: {p:.0%} of pixels" + (f", true {true[i]:.0%}"
                if true is not None else "") for i, (c, p) in enumerate(zip(classes.tolist(), share))]  # fmt: skip

    def maps(
        self,
        model: nn.Module,
        images: Tensor,
        labels: Tensor | None,
        method: str,
        explained: Explanation | None = None,
        memo: OcclusionMemo | None = None,
    ) -> Tensor:
        """The ``method``'s (N, C, H, W) maps of ``images`` (on the images' device; C = 1 for a heat map) for the
        target of each image (``explained`` when the caller has it, else :meth:`explain`); occlusion of a class
        target takes its forwards from ``memo`` when given (shared with the occlusion figure of the same step)."""
        explained = explained or self.explain(model, images, labels)
        chosen, drawn = explained.target, METHODS[method]
        by_class = chosen.classes is not None and explained.task == "classification"
        target: S.Target = chosen.classes if by_class else (chosen.change if drawn.change else chosen)
        settings = replace(self.settings, memo=memo) if memo is not None and self.output_to_logits is None else None
        return drawn.maps(self.scored(model), images, target, settings or self.settings, explained.cam_layer)

    def other_kinds(self, model: nn.Module, images: Tensor) -> list[str]:
        """Activation kinds of the model other than ``relu``, through which guided rules pass the true gradient."""
        if self._kinds is None:
            sites = find_activation_sites(model, images[:1])
            self._kinds = sorted({site.function for site in sites} - {"relu"})
        return self._kinds

    def picture(
        self, model: nn.Module, images: Tensor, maps: Tensor, method: str, explained: Explanation | list[str]
    ) -> Tensor:
        """The (3, H, W) picture of one method's maps: rows of [image | map | overlay] (with the predicted mask
        of a segmentation), captioned, the target's rule on the first row."""
        if isinstance(explained, list):
            captions, masks = list(explained), None
        else:
            captions, masks = list(explained.captions), explained.masks
            if captions:
                captions[0] += f" | target: {explained.target.rule}"
        grid = render_saliency(images.to(maps.device), maps, signed=METHODS[method].signed, masks=masks)
        if captions and method in ("guided_backprop", "deconvnet") and self.other_kinds(model, images):
            captions[0] += f" | rule on ReLU only; true gradient through {', '.join(self.other_kinds(model, images))}"
        if captions:
            rows = grid.shape[-2] // len(captions)
            grid = annotate(grid, [(1, row * rows, caption) for row, caption in enumerate(captions)])
        return grid

    def snapshot(self, model: nn.Module, probe: Probe | None, context: Context) -> Snapshot:
        """Every method's picture of the probe (``cnnviz/saliency/<method>``), computed on rank zero only; a method
        that fails (under ``guard``'s policy) or whose maps are not finite is left out; nothing is drawn when the
        task's target does not apply (said once)."""
        guard, moment, shot = context.guard, context.moment, Snapshot()
        if probe is None or not context.ranks.is_zero:
            return shot
        device = model_device(model)
        moved = probe.to(device)
        images, labels = moved.images, moved.labels
        explained = guard.run("saliency", self.explain, model, images, labels, guard)
        if explained is None:
            return shot
        for method in self.methods:

            def draw(method: str = method, explained: Explanation = explained) -> None:
                memo = context.shared.occlusions.at(moment.step)
                maps = self.maps(model, images, labels, method, explained, memo)
                if guard.finite(maps, what=f"the {method} maps", moment=moment):
                    shot.images[f"cnnviz/saliency/{method}"] = self.picture(model, images, maps, method, explained)
                    shot.captions[f"cnnviz/saliency/{method}"] = f"{method} of {len(images)} probe images"

            guard.run(f"saliency {method}", draw)
        return shot

    def state_dict(self) -> dict[str, Any]:
        """Nothing to resume: every picture is drawn from the model as it is."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Nothing to restore."""


def _graph_nodes(root: Any) -> set[Any]:
    """Every autograd node from which ``root`` (a ``grad_fn``) is computed: what a backward from it reaches."""
    reached: set[Any] = set()
    waiting = [root]
    while waiting:
        node = waiting.pop()
        if node is not None and node not in reached:
            reached.add(node)
            waiting.extend(parent for parent, _ in node.next_functions)
    return reached


class _OutputToLogits:
    """The model, called through ``output_to_logits``; every other attribute is the model's own."""

    def __init__(self, model: nn.Module, output_to_logits: Callable[[Any], Tensor]) -> None:
        self._model, self._output_to_logits = model, output_to_logits

    def __call__(self, *args: Any, **kwargs: Any) -> Tensor:
        return self._output_to_logits(self._model(*args, **kwargs))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)
