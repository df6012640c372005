"""FilterMonitor and ActivationMonitor in real Lightning fits on real digits, read back with TensorBoard's reader."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from PIL import Image
from torch import Tensor, nn

from conftest import every_monitor, fit_listening, global_state_clean, hooks_left, make_trainer, read_events
from lightning_cnnviz import ActivationMonitor, DeadFilterEvent, FilterMonitor
from lightning_cnnviz.core import ActivationStats
from lightning_cnnviz.demo.models import ImageClassifier

SMALL = (8, 16, 16)
DEAD = [1, 4, 6]  # of conv1's 8 channels: 37.5%, above the default 10% threshold


def small_model(activation: str = "module", seed: int = 0, **kwargs: Any) -> ImageClassifier:
    torch.manual_seed(seed)
    return ImageClassifier(channels=SMALL, activation=activation, **kwargs)


def kill_channels(model: ImageClassifier, channels: list[int]) -> None:
    """Zero weights and a very negative bias: these conv1 channels can never be > 0 after the ReLU."""
    conv = model.net.conv1
    with torch.no_grad():
        conv.weight[channels] = 0.0
        conv.bias[channels] = -100.0


def relu_names(activation: str) -> list[str]:
    if activation == "functional":
        return ["net.relu", "net.relu#2", "net.relu#3"]
    return ["net.relu1", "net.relu2", "net.relu3"]


def dead_counts(events: dict[str, Any], layer: str) -> list[float]:
    return [e.value for e in events["scalars"][f"cnnviz/activations/dead/{layer}"]]


@pytest.mark.parametrize("activation", ["module", "inplace", "functional"])
def test_forced_dead_channels_are_reported_exactly(tmp_path: Path, digits_data: Any, activation: str) -> None:
    model = small_model(activation)
    kill_channels(model, DEAD)
    monitor = ActivationMonitor(every_n_steps=5, on_error="raise")
    trainer = make_trainer(tmp_path, [monitor])
    trainer.fit(model, datamodule=digits_data)

    first = relu_names(activation)[0]
    events = read_events(tmp_path)
    counts = dead_counts(events, first)
    assert counts and all(c == len(DEAD) for c in counts)
    assert monitor.health.policy.last_dead[first] == DEAD
    alert = monitor.alerts[0]
    assert alert["layer"] == first and alert["dead_channels"] == DEAD and alert["reason"] == "threshold"
    assert alert["learning_rate"] == pytest.approx(0.05)
    texts = events["text"]["cnnviz/alerts"]
    assert any(f"layer '{first}'" in t and "[1, 4, 6]" in t and "learning rate" in t for t in texts)
    # every window's fraction is 3/8 and the map shows those three rows dead
    fractions = [e.value for e in events["scalars"][f"cnnviz/activations/dead_fraction/{first}"]]
    assert fractions == pytest.approx([3 / 8] * len(fractions))
    assert f"cnnviz/activations/dead_map/{first}" in events["images"]
    assert f"cnnviz/activations/firing_rate/{first}" in events["histograms"]
    assert hooks_left(model) == [] and global_state_clean()


@pytest.mark.parametrize("activation", ["module", "functional"])
def test_healthy_model_reports_no_dead_filters(tmp_path: Path, digits_data: Any, activation: str) -> None:
    model = small_model(activation, lr=0.01)
    with torch.no_grad():
        for conv in (model.net.conv1, model.net.conv2, model.net.conv3):
            conv.bias.fill_(0.2)  # every channel starts alive
    monitor = ActivationMonitor(every_n_steps=11, on_error="raise")
    trainer = make_trainer(tmp_path, [monitor], max_epochs=2)
    trainer.fit(model, datamodule=digits_data)
    events = read_events(tmp_path)
    for layer in relu_names(activation):
        assert set(dead_counts(events, layer)) == {0.0}
        sparsity = [e.value for e in events["scalars"][f"cnnviz/activations/sparsity/{layer}"]]
        assert all(0.0 < s < 1.0 for s in sparsity)
    assert monitor.alerts == []
    assert "cnnviz/alerts" not in events["text"]


class RecordImages(pl.Callback):
    def __init__(self) -> None:
        self.images: list[Tensor] = []

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self.images.append(batch[0].detach().clone())


@pytest.mark.parametrize("activation", ["module", "inplace", "functional"])
def test_dead_sets_equal_brute_force_per_window(tmp_path: Path, digits_data: Any, activation: str) -> None:
    """Frozen weights (lr = 0): each window's dead channels equal a direct check over that window's images."""
    model = small_model(activation, lr=0.0, seed=3)
    kill_channels(model, [2, 5])
    with torch.no_grad():
        model.net.conv3.bias[:4] = -3.0  # makes some channels of the last layer die on some windows only
    recorder = RecordImages()
    monitor = ActivationMonitor(every_n_steps=4, on_error="raise")
    trainer = make_trainer(tmp_path, [recorder, monitor], limit_val_batches=0)
    trainer.fit(model, datamodule=digits_data)

    net = model.net.eval()
    windows = [recorder.images[i : i + 4] for i in range(0, len(recorder.images), 4)]
    names = relu_names(activation)
    seen_dead = 0
    for index, window in enumerate(windows):
        with torch.no_grad():
            x = torch.cat(window)
            a1 = torch.relu(net.conv1(x))
            a2 = torch.relu(net.conv2(torch.nn.functional.max_pool2d(a1, 2)))
            a3 = torch.relu(net.conv3(torch.nn.functional.max_pool2d(a2, 2)))
        for name, act in zip(names, (a1, a2, a3), strict=True):
            expected = [c for c in range(act.shape[1]) if not bool((act[:, c] > 0).any())]
            reported = [c for c, rate in enumerate(monitor.health.rate_history[name][index]) if rate == 0]
            assert reported == expected, (index, name)
            seen_dead += len(expected)
    assert seen_dead > 2 * len(windows)  # the check compared real dead sets, not only empty ones


def test_sparsity_scalar_equals_independent_computation(tmp_path: Path, digits_data: Any) -> None:
    """One window over a whole epoch of a frozen model: the logged sparsity equals a direct count."""
    model = small_model(lr=0.0)
    recorder = RecordImages()
    trainer = make_trainer(tmp_path, [recorder, ActivationMonitor(every_n_steps=22, on_error="raise")])
    trainer.fit(model, datamodule=digits_data)
    with torch.no_grad():
        relu1 = torch.relu(model.net.conv1(torch.cat(recorder.images)))
    expected = (relu1 == 0).double().mean().item()
    logged = read_events(tmp_path)["scalars"]["cnnviz/activations/sparsity/net.relu1"]
    assert len(logged) == 1 and logged[0].value == pytest.approx(expected, abs=1e-6)


def test_filter_monitor_images_smoothness_and_cadence(tmp_path: Path, digits_data: Any) -> None:
    model = small_model()
    monitor = FilterMonitor(every_n_epochs=2, layers=["net.conv1", "net.conv2"], on_error="raise")
    trainer = make_trainer(tmp_path, [monitor], max_epochs=3, num_sanity_val_steps=2)
    trainer.fit(model, datamodule=digits_data)
    events = read_events(tmp_path)
    conv1 = events["images"]["cnnviz/filters/net.conv1"]
    assert [e.step for e in conv1] == [1, 2]  # epoch 1 by cadence, epoch 2 because it is the last
    assert (conv1[0].width, conv1[0].height) == (
        3 * 51 + 1,
        3 * 51 + 1,
    )  # 8 filters 5x5 upscaled 10x: a 3x3 grid of 50 px tiles
    assert "cnnviz/filters/net.conv2" in events["images"]
    # conv2 reads 8 channels: its 16 filters with their 8 input slices, a filter per row (conv1 reads 1: none)
    assert "cnnviz/filters/slices/net.conv1" not in events["images"]
    (slices,) = events["images"]["cnnviz/filters/slices/net.conv2"][-1:]
    pixels = torch.from_numpy(np.array(Image.open(io.BytesIO(slices.encoded_image_string))))[..., 0].double()
    weight = model.net.conv2.weight.detach().double()
    kernel = weight.shape[-1]
    tile = -(-16 // kernel) * kernel  # upscaled by the smallest integer factor reaching 16 px
    assert (slices.height, slices.width) == (16 * (tile + 1) + 1, 8 * (tile + 1) + 1)
    for f in (0, 7, 15):
        expected = (weight[f] - weight[f].min()) / (weight[f].max() - weight[f].min())
        for i in (0, 3, 7):
            top, left = 1 + f * (tile + 1), 1 + i * (tile + 1)
            drawn = pixels[top : top + tile : tile // kernel, left : left + tile : tile // kernel] / 255
            assert (drawn - expected[i]).abs().max() <= 1 / 255 + 1e-9  # stored as bytes, truncated
    smooth = events["scalars"]["cnnviz/filters/smoothness/net.conv1"]
    from lightning_cnnviz.core import filter_smoothness

    assert smooth[-1].value == pytest.approx(filter_smoothness(model.net.conv1.weight).item(), abs=1e-5)


def test_filter_monitor_logs_final_state_when_stopped_by_max_steps(tmp_path: Path, digits_data: Any) -> None:
    trainer = make_trainer(tmp_path, [FilterMonitor(every_n_epochs=5)], max_epochs=10, max_steps=30)
    trainer.fit(small_model(), datamodule=digits_data)
    steps = [e.step for e in read_events(tmp_path)["images"]["cnnviz/filters/net.conv1"]]
    assert steps == [trainer.current_epoch]


class RecordGrads(ImageClassifier):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.grads: list[list[Tensor]] = []

    def on_after_backward(self) -> None:
        self.grads.append([p.grad.detach().clone() for p in self.parameters()])


def assert_training_undisturbed(
    tmp_path: Path, data: Any, make_callbacks: Any, activation: str = "inplace", steps: int = 44
) -> None:
    """Two seeded 2-epoch fits, without and with the callbacks: every step's gradients and the final
    weights are bit-identical."""
    runs = []
    for with_monitors in (False, True):
        pl.seed_everything(0, verbose=False)
        model = RecordGrads(channels=SMALL, activation=activation)
        callbacks = make_callbacks() if with_monitors else []
        trainer = make_trainer(tmp_path / str(with_monitors), callbacks, max_epochs=2)
        trainer.fit(model, datamodule=data)
        runs.append(model)
    without, with_ = runs
    assert len(without.grads) == len(with_.grads) == steps
    for step_a, step_b in zip(without.grads, with_.grads, strict=True):
        for a, b in zip(step_a, step_b, strict=True):
            assert torch.equal(a, b)
    for a, b in zip(without.parameters(), with_.parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("activation", ["inplace", "functional"])
def test_gradients_are_bit_identical_with_and_without_monitors(
    tmp_path: Path, digits_data: Any, activation: str
) -> None:
    assert_training_undisturbed(
        tmp_path, digits_data, lambda: [FilterMonitor(), ActivationMonitor(every_n_steps=3)], activation
    )


class FailingModel(ImageClassifier):
    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        if batch_idx == 3:
            raise RuntimeError("boom in training_step")
        return super().training_step(batch, batch_idx)


@pytest.mark.parametrize("activation", ["module", "functional"])
def test_no_hooks_left_after_fit_exception_and_monitor_error(
    tmp_path: Path, digits_data: Any, activation: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.manual_seed(0)
    model = FailingModel(channels=SMALL, activation=activation)
    trainer = make_trainer(tmp_path / "a", [FilterMonitor(), ActivationMonitor(every_n_steps=2)])
    with pytest.raises(RuntimeError, match="boom in training_step"):
        trainer.fit(model, datamodule=digits_data)
    assert hooks_left(model) == [] and global_state_clean()

    def broken_update(self: ActivationStats, name: str, activation: Tensor, **options: Any) -> None:
        raise ArithmeticError("injected failure in the statistics")

    monkeypatch.setattr(ActivationStats, "update", broken_update)
    model = small_model(activation)
    trainer = make_trainer(tmp_path / "b", [ActivationMonitor(every_n_steps=2, on_error="raise")])
    with pytest.raises(ArithmeticError, match="injected"):
        trainer.fit(model, datamodule=digits_data)
    assert hooks_left(model) == [] and global_state_clean()

    # with the default policy the run survives: one warning, statistics off, training completes
    model = small_model(activation)
    trainer = make_trainer(tmp_path / "c", [ActivationMonitor(every_n_steps=2)])
    with pytest.warns(UserWarning, match="statistics failed with ArithmeticError.*switched off"):
        trainer.fit(model, datamodule=digits_data)
    assert trainer.global_step == 22
    assert hooks_left(model) == [] and global_state_clean()


def test_filter_monitor_error_does_not_stop_training(
    tmp_path: Path, digits_data: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import lightning_cnnviz.core.monitors.filter_panel as fm

    def broken(*args: Any, **kwargs: Any) -> Tensor:
        raise ValueError("injected render failure")

    monkeypatch.setattr(fm, "render_filter_grid", broken)
    trainer = make_trainer(tmp_path, [FilterMonitor()], max_epochs=2)
    with pytest.warns(UserWarning, match="filter image of 'net.conv1' failed"):
        trainer.fit(small_model(), datamodule=digits_data)
    assert trainer.current_epoch == 2
    assert "cnnviz/filters/smoothness/net.conv1" in read_events(tmp_path)["scalars"]  # the other piece still runs


def test_resume_continues_dead_filter_history(tmp_path: Path, digits_data: Any) -> None:
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    first = ActivationMonitor(every_n_steps=5)
    model = small_model()
    kill_channels(model, DEAD)
    trainer = make_trainer(tmp_path / "one", [first, checkpoints], enable_checkpointing=True)
    trainer.fit(model, datamodule=digits_data)
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)["callbacks"][first.state_key]
    assert saved["windows"] == 4 and saved["last_dead"]["net.relu1"] == DEAD  # 22 batches: windows at 5..20

    second = ActivationMonitor(every_n_steps=5)
    trainer = make_trainer(tmp_path / "two", [second], max_epochs=2)
    trainer.fit(small_model(), datamodule=digits_data, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert second.health.windows == saved["windows"] + 5  # four full windows and the last short one
    history = second.health.rate_history["net.relu1"]
    assert history[: saved["windows"]] == saved["rate_history"]["net.relu1"]
    # the layer was already over the threshold before the resume: no second threshold alert
    assert [a["reason"] for a in second.alerts] == [a["reason"] for a in saved["alerts"]]


def test_on_dead_stop_and_callable(tmp_path: Path, digits_data: Any) -> None:
    model = small_model()
    kill_channels(model, DEAD)
    trainer = make_trainer(tmp_path / "stop", [ActivationMonitor(every_n_steps=4, on_dead="stop")], max_epochs=5)
    trainer.fit(model, datamodule=digits_data)
    assert trainer.global_step == 4

    received: list[DeadFilterEvent] = []
    model = small_model()
    kill_channels(model, [0, 2])
    trainer = make_trainer(tmp_path / "call", [ActivationMonitor(every_n_steps=4, on_dead=received.append)])
    trainer.fit(model, datamodule=digits_data)
    assert len(received) == 1
    event = received[0]
    assert (event.layer, event.dead_channels, event.num_channels, event.reason) == (
        "net.relu1",
        [0, 2],
        8,
        "threshold",
    )
    assert event.dead_fraction == 0.25 and event.global_step == 4 and event.window_steps == 4


def test_growth_alert_when_more_filters_die(tmp_path: Path, digits_data: Any) -> None:
    class KillLater(pl.Callback):
        def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
            if trainer.global_step == 5:
                kill_channels(pl_module, [1, 4, 6, 7])

    model = small_model()
    kill_channels(model, [1, 4])
    monitor = ActivationMonitor(every_n_steps=5)
    trainer = make_trainer(tmp_path, [KillLater(), monitor])
    trainer.fit(model, datamodule=digits_data)
    relu1 = [a for a in monitor.alerts if a["layer"] == "net.relu1"]
    assert [(a["reason"], a["new_dead_channels"]) for a in relu1] == [("threshold", []), ("growth", [6, 7])]


# ---------------------------------------------------------------------------------------------- bad input


class NoConv(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(256, 10), nn.ReLU(), nn.Linear(10, 10))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(x)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        return nn.functional.cross_entropy(self(batch[0]), batch[1])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.parametrize(
    ("monitor", "error", "pattern"),
    [
        (
            FilterMonitor(layers=["nope"]),
            ValueError,
            r"no module named 'nope'.*Valid names of type Conv1d/Conv2d/Conv3d: 'net.conv1'",
        ),
        (
            FilterMonitor(layers=["net.relu1"]),
            ValueError,
            r"'net.relu1' is a ReLU, not a module of type Conv1d/Conv2d/Conv3d",
        ),
        (
            ActivationMonitor(layers=["nope"]),
            ValueError,
            r"no activation named 'nope'.*'net.relu1', 'net.relu2'",
        ),
        (
            ActivationMonitor(layers=["net.conv1"]),
            ValueError,
            r"'net.conv1' is a Conv2d, not an elementwise activation",
        ),
    ],
)
def test_bad_layer_names_fail_at_setup(
    tmp_path: Path, digits_data: Any, monitor: pl.Callback, error: type, pattern: str
) -> None:
    trainer = make_trainer(tmp_path, [monitor])
    with pytest.raises(error, match=pattern):
        trainer.fit(small_model(), datamodule=digits_data)
    assert trainer.global_step == 0


def test_unknown_functional_name_fails_before_the_first_step(tmp_path: Path, digits_data: Any) -> None:
    trainer = make_trainer(tmp_path, [ActivationMonitor(layers=["net.relu#7"])])
    with pytest.raises(ValueError, match=r"no activation named 'net.relu#7'.*'net.relu', 'net.relu#2', 'net.relu#3'"):
        trainer.fit(small_model("functional"), datamodule=digits_data)
    assert trainer.global_step == 0


def test_a_model_without_conv_keeps_the_activation_statistics_and_filter_monitor_says_it_does_not_apply(
    tmp_path: Path, digits_data: Any
) -> None:
    """No monitor refuses a model for its kind of layers: FilterMonitor says once that it draws convolutions and
    stays off; ActivationMonitor watches the MLP's ReLU, and its sparsity equals a direct count."""
    class Frozen(NoConv):
        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.0)

    recorder, activation = RecordImages(), ActivationMonitor(every_n_steps=22, on_error="raise")
    trainer = make_trainer(tmp_path, [recorder, FilterMonitor(), activation], limit_val_batches=0)
    model = Frozen()
    with pytest.warns(UserWarning, match=r"FilterMonitor: does not apply: it draws the filters of convolutions "
                      r"\(nn.Conv1d, nn.Conv2d, nn.Conv3d\), and Frozen has none. It stays off"):  # fmt: skip
        trainer.fit(model, datamodule=digits_data)
    assert trainer.global_step == len(recorder.images)
    assert [site.name for site in activation.sites or []] == ["fc.2"]
    scalars = read_events(tmp_path)["scalars"]
    assert not [tag for tag in scalars if tag.startswith("cnnviz/filters")]
    with torch.no_grad():
        hidden = torch.relu(model.fc[1](torch.cat(recorder.images).flatten(1)))
    logged = scalars["cnnviz/activations/sparsity/fc.2"]
    assert len(logged) == 1 and logged[0].value == pytest.approx((hidden == 0).double().mean().item(), abs=1e-6)


