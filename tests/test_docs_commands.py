"""Every command, option and argument of the command line is documented twice: in
docs/commands.md, within the section of its own command, and in its own `--help`.

The command tree is walked as click sees it (`typer.main.get_command`), sub-groups
(`dsv remote`, `dsv files`, …) included, so a command or option added later without
documentation fails here, with every missing item named at once.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer

from dsv.cli import app

DOC = Path(__file__).resolve().parent.parent / "docs" / "commands.md"
# The options of `dsv` itself (before the command name) are described here.
GLOBAL_SECTION = "Environment variables and global options"
EXEMPT_OPTIONS = {"--help", "-h"}


def sections(markdown: str) -> dict[str, str]:
    """Heading text → the section's text: from the heading to the next heading of the same
    or a higher level, so a section holds its subsections (`### Link modes` is part of
    `## checkout`). Lines inside ``` fences are never headings (`# comment` in a console
    example)."""
    lines = markdown.splitlines()
    headings: list[tuple[int, int, str]] = []  # (line number, level, text)
    fenced = False
    for number, line in enumerate(lines):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        match = None if fenced else re.match(r"(#{1,6})\s+(.*?)\s*#*\s*$", line)
        if match:
            headings.append((number, len(match.group(1)), match.group(2)))
    out: dict[str, str] = {}
    for i, (start, level, text) in enumerate(headings):
        end = next((n for n, lvl, _ in headings[i + 1:] if lvl <= level), len(lines))
        out.setdefault(text, "\n".join(lines[start:end]))
    return out


def has_option(text: str, option: str) -> bool:
    """`--json` as a word of its own: not `--json-lines`, not part of `x--json`."""
    return re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", text) is not None


def has_word(text: str, word: str) -> bool:
    """An upper-case name such as `REF` or `KEY-OR-PREFIX`, not inside a longer name."""
    return re.search(rf"(?<![\w-]){re.escape(word)}(?![\w])", text) is not None


def walk(command: Any, path: tuple[str, ...] = ("dsv",)) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Every visible command and group below (and including) `command`, with its path."""
    if getattr(command, "hidden", False):
        return
    yield path, command
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        yield from walk(sub, path + (name,))


def option_names(option: Any) -> list[str]:
    """The names an option is documented by: its long names (`--json`, `--no-x`), or its
    short ones when it has no long name (`log -n`)."""
    names = [n for n in [*option.opts, *option.secondary_opts] if n not in EXEMPT_OPTIONS]
    return [n for n in names if n.startswith("--")] or names


def argument_words(argument: Any) -> list[set[str]]:
    """What documents an argument: each upper-case word of its metavar (`[REMOTE]
    [DATASET|REF]...` → REMOTE, DATASET, REF), else of its name (`url` → URL). Each set
    holds the alternatives for one word: a list argument may be named in the singular
    (`paths` → PATHS or PATH)."""
    if argument.metavar:
        return [{w} for w in re.findall(r"[A-Z][A-Z0-9_]*(?:-[A-Z0-9_]+)*", argument.metavar)]
    word = argument.name.upper()
    if argument.nargs == -1 and word.endswith("S"):
        return [{word, word[:-1]}]
    return [{word}]


def visible_params(command: Any) -> Iterator[Any]:
    for param in command.params:
        if getattr(param, "hidden", False):
            continue
        if param.param_type_name == "option" and not option_names(param):
            continue  # only --help/-h
        yield param


