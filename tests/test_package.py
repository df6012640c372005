"""The package's shape: pure torch (no compiled code, no private torch ops), a small public surface whose module
``__all__`` lists agree with the exports, and a demo that the monitors do not import."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import lightning_cnnviz
import lightning_cnnviz.core as core

PACKAGE = Path(lightning_cnnviz.__file__).parent


def test_no_compiled_code_no_ctypes_and_no_private_torch_ops() -> None:
    assert not [p for p in PACKAGE.rglob("*") if p.suffix in (".c", ".cpp", ".so", ".cu", ".h")]
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        assert "ctypes" not in text and "aten._" not in text and "cpp_extension" not in text, path


def test_core_module_all_lists_are_the_core_exports() -> None:
    listed: dict[str, str] = {}
    for path in sorted((PACKAGE / "core").glob("[!_]*.py")):
        module = importlib.import_module(f"lightning_cnnviz.core.{path.stem}")
        for name in module.__all__:
            assert name not in listed, f"{name} listed by {listed.get(name)} and {path.stem}"
            listed[name] = path.stem
            assert getattr(core, name) is getattr(module, name)
    assert sorted(listed) == sorted(core.__all__)  # the real interface, whatever its length (issue 22)


def test_top_level_exports_the_monitors_and_the_sink() -> None:
    assert set(lightning_cnnviz.__all__) == {
        "ActivationMonitor", "DeadFilterEvent", "EmbeddingMonitor", "EpochMonitor", "FeatureVisMonitor",
        "FilterMonitor", "SaliencyMonitor", "TensorBoardSink", "TopPatchMonitor", "__version__",
    }  # fmt: skip
    for name in lightning_cnnviz.__all__:
        assert getattr(lightning_cnnviz, name) is not None


def test_no_underscore_name_is_imported_across_modules() -> None:
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("lightning_cnnviz"):
                private = [alias.name for alias in node.names if alias.name.startswith("_")]
                assert not private, f"{path.name} imports {private} from {node.module}"


def test_the_monitors_import_neither_the_demo_nor_its_extras() -> None:
    code = (
        "import sys\n"
        "import lightning_cnnviz as v\n"
        "monitors = [v.FilterMonitor(), v.ActivationMonitor(), v.SaliencyMonitor(), v.TopPatchMonitor(),\n"
        "            v.EmbeddingMonitor()]\n"
        "assert not any(m.startswith('lightning_cnnviz.demo') for m in sys.modules)\n"
        "assert not any(m.split('.')[0] in ('sklearn', 'jsonargparse') for m in sys.modules)\n"
        "print(len(monitors))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "5"


def test_every_public_name_has_a_docstring() -> None:
    """``help(SaliencyMonitor)`` says what it does: no annotation before a class's docstring swallows it."""
    for module in (lightning_cnnviz, core):
        missing = [name for name in module.__all__ if not (getattr(module, name).__doc__ or "").strip()]
        assert missing == [], f"{module.__name__}: no docstring for {missing}"
