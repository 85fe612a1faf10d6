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


def test_modules_import_each_other_without_a_cycle():
    """Lazy (in-function) imports count too: a ring of modules that need each other is one concern split badly.
    Mutation caught: generate importing write_candidates from ensemble, which imports run, which imports
    generate (the ring this test was written for)."""
    import ast

    graph = {}
    for path in (ROOT / "src" / "dialsum").glob("*.py"):
        imports = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("dialsum."):
                imports.add(node.module.split(".")[1])
            elif isinstance(node, ast.Import):  # `import dialsum.train` (the CLI's form) counts too
                imports.update(a.name.split(".")[1] for a in node.names if a.name.startswith("dialsum."))
        graph[path.stem] = imports

    def ring_from(start: str, seen: tuple[str, ...]) -> tuple[str, ...] | None:
        for module in sorted(graph.get(start, ())):
            if module in seen:
                return seen[seen.index(module) :] + (module,)
            found = ring_from(module, seen + (module,))
            if found:
                return found
        return None

    rings = [ring for name in sorted(graph) if (ring := ring_from(name, (name,)))]
    assert rings == [], " -> ".join(rings[0])


def test_readme_says_which_torch_build_to_install_and_states_one_suite_time():
    """Mutation caught: the install line without PyTorch's CPU index (a CPU laptop pulls ~20 CUDA packages), or a
    second suite time added at the top while the Tests section says another."""
    assert "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" in README
    install = README.split("**Which torch.**", 1)[1].split("\n\n", 2)[1]
    assert "CPU only" in install and "GPU" in install
    times = re.findall(r"suite[^.]*?\d+ ?min", README, flags=re.S | re.I)
    assert len(times) <= 1, f"the README states the suite time more than once: {times}"
    assert README.count("Suite time") == 1
