"""The README tells the truth: its model table is the registry, and .ci/run runs its test command."""

import re
from pathlib import Path

import pytest

from flaxzoo.registry import get_spec, list_models

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def model_rows():
    rows = {}
    for line in README.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 8 and re.fullmatch(r"\d+", cells[1]):
            rows[cells[0]] = cells
    return rows


@pytest.mark.parametrize("name", list_models())
def test_model_table_row_equals_the_registry(name):
    spec = get_spec(name)
    row = model_rows()[spec.keras_name]
    assert row[1:] == [
        str(spec.default_size),
        f"{spec.top1:.1%}",
        f"{spec.top5:.1%}",
        f"{spec.params:,}",
        str(spec.depth),
        spec.preprocess_mode,
        f"{spec.flops / 1e9:.2f}",
    ]


def test_model_table_has_no_unregistered_rows():
    assert set(model_rows()) == {get_spec(n).keras_name for n in list_models()}


def test_ci_runs_the_readme_test_command():
    block = re.search(r"<!-- test-command -->\s*```bash\n(.+?)\n```\s*<!-- /test-command -->", README, re.S)
    assert block and block.group(1).strip().startswith("python -m pytest -q")
    assert "test-command" in (ROOT / ".ci" / "run").read_text()