def test_batch_that_is_not_an_image_tensor(tmp_path: Path) -> None:
    """ActivationMonitor takes inputs of any shape (here flat vectors); a batch that holds no input tensor (a list
    of images) is said once, and the fit goes on."""

    class FlatInput(ImageClassifier):
        def forward(self, x: Tensor) -> Tensor:
            return super().forward(x.view(-1, 1, 16, 16))

    flat = torch.utils.data.TensorDataset(torch.randn(64, 256), torch.randint(0, 10, (64,)))
    loader = torch.utils.data.DataLoader(flat, batch_size=16)
    monitor = ActivationMonitor(on_error="raise")
    trainer = make_trainer(tmp_path / "flat", [monitor], limit_val_batches=0)
    torch.manual_seed(0)
    trainer.fit(FlatInput(channels=SMALL), train_dataloaders=loader)
    assert [s.name for s in monitor.sites or []] == ["net.relu1", "net.relu2", "net.relu3"]

    class ListInput(FlatInput):
        def training_step(self, batch: Any, batch_idx: int) -> Tensor:
            return super().training_step((torch.stack(batch[0]), batch[1]), batch_idx)

    listed = torch.utils.data.DataLoader(flat, batch_size=16, collate_fn=lambda items: ([x for x, _ in items],
                                         torch.stack([y for _, y in items])))  # fmt: skip
    trainer = make_trainer(tmp_path / "listed", [ActivationMonitor()], limit_val_batches=0)
    with pytest.warns(  # said once; the fit goes on without the statistics (never ended by what a batch holds)
        UserWarning, match=r"statistics does not apply: .*input candidate is list of 16 elements.*batch_to_images"
    ):
        trainer.fit(ListInput(channels=SMALL), train_dataloaders=listed)
    assert trainer.global_step == 4
    assert not [tag for tag in read_events(tmp_path / "listed")["scalars"] if tag.startswith("cnnviz/")]


