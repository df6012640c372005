"""Every activation call of a training forward reaches its site: generated networks (hypothesis) against the
networks' own record of their calls, for deliveries, statistics and guided backprop.

The default run covers 200 generated networks (about 5 s); ``CNNVIZ_LONG=1`` covers 2,000 (about a minute), and 8
compiled ones instead of 3.
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from generated_nets import GeneratedNet, Step, guided_reference, plans
from hypothesis import HealthCheck, given, seed, settings
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from conftest import global_state_clean, hooks_left, make_trainer, read_events
from lightning_cnnviz import ActivationMonitor
from lightning_cnnviz.core import ActivationStats, find_activation_sites, tap_activations
from lightning_cnnviz.core.methods.saliency import guided_backprop

LONG = os.environ.get("CNNVIZ_LONG") == "1"
EXAMPLES = 2000 if LONG else 200
COMPILED_EXAMPLES = 8 if LONG else 3
RELU_FAMILY = {"relu", "relu6"}


def check_plan(
    plan: list[Step],
    *,
    dtype: torch.dtype = torch.float32,
    channels_last: bool = False,
    compiled: bool = False,
    guided: bool = True,
) -> dict[str, object]:
    """Run a generated network twice in training mode (and its backward, checkpoint recomputation included) under
    the tap; assert deliveries, statistics and guided backprop against the network's own record. Returns what
    the closing note's table shows."""
    torch.manual_seed(len(plan))
    net = GeneratedNet(plan).to(dtype)
    memory = torch.channels_last if channels_last else torch.contiguous_format
    net = net.to(memory_format=memory)
    batches = [torch.randn(n, 1, 6, 6, dtype=dtype).to(memory_format=memory) for n in (3, 2)]
    model = torch.compile(net, backend="aot_eager") if compiled else net
    sites = find_activation_sites(model, batches[0][:1])
    recorder = net.recorder
    recorder.start()
    with torch.no_grad():
        net.eval()
        net(batches[0][:1])
    expected_names = recorder.stop()
    net.train()
    expected_names = [name for name, _ in expected_names]
    assert [site.name for site in sites] == expected_names, "one site per activation call of a forward"
    assert [site.relu for site in sites] == [recorder.kinds[name] in RELU_FAMILY for name in expected_names]

    stats = ActivationStats({site.name: site.spec for site in sites})
    delivered: list[tuple[str, Tensor]] = []

    def on_activation(name: str, output: Tensor) -> None:
        delivered.append((name, output.detach().clone()))
        stats.update(name, output)

    record: dict[str, list[Tensor]] = defaultdict(list)
    with tap_activations(model, sites, on_activation) as tap:
        for images in batches:
            delivered.clear()
            recorder.start()
            output = model(images)
            calls = recorder.stop()
            assert [name for name, _ in delivered] == [name for name, _ in calls]
            for (name, got), (_, want) in zip(delivered, calls):
                torch.testing.assert_close(got, want, rtol=0, atol=0, msg=f"site {name}")
                record[name].append(want)
            delivered.clear()
            with tap.paused():  # a checkpointed step recomputes its activations here
                output.float().square().sum().backward()
            assert delivered == []
    assert hooks_left(net) == [] and global_state_clean()

    summary = stats.summary()
    dead_sets: dict[str, list[int]] = {}
    for site in sites:
        layer = summary.layers[site.name]
        values = torch.cat(record[site.name]).double()  # (N, C, H, W) from both forwards
        assert layer.positions == values.numel() // site.num_channels
        if site.relu:
            firing = (values > 0).sum((0, 2, 3)).double()
            assert torch.equal(layer.firing, firing), site.name
            assert layer.dead_channels == torch.nonzero(firing == 0).flatten().tolist()
            dead_sets[site.name] = layer.dead_channels
        else:
            mean = values.abs().sum((0, 2, 3)) / (values.numel() // site.num_channels)
            reference = mean / mean.mean() if float(mean.mean()) > 0 else torch.zeros_like(mean)
            torch.testing.assert_close(layer.dormant_score().double(), reference, rtol=2e-5, atol=1e-6)

    if guided and dtype == torch.float32 and not compiled:
        images = batches[0]
        torch.testing.assert_close(
            guided_backprop(net, images, target=1), guided_reference(net, images, 1), rtol=1e-6, atol=1e-6
        )
    return {"sites": [site.name for site in sites], "delivered": list(record), "dead": dead_sets}


@seed(20261202)
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)
@given(plans())
def test_every_activation_call_reaches_its_site(plan: list[Step]) -> None:
    check_plan(plan)


