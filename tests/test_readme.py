"""The README tells the truth: its model table is the registry, and .ci/run runs its test command."""

import re
from pathlib import Path


from flaxzoo.zoo import model_table

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_model_table_is_the_registry():
    """The README's table is `flaxzoo list --markdown`: a new model file needs only that command run."""
    block = re.search(r"<!-- models: `flaxzoo list --markdown` -->\n(.+?)\n<!-- /models -->", README, re.S)
    assert block, "README.md has no model table between the markers"
    assert block.group(1) == model_table(), "README.md's model table is stale: paste `flaxzoo list --markdown`"


def test_ci_runs_the_readme_test_command():
    block = re.search(r"<!-- test-command -->\s*```bash\n(.+?)\n```\s*<!-- /test-command -->", README, re.S)
    assert block and block.group(1).strip().startswith("python -m pytest -q")
    assert "test-command" in (ROOT / ".ci" / "run").read_text()