@pytest.mark.parametrize("logger", ["none", "csv"])
def test_without_tensorboard_logger_pictures_go_to_png_files(
    tmp_path: Path, digits_data: Any, logger: str
) -> None:
    """A CSVLogger (or no logger) gets the pictures as PNG files, ``<log folder>/cnnviz/<tag>/<step>.png``, and the
    scalars in its metrics file (without a logger, ``cnnviz/metrics.csv``); where, said once; no event file is made.
    (Until the sinks, these runs wrote a second TensorBoard folder, ``<default_root_dir>/cnnviz``.)"""
    import csv

    from PIL import Image

    loggers: Any = False if logger == "none" else CSVLogger(str(tmp_path / "csv"))
    trainer = make_trainer(
        tmp_path, [FilterMonitor(every_n_epochs=1), ActivationMonitor(every_n_steps=10)], logger=loggers,
        default_root_dir=str(tmp_path), max_epochs=2,
    )  # fmt: skip
    _, told = fit_listening(trainer, small_model(), digits_data)
    folder = tmp_path if logger == "none" else Path(loggers.log_dir)
    pictures = sorted((folder / "cnnviz" / "filters" / "net.conv1").glob("*.png"))
    steps = trainer.global_step // 2, trainer.global_step  # the global steps of the two epoch ends
    assert [p.name for p in pictures] == [f"{s}.png" for s in steps]
    for path in pictures:
        with Image.open(path) as image:
            assert image.mode == "RGB" and min(image.size) > 8
    assert list((folder / "cnnviz" / "activations" / "dead_map").rglob("*.png"))
    assert not list(tmp_path.rglob("events.out.tfevents.*"))
    metrics = folder / ("cnnviz/metrics.csv" if logger == "none" else "metrics.csv")
    rows = list(csv.DictReader(metrics.open()))
    written = {r["tag"] for r in rows} if logger == "none" else set(rows[0])
    assert {"cnnviz/activations/sparsity/net.relu1", "cnnviz/filters/smoothness/net.conv1"} <= written
    assert sum("the pictures go to PNG files under" in line for line in told) == 1, told