def test_generated_networks_take_under_a_second_each() -> None:
    """Not a timing assertion: prints how long one generated network's checks take, for the closing note."""
    plan = [Step("functional", "relu", (1,)), Step("reused", "relu", (0,), checkpointed=True)]
    plan += [
        Step("reused", "relu", (3,), residual=True),
        Step("reused_container", "gelu", (2,), inner="functional", repeats=2, residual=True),
    ]
    start = time.perf_counter()
    result = check_plan(plan)
    print(f"\none generated network: {time.perf_counter() - start:.3f} s, sites {result['sites']}")
    assert result["sites"] == ["relu", "shared.relu", "shared.relu#2", "parts.3.gelu", "parts.3.gelu#2"]


# The five networks of the issue that found the lost statistics, each with channel 1 of every conv forced dead.
ISSUE_NETWORKS = {
    "conv, shared, conv, shared": [Step("reused", "relu", (1,)), Step("reused", "relu", (1,))],
    "F.relu, then shared twice": [Step("functional", "relu", (1,))] + [Step("reused", "relu", (1,))] * 2,
    "self.act, then shared twice": [Step("module", "relu", (1,))] + [Step("reused", "relu", (1,))] * 2,
    "F.relu, self.act, shared twice": [Step("functional", "relu", (1,)), Step("module", "relu", (1,))]
    + [Step("reused", "relu", (1,))] * 2,
    "F.gelu blocks, reused r, torch.relu": [
        Step("submodule", "gelu", (1,), inner="functional"),
        Step("reused", "relu", (1,)),
        Step("submodule", "gelu", (1,), inner="functional"),
        Step("reused", "relu", (1,)),
        Step("torch", "relu", (1,)),
    ],
}


@pytest.mark.parametrize("network", list(ISSUE_NETWORKS))
def test_the_issues_networks_deliver_every_site(network: str) -> None:
    result = check_plan(ISSUE_NETWORKS[network])
    assert result["delivered"] == result["sites"]
    relu_sites = [name for name in result["sites"] if "gelu" not in name]
    assert all(1 in result["dead"][name] for name in relu_sites)  # the forced channel; the rest as brute force
    print(f"\n{network}: sites {result['sites']}, delivered {result['delivered']}, dead {result['dead']}")


EVERY_SPELLING = [
    Step("functional", "relu", (0,)),
    Step("reused", "relu", (1,), inplace=True),
    Step("inplace", "relu", (2,)),
    Step("torch_", "relu", (3,)),
    Step("method", "relu", (0, 1)),
    Step("reused", "relu", (2, 3), inplace=True),
]


@pytest.mark.parametrize(
    ("dtype", "channels_last"), [(torch.float32, False), (torch.float32, True), (torch.bfloat16, False)]
)
def test_every_spelling_with_a_shared_inplace_module(dtype: torch.dtype, channels_last: bool) -> None:
    result = check_plan(EVERY_SPELLING, dtype=dtype, channels_last=channels_last)
    forced = {"relu": {0}, "shared.relu": {1}, "acts.2": {2}, "relu#2": {3}, "relu#3": {0, 1}}
    forced["shared.relu#2"] = {2, 3}
    assert list(result["dead"]) == list(forced)
    assert all(channels <= set(result["dead"][name]) for name, channels in forced.items())


def test_containers_called_twice_are_two_sites_each() -> None:
    plan = [Step("reused_container", "relu", (1,), inner="module", repeats=2)]
    plan += [Step("reused_container", "silu", (), inner="functional", repeats=3)]
    plan += [Step("loop", "relu", (2,), inner="module", repeats=2)]
    result = check_plan(plan)
    assert result["sites"] == [
        "parts.0.1",
        "parts.0.1#2",
        "parts.1.silu",
        "parts.1.silu#2",
        "parts.1.silu#3",
        "acts.2",
        "acts.2#2",
    ]


@seed(7)
@settings(max_examples=COMPILED_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)
@given(plans(min_size=2, max_size=4))
def test_compiled_forwards_deliver_the_same(plan: list[Step]) -> None:
    check_plan(plan, compiled=True)


class Lit(pl.LightningModule):
    """A generated network trained by Lightning; ``eval_branch``: a block only eval-mode forwards run."""

    def __init__(self, plan: list[Step], eval_branch: bool = False) -> None:
        super().__init__()
        self.net = GeneratedNet(plan)
        self.extra = nn.Sequential(nn.Conv2d(1, 1, 1), nn.ReLU()) if eval_branch else None

    def forward(self, images: Tensor) -> Tensor:
        if self.extra is not None and not self.training:
            images = self.extra(images)
        return self.net(images)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        images, labels = batch
        return F.cross_entropy(self(images), labels)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def tiny_loader(batches: int = 4) -> DataLoader[tuple[Tensor, ...]]:
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batches * 4, 1, 6, 6, generator=generator)
    return DataLoader(TensorDataset(images, torch.randint(0, 3, (batches * 4,), generator=generator)), batch_size=4)