def missing_items() -> list[str]:
    doc = DOC.read_text(encoding="utf-8")
    by_heading = sections(doc)
    missing: list[str] = []
    for path, command in walk(typer.main.get_command(app)):
        name = " ".join(path)
        if not (command.help or "").strip():
            missing.append(f"{name}: no help text (docstring)")
        if len(path) > 1 and not has_word(doc, name):
            missing.append(f"{name}: not mentioned in {DOC.name}")
        params = list(visible_params(command))
        if not params and hasattr(command, "commands"):
            continue  # a group without options of its own: its commands are checked
        heading = GLOBAL_SECTION if len(path) == 1 else " ".join(path[1:])
        section = by_heading.get(heading)
        if section is None:
            missing.append(f"{name}: no section `## {heading}` in {DOC.name}")
            section = ""
        elif len(path) > 1 and not has_word(section, name):
            missing.append(f"{name}: its section `{heading}` never shows `{name}`")
        for param in params:
            if param.param_type_name == "option":
                for option in option_names(param):
                    if section and not has_option(section, option):
                        missing.append(f"{name} {option}: not in the section `{heading}` "
                                       f"of {DOC.name}")
                if not (param.help or "").strip():
                    missing.append(f"{name} {'/'.join(option_names(param))}: no help text")
                continue
            words = argument_words(param)
            shown = param.metavar or param.name.upper()
            for alternatives in words:
                if section and not any(has_word(section, w) for w in alternatives):
                    missing.append(f"{name} {shown}: argument {'/'.join(sorted(alternatives))} "
                                   f"not in the section `{heading}` of {DOC.name}")
            in_docstring = all(any(has_word(command.help or "", w) for w in alternatives)
                               for alternatives in words)
            if not (getattr(param, "help", None) or "").strip() and not in_docstring:
                missing.append(f"{name} {shown}: argument with no help text, not named in "
                               "the command's docstring")
    return missing


def test_every_command_option_and_argument_is_documented() -> None:
    missing = missing_items()
    assert not missing, f"{len(missing)} undocumented:\n  " + "\n  ".join(missing)


def test_the_walk_reaches_every_level_of_the_command_tree() -> None:
    """The check above is not vacuous: sub-groups, their commands and the options of
    each are all seen."""
    seen = {" ".join(path): command for path, command in walk(typer.main.get_command(app))}
    for name in ("dsv", "dsv init", "dsv remote", "dsv remote add", "dsv files get",
                 "dsv cache prune", "dsv index rebuild", "dsv datasets create",
                 "dsv versions commit", "dsv import"):
        assert name in seen, name
    options = {o for p in seen["dsv remote add"].params if p.param_type_name == "option"
               for o in option_names(p)}
    assert {"--endpoint-url", "--write-through", "--json"} <= options
    assert option_names(next(p for p in seen["dsv log"].params if p.name == "limit")) == ["-n"]
    assert len(seen) > 30


def test_sections_nest_and_skip_fenced_code() -> None:
    text = "\n".join([
        "# top", "intro",
        "## alpha", "`--one`",
        "### alpha sub", "`--two`",
        "```console", "# not a heading --three", "```",
        "## beta", "`--four`",
        "#### deep", "`--five`",
    ])
    found = sections(text)
    assert set(found) == {"top", "alpha", "alpha sub", "beta", "deep"}
    assert has_option(found["alpha"], "--two") and has_option(found["alpha"], "--three")
    assert not has_option(found["alpha"], "--four")
    assert not has_option(found["alpha sub"], "--one")
    assert has_option(found["beta"], "--five")
    assert has_option("`--json`", "--json") and not has_option("--json-lines", "--json")
    assert has_word("`dsv remote add NAME URL`", "NAME")
    assert not has_word("RENAME", "NAME") and not has_word("NAMES", "NAME")


def test_every_command_a_module_defines_is_in_the_root_table() -> None:
    """The root builds commands from `root.COMMANDS`: one defined but not listed there
    would silently never be reachable."""
    from importlib import import_module

    import typer

    from dsv.cli import root

    defined: dict[str, str] = {}
    for module in set(root.COMMANDS.values()):
        app = import_module(f"dsv.cli.{module}").commands
        for info in app.registered_commands:
            name = info.name or typer.main.get_command_name(info.callback.__name__)
            defined[name] = module
        for group in app.registered_groups:
            defined[group.name] = module
    assert defined == root.COMMANDS


def test_every_command_has_a_one_line_summary() -> None:
    """`dsv --help` and each group's help list commands by the first paragraph of their help:
    it must be one line, or the list breaks mid-sentence."""
    from dsv.cli.root import COMMANDS, _build
    bad = []

    def walk(name: str, command) -> None:
        first = (command.help or "").split("\n\n")[0].strip()
        if not first or "\n" in first:
            bad.append(f"{name}: {first!r}")
        for sub, child in (getattr(command, "commands", None) or {}).items():
            walk(f"{name} {sub}", child)

    for name in COMMANDS:
        walk(name, _build(name))
    assert not bad, bad