@pytest.mark.parametrize(
    ("make", "pattern"),
    [
        (lambda: FilterMonitor(every_n_epochs=0), r"`every_n_epochs` must be a positive integer, got 0"),
        (lambda: FilterMonitor(normalize="max"), r"`normalize` can be \{'per_filter', 'global'\}, got 'max'"),
        (lambda: FilterMonitor(on_error="ignore"), r"`on_error` can be \{'warn', 'raise'\}, got 'ignore'"),
        (lambda: ActivationMonitor(every_n_steps=-1), r"`every_n_steps` must be a positive integer, got -1"),
        (lambda: ActivationMonitor(dead_fraction_threshold=1.5), r"number in \[0, 1\], got 1.5"),
        (lambda: ActivationMonitor(on_dead="explode"), r"`on_dead` can be 'warn', 'stop' or a callable"),
    ],
)
def test_constructor_arguments_are_checked(make: Any, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        make()
    with pytest.raises(TypeError, match="must be a list of layer names"):
        FilterMonitor(layers="net.conv1")  # type: ignore[arg-type]


def test_collect_every_n_steps_samples_whole_steps(tmp_path: Path, digits_data: Any) -> None:
    every, sampled = ActivationMonitor(every_n_steps=22), ActivationMonitor(every_n_steps=22, collect_every_n_steps=2)
    for monitor in (every, sampled):
        model = small_model(lr=0.0)
        kill_channels(model, DEAD)
        trainer = make_trainer(tmp_path / str(id(monitor)), [monitor])
        trainer.fit(model, datamodule=digits_data)
    # one window of 22 training steps; statistics from all 22, or from every second one
    assert [a["window_steps"] for a in every.alerts] == [22]
    assert [a["window_steps"] for a in sampled.alerts] == [11]
    assert every.alerts[0]["dead_channels"] == sampled.alerts[0]["dead_channels"] == DEAD


def test_example_input_array_checks_functional_names_at_setup(tmp_path: Path, digits_data: Any) -> None:
    model = small_model("functional")
    model.example_input_array = torch.zeros(2, 1, 16, 16)
    monitor = ActivationMonitor(layers=["net.relu#2"], on_error="raise")
    trainer = make_trainer(tmp_path, [monitor])
    monitor.setup(trainer, model, "fit")
    assert [s.name for s in monitor.sites or []] == ["net.relu#2"]
    bad = ActivationMonitor(layers=["net.relu#5"])
    with pytest.raises(ValueError, match=r"no activation named 'net.relu#5'"):
        bad.setup(trainer, model, "fit")
    trainer.fit(model, datamodule=digits_data)
    assert list(monitor.health.rate_history) == ["net.relu#2"]


class Diverge(pl.Callback):
    """conv2's weights turn NaN after step ``at`` (conv1 is frozen, so its activations stay finite); at epoch
    ``heal`` every parameter and the optimizer state are put back as they were."""

    def __init__(self, at: int, heal: int) -> None:
        self.at, self.heal = at, heal
        self.saved: dict[str, Tensor] = {}

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, index: int) -> None:
        if trainer.global_step == self.at:
            self.saved = {k: v.clone() for k, v in pl_module.state_dict().items()}
            with torch.no_grad():
                pl_module.net.conv2.weight.fill_(float("nan"))

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
        if trainer.current_epoch == self.heal and self.saved:
            pl_module.load_state_dict(self.saved)
            trainer.optimizers[0].state.clear()


