"""The demo run in a real browser: headless Chromium (Debian's, installed by ``.ci/run``) driven by Playwright opens
a real TensorBoard on the demo's event files, and the ``cnnviz report`` page, and checks what a person would see:
our tags rendered, every picture decoded, no failed request, no script error.

Set ``CNNVIZ_SCREENSHOTS=DIR`` to keep the screenshots (``docs/images/`` holds the README's)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import ROOT, free_port, in_ci, wait_for_tag

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    executable = next((found for name in BROWSERS if (found := shutil.which(name))), None)
    if executable is None:
        message = "no Chromium on this machine (Debian: apt-get install chromium; .ci/run installs it)"
        if in_ci():
            pytest.fail(message)  # CI installs it: a missing browser there is a broken CI, not a skip
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield launched
        launched.close()


class Watched:
    """A page with every response, failed request, script error and console error it produced."""

    def __init__(self, browser: Any) -> None:
        self.page = browser.new_page(viewport={"width": 1400, "height": 1000})
        self.responses: list[tuple[int, str]] = []
        self.problems: list[str] = []
        self.page.on("response", lambda r: self.responses.append((r.status, r.url)))
        self.page.on("requestfailed", lambda r: self.problems.append(f"request failed: {r.url}"))
        self.page.on("pageerror", lambda e: self.problems.append(f"script error: {e}"))
        self.page.on("console", lambda m: self.problems.append(f"console: {m.text}") if m.type == "error" else None)

    def data(self, part: str) -> list[tuple[int, str]]:
        return [(status, url) for status, url in self.responses if part in url]

    def wait_for(self, what: str, ready: Any, seconds: float = 60) -> None:
        deadline = time.monotonic() + seconds
        while not ready():
            assert time.monotonic() < deadline, f"{what} not shown within {seconds} s; problems: {self.problems}"
            self.page.wait_for_timeout(250)

    def screenshot(self, name: str, full_page: bool = False) -> None:
        folder = os.environ.get("CNNVIZ_SCREENSHOTS")
        if folder:
            Path(folder).mkdir(parents=True, exist_ok=True)
            self.page.screenshot(path=str(Path(folder) / name), full_page=full_page)

    def finish(self, screenshot: str) -> None:
        """Keep the screenshot; then: no script error, no failed request, every data request answered 200."""
        self.screenshot(screenshot)
        assert not self.problems
        assert all(status == 200 for status, _ in self.data("/data/"))

    def images(self) -> list[dict[str, Any]]:
        """Every <img> of the page, inside shadow roots too: its alt, whether it loaded and its decoded size."""
        return self.page.locator("img").evaluate_all(
            "els => els.map(e => ({alt: e.alt, src: e.src.slice(0, 120), ok: e.complete && e.naturalWidth > 0,"
            " width: e.naturalWidth, height: e.naturalHeight}))"
        )


@pytest.fixture(scope="module")
def board(digits_run: tuple[Path, str]) -> Iterator[str]:
    logdir, _ = digits_run
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host", "127.0.0.1", "--port",
         str(port), "--reload_interval", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_tag(server, f"{base}/data/plugin/images/tags", "cnnviz/deep_dream")
        yield base
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_tensorboard_images_tab_shows_our_pictures(browser: Any, board: str) -> None:
    seen = Watched(browser)
    seen.page.goto(f"{board}/#images")
    seen.wait_for("images", lambda: len(seen.images()) >= 8 and all(i["ok"] for i in seen.images()))
    assert seen.page.locator("text=cnnviz/activations/dead_map/net.relu1").count() >= 1
    shown = {status for status, _ in seen.data("/data/plugin/images/individualImage")}
    assert shown == {200}
    seen.page.goto(f"{board}/#images&tagFilter=cnnviz%2F(filters%7Cfeature_vis_patches%7Cactivation_maps)%2F")
    seen.wait_for(
        "filtered images",
        lambda: seen.page.locator("text=cnnviz/feature_vis_patches/net.conv3").count() >= 1
        and all(i["ok"] for i in seen.images()),
    )
    assert seen.page.locator("text=cnnviz/filters/net.conv1").count() >= 1
    assert seen.page.locator("text=cnnviz/activation_maps/net.relu1").count() >= 1
    seen.page.goto(f"{board}/#images&tagFilter=cnnviz%2Fclass_models")
    seen.wait_for(
        "the class models",
        lambda: seen.page.locator("text=cnnviz/class_models").count() >= 1 and all(i["ok"] for i in seen.images()),
    )
    seen.page.goto(f"{board}/#images&tagFilter=cnnviz%2Finversion")
    seen.wait_for(
        "the inversions",
        lambda: seen.page.locator("text=cnnviz/inversion_evolution").count() >= 1
        and all(i["ok"] for i in seen.images()),
    )
    seen.page.goto(f"{board}/#images&tagFilter=cnnviz%2Factivation_atlas")
    seen.wait_for(
        "the activation atlas",
        lambda: seen.page.locator("text=cnnviz/activation_atlas/net.relu3").count() >= 1
        and all(i["ok"] for i in seen.images()),
    )
    seen.page.goto(f"{board}/#images&tagFilter=cnnviz%2Focclusion")
    seen.wait_for(
        "the occlusion figure",
        lambda: seen.page.locator("text=cnnviz/occlusion/net.relu3").count() >= 1
        and all(i["ok"] for i in seen.images()),
    )
    seen.page.goto(f"{board}/#images&tagFilter=cnnviz%2Finvariance")
    seen.wait_for(
        "the invariance curves",
        lambda: all(seen.page.locator(f"text=cnnviz/invariance/{kind}").count() >= 1
                    for kind in ("translation", "scale", "rotation"))
        and all(i["ok"] for i in seen.images()),
    )  # fmt: skip
    seen.finish("tensorboard_images.png")


def test_tensorboard_custom_scalars_open_on_the_health_chart(browser: Any, board: str) -> None:
    seen = Watched(browser)
    seen.page.goto(f"{board}/#custom_scalars")
    seen.wait_for("the health chart", lambda: seen.page.locator("text=cnnviz health").count() >= 1)
    seen.wait_for(
        "its lines", lambda: len(seen.data("/data/plugin/custom_scalars/scalars")) >= 6
    )  # one request per chart
    first = seen.page.locator("text=/dead \\(ReLU family\\) and dormant/").first
    health = seen.page.locator("text=cnnviz health").first
    assert health.bounding_box()["y"] < first.bounding_box()["y"] < 400  # first on the page, above the fold
    seen.page.wait_for_timeout(1000)
    seen.finish("tensorboard_health.png")


def test_tensorboard_projector_loads_our_codes(browser: Any, board: str) -> None:
    seen = Watched(browser)
    seen.page.goto(f"{board}/#projector")

    def points() -> bool:
        return any(frame.locator("text=Points: 300").count() for frame in seen.page.frames)

    seen.wait_for("the projector's 300 points", points)
    tensors = seen.data("/data/plugin/projector/tensor")
    assert tensors and all(status == 200 for status, _ in tensors)
    assert "name=cnnviz/embedding" in tensors[0][1]
    assert all(status == 200 for status, _ in seen.data("/data/plugin/projector/sprite_image"))
    seen.page.wait_for_timeout(1500)
    seen.screenshot("tensorboard_projector.png")
    assert not [p for p in seen.problems if "WebGL" not in p]  # software WebGL notices are Chromium's, headless


def test_report_page_shows_every_picture(browser: Any, demo_report: tuple[Path, Path, str]) -> None:
    from lightning_cnnviz.report import read_events

    _, html, _ = demo_report
    seen = Watched(browser)
    seen.page.goto(html.resolve().as_uri())
    seen.wait_for("the report's images", lambda: all(i["ok"] for i in seen.images()))
    images = seen.images()
    tags = read_events(html.parent).images
    assert sorted(i["alt"] for i in images) == sorted(tags)
    assert {"cnnviz/activation_maps/net.relu1", "cnnviz/activation_maps_evolution/net.relu1"} <= set(tags)
    assert {"cnnviz/class_models", "cnnviz/class_models_evolution"} <= set(tags)
    assert {"cnnviz/inversion", "cnnviz/inversion_evolution", "cnnviz/activation_atlas/net.relu3"} <= set(tags)
    assert {"cnnviz/occlusion/net.relu3", "cnnviz/invariance/translation", "cnnviz/invariance/rotation"} <= set(tags)
    for image in images:  # decoded at the size the event file says
        latest = tags[image["alt"]][-1]
        assert (image["width"], image["height"]) == (latest.width, latest.height)
    assert seen.page.locator("svg polyline").count() >= len(read_events(html.parent).scalars)
    assert not seen.problems
    assert {url.split(":")[0] for _, url in seen.responses} <= {"file", "data"}  # nothing fetched from elsewhere
    seen.screenshot("report.png")


@pytest.fixture(scope="module")
def mlflow_ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """A fit of the demo CNN logged to MLflow on a local SQLite store, and MLflow's own UI (``mlflow ui``) on it:
    (the run's page, the last step)."""
    pytest.importorskip("mlflow")
    import lightning.pytorch as pl
    from lightning.pytorch.loggers import MLFlowLogger

    from lightning_cnnviz import FilterMonitor, SaliencyMonitor, TopPatchMonitor
    from lightning_cnnviz.demo.data import DigitsDataModule
    from lightning_cnnviz.demo.models import ImageClassifier

    folder = tmp_path_factory.mktemp("mlflow")
    store = f"sqlite:///{folder / 'mlflow.db'}"
    logger = MLFlowLogger(experiment_name="digits", tracking_uri=store, artifact_location=str(folder / "artifacts"))
    pl.seed_everything(0, verbose=False)
    monitors = [FilterMonitor(every_n_epochs=1), SaliencyMonitor(num_images=4, every_n_epochs=1),
                TopPatchMonitor(probe_size=64, every_n_epochs=1)]  # fmt: skip
    trainer = pl.Trainer(max_epochs=3, limit_train_batches=10, limit_val_batches=2, logger=logger,
                         callbacks=monitors, enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    trainer.fit(ImageClassifier(in_channels=1, num_classes=10), datamodule=DigitsDataModule())
    port = free_port()
    program = Path(sys.executable).parent / "mlflow"
    server = subprocess.Popen(
        [str(program), "ui", "--backend-store-uri", store, "--host", "127.0.0.1", "--port", str(port)],
        cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                urllib.request.urlopen(base, timeout=2).close()
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "mlflow ui did not start"
                time.sleep(0.5)
        run = f"{base}/#/experiments/{logger.experiment_id}/runs/{logger.run_id}/model-metrics"
        yield run, str(trainer.global_step)
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_mlflow_ui_shows_our_pictures(browser: Any, mlflow_ui: tuple[str, str]) -> None:
    """MLflow's own UI shows the monitors' pictures of an MLFlowLogger run as its image charts, at their steps."""
    page, last = mlflow_ui
    seen = Watched(browser)
    seen.page.goto(page)
    seen.wait_for("the saliency charts", lambda: seen.page.get_by_text("cnnviz/saliency", exact=True).count() > 0)
    assistant = seen.page.locator("button[aria-label='Close']")
    if assistant.count():
        assistant.first.click()
    seen.page.get_by_text("cnnviz/saliency", exact=True).first.scroll_into_view_if_needed()
    seen.page.wait_for_timeout(1000)
    steps = seen.page.locator("input[type='number']")
    for index in range(steps.count()):  # each image chart at the last step
        if steps.nth(index).is_visible() and steps.nth(index).is_enabled():
            steps.nth(index).fill(last)
            steps.nth(index).press("Enter")
    seen.page.locator("body").click(position={"x": 5, "y": 5})
    seen.page.get_by_text("cnnviz/saliency", exact=True).first.scroll_into_view_if_needed()
    # MLflow up to 3.x showed each picture from its get-artifact URL; 3.18 first asks a local store for a presigned URL
    # (501: it has none), then fetches get-artifact itself and shows a blob of it
    shown = lambda: sum(i["ok"] and ("get-artifact" in i["src"] or i["src"].startswith("blob:"))  # noqa: E731
                        for i in seen.images())  # fmt: skip
    fetched = lambda: {url for status, url in seen.data("get-artifact")  # noqa: E731
                       if status == 200 and "cnnviz~saliency~" in url and f"step%2B{last}%2B" in url}  # fmt: skip
    seen.wait_for("the saliency pictures", lambda: shown() >= 5 and len(fetched()) >= 5)
    seen.screenshot("mlflow_ui.png")
    assert not [p for p in seen.problems if "get-artifact" in p or "script error" in p], seen.problems


def test_readme_shows_the_committed_screenshots() -> None:
    readme = (ROOT / "README.md").read_text()
    for name in ("tensorboard_images.png", "tensorboard_health.png", "report.png", "mlflow_ui.png"):
        assert (ROOT / "docs" / "images" / name).is_file()
        assert f"docs/images/{name}" in readme
