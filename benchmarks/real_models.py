"""Every visualization pass on the torchvision models users train, against captum at its default and at its best
setting, in one process.

    python benchmarks/real_models.py --quick            # resnet18 at 64 px (under 5 minutes on 2 CPU cores)
    python benchmarks/real_models.py                    # CPU: resnet18, vgg11_bn, efficientnet_b0, convnext_tiny
                                                        # at 64 and 128 px, resnet18 also at 224 px
    python benchmarks/real_models.py --device cuda      # the four at 224 px (--quick: resnet18 only)

Random weights, float32, 4 images, each image's predicted class as the target. Passes: vanilla gradient, SmoothGrad
(16 samples), guided backprop, Grad-CAM (last conv), occlusion (patch 16, stride 8) against captum's ``Saliency``,
``NoiseTunnel``, ``GuidedBackprop``, ``LayerGradCam`` and ``Occlusion``; the top-patch projections of 64 neurons of
resnet18's ``layer3`` against captum's ``NeuronDeconvolution`` one neuron at a time; and ours alone (no captum
counterpart): the top-patch scan of the default probe (1024 images), feature visualization (16 channels, 256
steps, the last conv), the embedding codes of the default probe (2000 images) and their t-SNE, and one training
step with the activation statistics against one without.

The passes without a captum counterpart run at each model's first size (``--alone all``: every size). Captum's best
setting is searched over ``perturbations_per_eval`` (occlusion) and ``nt_samples_batch_size`` (SmoothGrad) in
{1, 4, 16, 64} on the first model and size, then reused; occlusion and SmoothGrad are timed against captum's best
and its default in the same rounds (one row when they are the same setting). Every case runs once untimed (warm;
at 128 px and more, occlusion on one image with windows side by side), then ``--repeats`` rounds (more for a case
under a second), ours and the references interleaved; each row gives the medians, the ratio (reference / ours: above
1 means we are faster) and its spread (min-max over the rounds). Rows print as they finish, then the table.
``--cases vgg11_bn:64,...`` runs only those.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torchvision
from captum.attr import GuidedBackprop, LayerGradCam, NeuronDeconvolution, NoiseTunnel, Occlusion, Saliency
from torch import Tensor, nn

from lightning_cnnviz.core import (
    ActivationHealth,
    EmbeddingMap,
    LayerMap,
    project_activations,
    receptive_fields,
    top_activations,
    tsne,
    visualize_features,
)
from lightning_cnnviz.core.methods import saliency as S

CPU_CASES = [(m, s) for m in ("resnet18", "vgg11_bn", "efficientnet_b0", "convnext_tiny") for s in (64, 128)]
CPU_CASES.append(("resnet18", 224))
CUDA_CASES = [(m, 224) for m in ("resnet18", "vgg11_bn", "efficientnet_b0", "convnext_tiny")]
SETTINGS = (1, 4, 16, 64)
IMAGES, SAMPLES, PATCH, STRIDE, NEURONS = 4, 16, 16, 8, 64
OURS = "\0ours"  # our times, apart from the references' names


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds(function: Callable[[], Any], device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    function()
    sync(device)
    return time.perf_counter() - start


def paired(
    ours: Callable[[], Any],
    references: dict[str, Callable[[], Any]],
    device: torch.device,
    repeats: int,
    warm: dict[str, Callable[[], Any]] | None = None,
) -> dict[str, dict[str, Any]]:
    """Warm every call once (by ``warm[name]`` when given, ``warm[OURS]`` for ours: a cheaper run of the same
    kernels), then
    ``repeats`` interleaved rounds (the order turning each round), more for a case under a second (about 2 s of
    rounds, at most 15). Per reference: the medians and the ratio reference / ours with its spread; ``{"": ours}``
    without references."""
    started = time.perf_counter()
    warm = warm or {}
    for name, function in [(OURS, ours), *references.items()]:
        warm.get(name, function)()
    once = time.perf_counter() - started
    if once < 1.0:
        repeats = max(repeats, min(15, int(2.0 / max(once, 1e-3))))
    calls = [(OURS, ours), *references.items()]
    times: dict[str, list[float]] = {name: [] for name, _ in calls}
    for repeat in range(repeats):
        turn = repeat % len(calls)
        for name, function in calls[turn:] + calls[:turn]:
            times[name].append(seconds(function, device))
    mine = times[OURS]
    rows = {"": {"ours": statistics.median(mine)}} if not references else {}
    for name in references:
        ratios = [t / m for t, m in zip(times[name], mine)]
        rows[name] = {"ours": statistics.median(mine), "reference": statistics.median(times[name]),
                      "ratio": statistics.median(ratios), "spread": (min(ratios), max(ratios))}  # fmt: skip
    return rows


def best_setting(make: Callable[[int], Callable[[], Any]], device: torch.device) -> int:
    """The fastest of :data:`SETTINGS` for a captum call (each timed once, warm)."""
    times = {}
    for setting in SETTINGS:
        call = make(setting)
        call()
        times[setting] = seconds(call, device)
    return min(times, key=times.__getitem__)


def model_and_images(name: str, size: int, device: torch.device) -> tuple[nn.Module, Tensor, Tensor]:
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None).to(device).eval()
    images = torch.randn(IMAGES, 3, size, size, device=device)
    with torch.no_grad():
        targets = model(images).argmax(dim=1)
    return model, images, targets


def saliency_rows(name: str, size: int, device: torch.device, repeats: int, best: dict[str, int]) -> list[tuple]:
    model, x, t = model_and_images(name, size, device)
    probability = lambda images: model(images).softmax(dim=1)  # noqa: E731 - what occlusion measures the drop of
    layer_name = LayerMap.of(model).last
    layer = dict(model.named_modules())[layer_name]
    span = float((x.amax() - x.amin()).item())
    occlusion = Occlusion(probability)
    window = (3, PATCH, PATCH)

    def captum_occlusion(per_eval: int, images: Tensor = x, stride: int = STRIDE) -> Callable[[], Any]:
        return lambda: occlusion.attribute(images, window, (3, stride, stride), target=t[: len(images)],
                                           baselines=0.0, perturbations_per_eval=per_eval)  # fmt: skip

    tunnel = NoiseTunnel(Saliency(model))

    def captum_smoothgrad(batch: int) -> Callable[[], Any]:
        return lambda: tunnel.attribute(x, nt_type="smoothgrad", nt_samples=SAMPLES, stdevs=0.15 * span, target=t,
                                        nt_samples_batch_size=batch)  # fmt: skip

    if not best:
        best["occlusion"] = best_setting(captum_occlusion, device)
        best["smoothgrad"] = best_setting(captum_smoothgrad, device)
        print(f"captum's best: perturbations_per_eval={best['occlusion']}, nt_samples_batch_size={best['smoothgrad']}")
    cam = LayerGradCam(model, layer)
    smooth_best, occlusion_best = best["smoothgrad"], best["occlusion"]
    best_name, default_name = f"captum best ({occlusion_best} per eval)", "captum default (1 per eval)"
    occlusion_warm = {  # one image, windows not overlapping: the same kernels at a fraction of the cost
        OURS: lambda: S.occlusion(model, x[:1], t[:1], patch=PATCH, stride=PATCH, baseline=0.0),
        best_name: captum_occlusion(occlusion_best, x[:1], PATCH),
        default_name: captum_occlusion(1, x[:1], PATCH),
    }
    calls: list[tuple[str, Callable[[], Any], dict[str, Callable[[], Any]]]] = [
        ("vanilla gradient", lambda: S.vanilla_gradient(model, x, t),
         {"": lambda: Saliency(model).attribute(x, target=t)}),
        ("SmoothGrad", lambda: S.smoothgrad(model, x, t, samples=SAMPLES),
         {f"captum best ({smooth_best} per batch)": captum_smoothgrad(smooth_best),
          f"captum default ({SAMPLES} per batch)": captum_smoothgrad(SAMPLES)} if smooth_best != SAMPLES else
         {f"captum best = default ({SAMPLES} per batch)": captum_smoothgrad(SAMPLES)}),
        ("guided backprop", lambda: S.guided_backprop(model, x, t),
         {"": lambda: GuidedBackprop(model).attribute(x, t)}),
        ("Grad-CAM", lambda: S.grad_cam(model, x, t, layer=layer_name), {"": lambda: cam.attribute(x, target=t)}),
        ("occlusion", lambda: S.occlusion(model, x, t, patch=PATCH, stride=STRIDE, baseline=0.0),
         {best_name: captum_occlusion(occlusion_best), default_name: captum_occlusion(1)}),
    ]  # fmt: skip
    rows = []
    for case, ours, references in calls:
        warm = occlusion_warm if case == "occlusion" and size >= 128 else None  # a full warm-up costs minutes there
        for against, row in paired(ours, references, device, repeats, warm).items():
            rows.append((name, size, f"{case}, {against}" if against else case, row))
            show(rows[-1:], header=False)
    return rows


def projection_row(size: int, device: torch.device, repeats: int) -> tuple:
    """64 neurons of resnet18's layer3 projected with the deconvnet rule: one batched pass against captum's
    ``NeuronDeconvolution`` one neuron at a time."""
    model, x, _ = model_and_images("resnet18", size, device)
    with torch.no_grad():
        feature = torch.empty(0)

        def keep(module: nn.Module, args: Any, output: Tensor) -> None:
            nonlocal feature
            feature = output

        handle = model.layer3.register_forward_hook(keep)
        model(x)
        handle.remove()
    generator = torch.Generator().manual_seed(0)
    rows = torch.randint(0, IMAGES, (NEURONS,), generator=generator).to(device)
    channels = torch.randint(0, feature.shape[1], (NEURONS,), generator=generator).to(device)
    ys = torch.randint(0, feature.shape[2], (NEURONS,), generator=generator).to(device)
    xs = torch.randint(0, feature.shape[3], (NEURONS,), generator=generator).to(device)
    field = receptive_fields(model, ["layer3"], x[:1])["layer3"]
    neuron = NeuronDeconvolution(model, model.layer3)

    def ours() -> Any:
        return project_activations(model, "layer3", x[rows], channels, ys, xs, rules=("deconvnet",), field=field)

    def theirs() -> list[Tensor]:
        where = zip(rows.tolist(), channels.tolist(), ys.tolist(), xs.tolist())
        return [neuron.attribute(x[r : r + 1], neuron_selector=(c, i, j)) for r, c, i, j in where]

    row = paired(ours, {"": theirs}, device, repeats)[""]
    return ("resnet18", size, f"projections, {NEURONS} neurons of layer3, captum per neuron", row)


def ours_alone_rows(name: str, size: int, device: torch.device, repeats: int) -> list[tuple]:
    """The passes without a captum counterpart, timed alone: scan, feature visualization, codes, t-SNE, and a
    training step with the activation statistics (the reference: the same step without)."""
    model, _, _ = model_and_images(name, size, device)
    layer = LayerMap.of(model).last
    probe = torch.randn(1024, 3, size, size, device=device)
    codes_probe = torch.randn(2000, 3, size, size, device=device)
    channels = list(range(16))
    embedding = EmbeddingMap()
    codes: list[Tensor] = [torch.randn(2000, 512, device=device)]

    def embed_codes(images: Tensor = codes_probe) -> Tensor:
        codes[0] = embedding.codes(model, images)
        return codes[0]

    batch = torch.randn(32, 3, size, size, device=device)
    labels = torch.randint(0, 1000, (32,), device=device)
    trained = getattr(torchvision.models, name)(weights=None).to(device).train()
    optimizer = torch.optim.SGD(trained.parameters(), lr=1e-3)
    health = ActivationHealth()
    health.discover(trained, batch[:2])

    def step() -> None:
        optimizer.zero_grad()
        nn.functional.cross_entropy(trained(batch), labels).backward()
        optimizer.step()

    def watched_step() -> None:
        with health.watch(trained):
            step()
        health.step()

    def scan(images: Tensor) -> Any:
        return top_activations(model, {layer: channels}, images, k=9)

    def render(steps: int) -> Tensor:
        return visualize_features(model, layer, channels, steps=steps, size=size)

    cases: list[tuple[str, Callable[[], Any], Callable[[], Any] | None, Callable[[], Any] | None]] = [
        ("top-patch scan, 1024 images", lambda: scan(probe), None, lambda: scan(probe[:64])),
        ("feature vis, 16 channels x 256 steps", lambda: render(256), None, lambda: render(4)),
        ("embedding codes, 2000 images", embed_codes, None, lambda: embed_codes(codes_probe[:64])),
        ("t-SNE of 2000 codes", lambda: tsne(codes[0], perplexity=30.0), None, None),
        ("training step with activation stats", watched_step, step, None),
    ]  # fmt: skip
    rows = []
    for case, ours, reference, warm in cases:
        row = paired(ours, {"": reference} if reference else {}, device, repeats, {OURS: warm} if warm else None)[""]
        rows.append((name, size, case + (", against the step alone" if reference else ""), row))
        show(rows[-1:], header=False)
    return rows


def show(rows: list[tuple], header: bool = True) -> None:
    if header:
        print("| model | px | pass, reference | ours (s) | reference (s) | reference / ours | spread |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, size, case, row in rows:
        if "ratio" in row:
            low, high = row["spread"]
            print(f"| {name} | {size} | {case} | {row['ours']:.3f} | {row['reference']:.3f} | {row['ratio']:.2f} | "
                  f"{low:.2f}-{high:.2f} |")  # fmt: skip
        else:
            print(f"| {name} | {size} | {case} | {row['ours']:.3f} | | | |")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="resnet18 at 64 px (224 on CUDA) only")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--cases", help="only these, e.g. 'vgg11_bn:64,convnext_tiny:64' (captum's best is searched on "
                        "the first)")  # fmt: skip
    parser.add_argument("--alone", choices=("first-size", "all", "none"), default="first-size",
                        help="the passes without a captum counterpart: at each model's first size (default), at every "
                        "size, or not at all")  # fmt: skip
    args = parser.parse_args()
    device = torch.device(args.device)
    cases = CUDA_CASES if device.type == "cuda" else CPU_CASES
    if args.quick:
        cases = cases[:1]
    if args.cases:
        cases = [(name, int(size)) for name, size in (case.split(":") for case in args.cases.split(","))]
    best: dict[str, int] = {}
    rows: list[tuple] = []
    started = time.perf_counter()
    done: set[str] = set()
    for name, size in cases:
        rows += saliency_rows(name, size, device, args.repeats, best)
        if args.alone == "all" or (args.alone == "first-size" and name not in done):
            rows += ours_alone_rows(name, size, device, args.repeats)
        done.add(name)
        print(f"{name} at {size} px done, {time.perf_counter() - started:.0f} s", flush=True)
    if not args.cases:
        rows.append(projection_row(64 if args.quick and device.type == "cpu" else 128, device, args.repeats))
    print()
    show(rows)
    print(f"total {time.perf_counter() - started:.0f} s on {device}, {torch.get_num_threads()} threads")


if __name__ == "__main__":
    main()