def test_divergence_is_one_alert_and_visual_monitors_skip_until_finite(tmp_path: Path, digits_data: Any) -> None:

    model = small_model("module", lr=0.01)
    model.net.conv1.requires_grad_(False)
    with torch.no_grad():
        for conv in (model.net.conv1, model.net.conv2, model.net.conv3):
            conv.bias.fill_(0.2)  # every channel starts alive: no dead alert for a healthy net
    chosen = every_monitor(top_probe=16, cadence=1)  # every epoch: the skip and the resumption, not the budget
    activation = chosen.pop("activation")
    visual = list(chosen.values())
    trainer = make_trainer(tmp_path, [activation, *visual, Diverge(at=2, heal=1)], max_epochs=3, limit_train_batches=4)
    with pytest.warns(UserWarning) as caught:
        trainer.fit(model, datamodule=digits_data)
    messages = [str(w.message) for w in caught]
    assert [alert["measure"] for alert in activation.alerts] == ["nonfinite"]
    alert = activation.alerts[0]
    assert alert["layer"] == "net.relu2" and alert["global_step"] == 4
    assert "diverged" in alert["message"] and "also in 1 later layer" in alert["message"]
    events = read_events(tmp_path)
    nonfinite = [(e.step, e.value) for e in events["scalars"]["cnnviz/activations/nonfinite/net.relu2"]]
    assert nonfinite[0] == (2, 0.0) and nonfinite[1][0] == 4 and nonfinite[1][1] > 0
    assert {value for step, value in nonfinite if step > 4} == {0.0}  # healed
    assert [e.value for e in events["scalars"]["cnnviz/activations/nonfinite/net.relu1"]] == [0.0] * 6
    for monitor in visual:
        said = [m for m in messages if m.startswith(type(monitor).__name__) and "diverged" in m]
        assert len(said) == 1, type(monitor).__name__
    for tag in (
        "cnnviz/filters/net.conv1",
        "cnnviz/saliency/grad_cam",
        "cnnviz/embedding/tsne",
        "cnnviz/top_patches/net.conv3",
    ):
        assert [e.step for e in events["images"][tag]] == [1, 2], tag  # epoch 0 skipped, then logging resumes


