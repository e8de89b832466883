"""The commands the README and docs/ show are ones the CLI accepts: every ``--option`` of a ``compress ...`` line
exists on that subcommand, every value given to a choice option is one of its choices, and every
``python benchmarks/...py`` / ``examples/...py`` script named exists. Users copy these lines; a renamed option
must not leave them broken. The pages' links to each other (and their ``#anchors``) resolve, and the README stays a
front page: a few screens, its quickstart command, no history (dates belong in CHANGELOG.md)."""
from __future__ import annotations

import dataclasses
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


# ---- the CLI reference, the docstring and the help texts: one text per option, generated from the code ----

#: a year (1980-2039: not 2048, a window length) or a timing ("5.3 s a step", "55 s", "17 min")
HISTORY = re.compile(r"\b(?:19[89]\d|20[0-3]\d)\b|\b\d+(?:\.\d+)? ?(?:ms|s|min|h)\b")


def test_the_cli_reference_is_current():
    from compressor.commands.reference import COMMAND, DOC_PATH, render

    assert DOC_PATH == ROOT / "docs" / "cli.md"
    assert DOC_PATH.is_file(), f"docs/cli.md is missing; run: {COMMAND}"
    assert DOC_PATH.read_text() == render(), f"docs/cli.md is not current; run: {COMMAND}"


def _all_help_texts() -> dict[str, str]:
    """Every help text ``compress`` holds: the group's and each command's, and each option's, hidden ones too."""
    from compressor.algorithm.config import PruneConfig
    from compressor.cli import main

    texts = {"compress": main.help or ""}
    for name, cmd in main.commands.items():
        texts[f"compress {name}"] = cmd.help or ""
        for p in cmd.params:
            texts[f"compress {name} {p.name}"] = getattr(p, "help", None) or ""
    for f in dataclasses.fields(PruneConfig):
        texts[f"PruneConfig.{f.name}"] = f.metadata.get("help", "")
    return texts


def test_the_reference_lists_every_option_and_the_deprecated_spellings():
    from compressor.cli import main

    text = (ROOT / "docs" / "cli.md").read_text()
    for name, cmd in main.commands.items():
        assert f"## compress {name}\n" in text, name
        section = text.split(f"## compress {name}\n")[1].split("\n## ")[0]
        for p in cmd.params:
            if isinstance(p, click.Option):
                assert f"`{p.opts[-1]}" in section or f", {p.opts[-1]}" in section, (name, p.opts)
    assert "`--int8` (use `--quantize int8`)" in text and "`--provider` (use `--device`)" in text


def test_no_help_text_holds_history_or_timings():
    """Dates, history and one machine's timings belong in docs/why-defaults.md, docs/results.md and CHANGELOG.md;
    a help text says what the option does and its default."""
    bad = {k: HISTORY.findall(v) or v for k, v in _all_help_texts().items() if HISTORY.search(v)}
    assert not bad, bad
    assert HISTORY.search("150 until 2026-12-04") and HISTORY.search("5.3 s a step on 2 cores")
    assert HISTORY.search("about 17 min") and HISTORY.search("in 55s")
    assert not HISTORY.search("[default: min(2048, max_position_embeddings)]; 0 skips; 65,536 tokens; 8s0")


def test_the_prune_config_docstring_lists_every_field_with_its_help():
    from compressor.algorithm.config import PruneConfig

    doc = PruneConfig.__doc__ or ""
    flat = " ".join(doc.split())
    for f in dataclasses.fields(PruneConfig):
        assert re.search(rf"^    {f.name} \(", doc, re.M), f.name
        assert " ".join(f.metadata["help"].split()) in flat, f.name
