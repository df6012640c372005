"""Behaviour kept: the demo and the plain-PyTorch example write the pictures, scalars and texts recorded in
``tests/golden`` (pixels within 2/255 on at least 99.9% of each image, scalars to rtol 1e-4; costs left out)."""

from __future__ import annotations

from pathlib import Path

import golden
import pytest


@pytest.mark.parametrize("name", golden.RUNS)
def test_the_runs_write_what_was_recorded(name: str, tmp_path: Path) -> None:
    found = golden.summary(golden.run(name, tmp_path))
    problems = golden.differences(golden.stored(name), found)
    assert not problems, f"{name}: {len(problems)} difference(s):\n" + "\n".join(problems[:40])
