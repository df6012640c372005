"""The package's shape: pure torch (no compiled code, no private torch ops), a small public surface whose module
``__all__`` lists agree with the exports, and a demo that the monitors do not import."""

from __future__ import annotations

import ast
import importlib
import os
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


SUBPACKAGES = ("methods", "drawing", "monitors", "model", "inputs")


def modules_of(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.py") if p.name != "__init__.py")


def packages_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and (p / "__init__.py").exists())


def test_the_core_folders_show_its_layers() -> None:
    """At most 8 modules at the core's top (the protocol, context, budget and checks), at most 12 in a
    sub-package, and as many in each of its own (the perturbation methods and pictures)."""
    core_dir = PACKAGE / "core"
    assert len(modules_of(core_dir)) <= 8, modules_of(core_dir)
    assert [p.name for p in packages_under(core_dir)] == sorted(SUBPACKAGES)
    for sub in SUBPACKAGES:
        assert 0 < len(modules_of(core_dir / sub)) <= 12, sub
        for nested in packages_under(core_dir / sub):
            assert 0 < len(modules_of(nested)) <= 12, nested
    assert [p.name for p in packages_under(core_dir / "methods")] == ["perturbation"]
    assert [p.name for p in packages_under(core_dir / "monitors")] == ["perturbation"]


def test_methods_and_drawing_never_import_the_monitors() -> None:
    """Read from the source: no module of methods/ or drawing/ imports lightning_cnnviz.core.monitors, nor the
    core package itself (whose names include the monitors' objects)."""
    for sub in ("methods", "drawing"):
        for path in sorted((PACKAGE / "core" / sub).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom):
                    imported = [node.module or ""]
                elif isinstance(node, ast.Import):
                    imported = [alias.name for alias in node.names]
                else:
                    continue
                for name in imported:
                    assert not name.startswith("lightning_cnnviz.core.monitors"), f"{path.name} imports {name}"
                    assert name != "lightning_cnnviz.core", f"{path.name} imports the core package"


def test_the_core_public_list_is_small_and_every_module_all_is_real() -> None:
    """``core.__all__`` is the interface (at most 60 names for the six monitors; each later monitor adds its object
    and at most 3 names); every module's own ``__all__`` names exist, and every public name is one of them."""
    later = len([name for name in lightning_cnnviz.__all__ if name.endswith("Monitor") and name != "EpochMonitor"]) - 6
    assert len(core.__all__) <= 60 + 4 * later, (len(core.__all__), later)
    listed: dict[str, str] = {}
    for path in sorted((PACKAGE / "core").rglob("[!_]*.py")):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        module = importlib.import_module(name)
        for exported in module.__all__:
            assert hasattr(module, exported), f"{name} lists {exported}"
            assert exported not in listed, f"{exported} listed by {listed[exported]} and {name}"
            listed[exported] = name
    for public in core.__all__:
        assert getattr(core, public) is getattr(importlib.import_module(listed[public]), public), public


def test_top_level_exports_the_monitors_and_the_sink() -> None:
    assert set(lightning_cnnviz.__all__) == {
        "ActivationAtlasMonitor", "ActivationMapMonitor", "ActivationMonitor", "ClassModelMonitor", "DeadFilterEvent",
        "EmbeddingMonitor", "EpochMonitor", "FeatureVisMonitor", "FilterMonitor", "InvarianceMonitor",
        "InversionMonitor", "OcclusionMonitor", "SaliencyMonitor", "TensorBoardSink", "TopPatchMonitor", "__version__",
        "register_sink", "sink_for",
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
    """``help(SaliencyMonitor)`` says what it does: no annotation before a class's docstring swallows it; every
    public class and function of the core shows an example."""
    import inspect

    for module in (lightning_cnnviz, core):
        missing = [name for name in module.__all__ if not (getattr(module, name).__doc__ or "").strip()]
        assert missing == [], f"{module.__name__}: no docstring for {missing}"
    shown = [getattr(core, n) for n in core.__all__ if inspect.isclass(getattr(core, n)) or callable(getattr(core, n))]
    without = [o.__name__ for o in shown if inspect.isclass(o) or inspect.isfunction(o) if ">>>" not in o.__doc__]
    assert without == [], f"no example in the docstring of {without}"


def test_every_benchmark_and_example_imports() -> None:
    """The benchmarks and examples follow the package's names as they move (each is imported, not run)."""
    root = PACKAGE.parent
    code = (
        "import importlib.util, pathlib, sys\n"
        "for path in sorted([*pathlib.Path('benchmarks').glob('*.py'), *pathlib.Path('examples').glob('*.py')]):\n"
        "    spec = importlib.util.spec_from_file_location(path.stem, path)\n"
        "    spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
        "print('imported')\n"
    )
    paths = f"{root}:{root / 'benchmarks'}:{root / 'examples'}"
    result = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": paths})  # fmt: skip
    assert result.returncode == 0 and result.stdout.strip() == "imported", result.stderr[-2000:]
