"""A clone of the repository resolves every source its code and specs cite: no comment points
outside the repository (``../shared``), and every ``docs/<file>`` cited exists."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CITING = [*sorted((ROOT / "nfbench").rglob("*.py")), *sorted((ROOT / "nfbench").rglob("*.yaml")),
          *sorted((ROOT / "benchmarks").glob("*.yaml")), ROOT / "params.yaml", ROOT / "README.md"]


def _texts():
    for path in CITING:
        yield path.relative_to(ROOT), path.read_text(encoding="utf-8")


def test_no_citation_leaves_the_repository():
    outside = [f"{path}:{n}" for path, text in _texts()
               for n, line in enumerate(text.splitlines(), 1)
               if "../shared" in line or re.search(r"(?<![\w/])original-code\.md", line)]
    assert not outside, outside


def test_cited_docs_exist():
    cited = {m for _, text in _texts() for m in re.findall(r"docs/[\w.-]+\.md", text)}
    assert "docs/original-code.md" in cited
    missing = sorted(c for c in cited if not (ROOT / c).is_file())
    assert not missing, missing