class SlowPicture:
    """A picture that takes 1.5 s to draw, and notes what the progress bar said meanwhile."""

    what = "a slow picture"

    def __init__(self) -> None:
        self.trainer: Any = None
        self.bar_said: list[str] = []

    def attach(self, model: Any, example: Any) -> None:
        pass

    def snapshot(self, model: Any, probe: Any, context: Any) -> Any:
        import time

        from lightning_cnnviz.core import Snapshot

        time.sleep(1.5)
        bar = getattr(self.trainer.progress_bar_callback, "train_progress_bar", None)
        self.bar_said.append(str(getattr(bar, "postfix", "")))
        return Snapshot(scalars={"cnnviz/slow": 1.0})

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


@pytest.mark.parametrize("bar", [True, False])
def test_a_log_that_takes_more_than_a_second_says_what_it_draws(tmp_path: Path, digits_data: Any, bar: bool) -> None:
    """In the progress bar's text while it draws (restored after), or, without a bar, as one line."""
    from lightning_cnnviz import EpochMonitor

    picture = SlowPicture()
    trainer = make_trainer(tmp_path, [EpochMonitor(picture, every_n_epochs=1)], enable_progress_bar=bar,
                           limit_train_batches=2)  # fmt: skip
    picture.trainer = trainer
    _, told = fit_listening(trainer, small_model(), digits_data)
    said = "cnnviz: SlowPicture draws a slow picture (epoch 0)"
    if bar:
        assert [said in text for text in picture.bar_said] == [True]
        assert said not in str(trainer.progress_bar_callback.train_progress_bar.postfix)
    else:
        assert told.count(said) == 1, told
