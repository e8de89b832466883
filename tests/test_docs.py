"""The commands the README and docs/ show are ones the CLI accepts: every ``--option`` of a ``compress ...`` line
exists on that subcommand, every value given to a choice option is one of its choices, and every
``python benchmarks/...py`` / ``examples/...py`` script named exists. Users copy these lines; a renamed option
must not leave them broken. The pages' links to each other (and their ``#anchors``) resolve, and the README stays a
front page: a few screens, its quickstart command, no history (dates belong in CHANGELOG.md)."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
#: generic placeholders in prose ("compress prune --option"), not real options
PLACEHOLDERS = {"--option", "--help", "-h"}


def _commands(text: str) -> list[str]:
    """``compress ...`` lines of fenced code blocks (comments cut) and inline code spans with an option."""
    out = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, re.S):
        for line in block.splitlines():
            line = line.strip()
            if line.startswith("compress "):
                out.append(re.split(r"\s+#\s", line, maxsplit=1)[0])
    for span in re.findall(r"`([^`]+)`", re.sub(r"```.*?```", "", text, flags=re.S)):
        span = " ".join(span.split())
        if span.startswith("compress ") and " --" in span:
            out.append(span)
    return out


def _problems(cmd: str, main: click.Group) -> list[str]:
    try:
        toks = shlex.split(cmd.replace("…", " ").replace("...", " "))
    except ValueError:  # an unbalanced quote in prose: nothing to check
        return []
    if toks[1] not in main.commands:
        return [f"no subcommand {toks[1]!r}"]
    opts: dict[str, click.Option] = {}
    for p in main.commands[toks[1]].params:
        if isinstance(p, click.Option):
            opts.update({o: p for o in (*p.opts, *p.secondary_opts)})
    bad = []
    for i, tok in enumerate(toks[2:], 2):
        if not tok.startswith("--") or tok in PLACEHOLDERS:
            continue
        name, _, inline = tok.partition("=")
        p = opts.get(name)
        if p is None:
            bad.append(f"unknown option {name}")
        elif isinstance(p.type, click.Choice) and not p.is_flag:
            value = inline or (toks[i + 1] if i + 1 < len(toks) else "")
            if value and not value.isupper() and value not in p.type.choices:  # upper case: a placeholder (FMT)
                bad.append(f"{name} {value!r} is not one of {list(p.type.choices)}")
    return bad


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_documented_commands_parse(doc):
    from compressor.cli import main

    cmds = _commands(doc.read_text())
    problems = [f"{cmd!r}: {msg}" for cmd in cmds for msg in _problems(cmd, main)]
    assert not problems, "\n".join(problems)


def test_the_parser_still_finds_the_documented_commands():
    # a parser that silently found nothing would pass the test above; the commands moved from the README to docs/
    counts = {str(doc.relative_to(ROOT)): len(_commands(doc.read_text())) for doc in DOCS}
    assert counts["README.md"] >= 12, counts
    assert sum(counts.values()) >= 60, counts


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_documented_scripts_exist(doc):
    scripts = set(re.findall(r"python ((?:benchmarks|examples)/[A-Za-z0-9_]+\.py)", doc.read_text()))
    missing = sorted(s for s in scripts if not (ROOT / s).is_file())
    assert not missing, f"{doc.relative_to(ROOT)} names scripts that do not exist: {missing}"


def test_the_checker_catches_a_renamed_option_and_a_bad_choice():
    from compressor.cli import main

    assert _problems("compress prune --ratio 0.5 --no-such-flag", main) == ["unknown option --no-such-flag"]
    assert any("--widths" in m for m in _problems("compress prune --ratio 0.5 --widths sideways", main))
    assert _problems("compress export pruned --format onnx --out o", main) == []


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(doc: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", doc.read_text(), flags=re.S)
    return {_slug(m) for m in re.findall(r"^#{1,6}\s+(.+?)\s*$", text, re.M)}


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_between_pages_resolve(doc):
    text = re.sub(r"```.*?```", "", doc.read_text(), flags=re.S)
    bad = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):  # http(s):, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (doc.parent / path).resolve() if path else doc
        if not dest.exists():
            bad.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            bad.append(f"{target}: no heading with anchor #{anchor} in {dest.name}")
    assert not bad, f"{doc.relative_to(ROOT)}: " + "; ".join(bad)


def test_the_anchor_slugs_follow_github():
    assert _slug("transformers ≥ 5.16 and head-pruned models") == "transformers--516-and-head-pruned-models"
    assert _slug("Is Eq. 10 as good as vanilla Taylor?") == "is-eq-10-as-good-as-vanilla-taylor"
    assert _slug("No code from model folders, no pickle") == "no-code-from-model-folders-no-pickle"


def test_the_readme_is_a_front_page():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.encode()) <= 16_000, f"README.md is {len(readme.encode())} bytes; move detail to docs/"
    dates = re.findall(r"\b20\d\d-\d\d-\d\d\b", readme)
    assert not dates, f"README.md holds dates {dates}: history goes to CHANGELOG.md, runs to docs/results.md"
    # the quickstart the README promises, as examples/quickstart.sh runs it
    blocks = re.findall(r"```bash\n(.*?)```", readme, re.S)
    assert any(line.startswith("bash examples/quickstart.sh") for b in blocks for line in b.splitlines())
    assert (ROOT / "examples" / "quickstart.sh").is_file()