def test_checkpoint_recomputation_in_backward_is_not_counted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A checkpointed block runs its forward again during backward: each site is counted once per step."""
    plan = [Step("module", "relu", (1,), checkpointed=True), Step("submodule", "relu", (2,), checkpointed=True)]
    plan += [Step("reused", "relu", (1,), checkpointed=True), Step("functional", "gelu", checkpointed=True)]
    plan += [Step("reused", "relu", (2,), checkpointed=True, residual=True)]
    updates: dict[str, int] = defaultdict(int)
    update = ActivationStats.update

    def counting(self: ActivationStats, name: str, activation: Tensor, **kwargs: Any) -> None:
        updates[name] += 1
        update(self, name, activation, **kwargs)

    monkeypatch.setattr(ActivationStats, "update", counting)
    monitor = ActivationMonitor(every_n_steps=2, on_error="raise")
    make_trainer(tmp_path, [monitor], max_steps=4, limit_val_batches=0).fit(Lit(plan), tiny_loader())
    expected = ["net.acts.0", "net.parts.1.act", "net.shared.relu", "net.gelu", "net.shared.relu#2"]
    assert dict(updates) == dict.fromkeys(expected, 4)
    # only module sites used once: each is read by a hook on its module, which a recomputation runs too
    monitor = ActivationMonitor(every_n_steps=2, on_error="raise")
    updates.clear()
    plan = [Step("module", "relu", (1,), checkpointed=True), Step("submodule", "silu", checkpointed=True)]
    make_trainer(tmp_path, [monitor], max_steps=4, limit_val_batches=0).fit(Lit(plan), tiny_loader())
    assert dict(updates) == {"net.acts.0": 4, "net.parts.1.act": 4}


def test_a_site_that_receives_nothing_in_a_window_is_said_once(tmp_path: Path) -> None:
    monitor = ActivationMonitor(every_n_steps=2, on_error="raise")
    model = Lit([Step("module", "relu", (1,)), Step("functional", "silu")], eval_branch=True)
    with pytest.warns(UserWarning, match=r"'extra\.1' received no activation in a window of 2 training") as said:
        make_trainer(tmp_path, [monitor], max_steps=6, limit_val_batches=0).fit(model, tiny_loader(6))
    assert sum("received no activation" in str(warning.message) for warning in said) == 1
    assert monitor.sites is not None and "extra.1" in [site.name for site in monitor.sites]
    assert "extra.1" not in monitor.health.rate_history and len(monitor.health.rate_history["net.acts.0"]) == 3
    events = read_events(tmp_path)
    assert "cnnviz/activations/dead/net.acts.0" in events["scalars"]
    assert not any("extra.1" in tag for tag in events["scalars"])


def test_a_plain_loop_draws_what_the_callback_draws(tmp_path: Path, digits_data: Any) -> None:
    """ActivationHealth is ActivationMonitor's logic without a Trainer: the same weights and batches in a plain
    PyTorch loop give the same windows, maps and alerts as the callback in a Lightning fit."""
    from lightning_cnnviz.core import ActivationHealth
    from lightning_cnnviz.demo.models import ImageClassifier

    def model() -> ImageClassifier:
        torch.manual_seed(0)
        classifier = ImageClassifier(channels=(8, 16, 16), activation="functional")
        with torch.no_grad():  # three of conv1's eight filters can never fire: an alert in every run
            classifier.net.conv1.weight[[1, 4, 6]] = 0.0
            classifier.net.conv1.bias[[1, 4, 6]] = -100.0
        return classifier

    monitor = ActivationMonitor(every_n_steps=4, on_error="raise")
    make_trainer(tmp_path, [monitor], max_steps=12, limit_val_batches=0).fit(model(), digits_data.train_dataloader())

    net = model()
    optimizer = net.configure_optimizers()
    health = ActivationHealth()
    batches = iter(digits_data.train_dataloader())
    images, labels = next(batches)
    health.discover(net, images)
    with health.watch(net) as tap:
        for step in range(1, 13):
            loss = F.cross_entropy(net(images), labels)
            optimizer.zero_grad()
            with tap.paused():
                loss.backward()
            optimizer.step()
            health.step()
            if step % 4 == 0 and (summary := health.close_window()) is not None:
                health.check_alerts(summary, global_step=step)
            images, labels = next(batches, (images, labels))
    assert health.windows == monitor.health.windows == 3
    assert health.rate_history == monitor.health.rate_history
    ours, theirs = health.maps().images, monitor.health.maps().images
    assert list(ours) == list(theirs) and all(torch.equal(ours[tag], theirs[tag]) for tag in ours)
    assert health.alerts and [a["dead_channels"] for a in health.alerts] == [a["dead_channels"] for a in monitor.alerts]
