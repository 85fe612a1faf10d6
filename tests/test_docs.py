"""The README describes what is there: every module in the flow table, every config key in the reference."""

from __future__ import annotations

import re

from conftest import ROOT
from dialsum.config import config_reference_markdown

README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_readme_config_reference_is_the_schema():
    """Mutation caught: a field added, renamed or redescribed in config.py without regenerating the README
    (`dialsum config-keys --markdown`)."""
    block = re.search(r"<!-- config-keys:start -->\n(.*?)<!-- config-keys:end -->", README, flags=re.S)
    assert block, "README.md has no config-keys block"
    assert block.group(1) == config_reference_markdown()


def test_readme_flow_table_names_every_module():
    flow = README.split("## The flow", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"`([a-z_]+\.py)`", flow))
    modules = {p.name for p in (ROOT / "src" / "dialsum").glob("*.py")} - {"__init__.py", "errors.py"}
    assert modules - named == set(), "modules missing from README's flow table"
    assert named - modules == set(), "README's flow table names modules that do not exist"
