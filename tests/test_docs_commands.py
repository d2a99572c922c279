"""Every flashvlm-export command the user is shown parses with the CLI's own parsers, so a renamed flag fails here:
the fenced shell blocks of README.md and docs/*.md, their inline `flashvlm-export ...` code, every parser's help,
description and epilog, and every string in the package that names a flag (one-line error hints, log lines).
And the docs run as written, page after page: no command writes a path an earlier one wrote, unless with --force."""

from __future__ import annotations

import ast
import os
import re
import shlex
from pathlib import Path

import pytest

from flashvlm_export.cli.commands import COMMANDS, PROG, parsers
from flashvlm_export.errors import UsageError
from flashvlm_export.selector.config import SelectorConfig

from conftest import expect_one_line

ROOT = Path(__file__).resolve().parents[1]
PARSERS = parsers()  # "" is the export
FENCE = re.compile(r"^```(\w*)\s*$")
SHELL = {"bash", "sh", "shell", "console", ""}
FLAG = re.compile(r"--[a-z][a-z0-9-]*(?![A-Za-z0-9_])")  # ours are lower-case; trtexec's --saveEngine is not
# other programs' flags (trtexec, polygraphy, tritonserver, pip, ...) are not ours to parse: a clause that names
# one of these programs before a flag is skipped from there on
OTHER_PROGRAMS = {"trtexec", "polygraphy", "tritonserver", "pip", "cmake", "docker", "nvcc", "python", "python3", "pytest"}
OTHER_PROGRAMS |= {"convert_hf_to_gguf.py", "fetch_triton.sh", "triton_demo.py", "bench_triton.py", "tritonclient", "venv"}
OTHER_PROGRAMS |= {"huggingface-cli"}
NOT_FLAGS = {"--imag"}  # cli/flags.py's example of a prefix the parser refuses


# ---------------------------------------------------------------------------------------------------------------
# where commands are shown


def doc_pages() -> list[Path]:
    """README.md, then the docs pages in the order README's Documentation section links them, then any other page."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Documentation", 1)[1]
    ordered = list(dict.fromkeys(ROOT / "docs" / name for name in re.findall(r"\(docs/(\w+\.md)\)", section)))
    rest = sorted(set((ROOT / "docs").glob("*.md")) - set(ordered))
    return [ROOT / "README.md", *ordered, *rest]


def shell_lines(text: str) -> list[tuple[int, str]]:
    """(line number, command line) of every fenced shell block, backslash continuations joined."""
    found, lang, pending, start = [], None, "", 0
    for number, line in enumerate(text.splitlines(), 1):
        fence = FENCE.match(line.strip())
        if lang is None:
            if fence:
                lang = fence.group(1)
            continue
        if line.strip() == "```":
            lang = None
            continue
        if lang not in SHELL:
            continue
        line = re.sub(r"^\s*\$ ", "", line)  # a console prompt
        if not pending:
            if not lang and not line.lstrip().startswith(PROG):
                continue  # a plain ``` block holds listings and output; only a line that starts with the command counts
            start = number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        found.append((start, pending + line))
        pending = ""
    return found


def words(line: str) -> list[str]:
    """The shell words of a line, comments dropped, `&&`, `;` and `|` as words of their own; `[--flag VALUE]`, the
    docs' way to show an optional part, is unbracketed."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split, lexer.commenters = True, "#"
    return [w.removeprefix("[").removesuffix("]") for w in lexer if w not in ("[", "]")]


def commands_in(line: str) -> list[list[str]]:
    """The argv (after the program name) of each flashvlm-export command in a shell line."""
    found = []
    command: list[str] = []
    for word in [*words(line), ";"]:
        if word in ("&&", "||", ";", "|", "&"):
            while command and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", command[0]):
                command.pop(0)  # VAR=value before the program
            if command[:1] == [PROG]:
                found.append(command[1:])
            elif command[:3] in (["python", "-m", "flashvlm_export.cli"], ["python3", "-m", "flashvlm_export.cli"]):
                found.append(command[3:])
            command = []
        else:
            command.append(word)
    return found


def doc_commands(pages=None) -> list[tuple[str, list[str]]]:
    """(where, argv) of every flashvlm-export command in the fenced shell blocks of the pages, in reading order."""
    return [
        (f"{page.name}:{number}", argv)
        for page in pages or doc_pages()
        for number, line in shell_lines(page.read_text())
        for argv in commands_in(line)
    ]


def inline_code(page: Path) -> list[str]:
    """Inline code spans of a page (outside fenced blocks)."""
    prose = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)
    return re.findall(r"`([^`\n]+)`", prose)


def help_texts() -> list[tuple[str, str]]:
    """(owner command, text) of every text a parser shows: description, epilog, usage, each flag's help."""
    texts = [("", line) for _, line in COMMANDS.values()]
    for word, parser in PARSERS.items():
        texts += [(word, t) for t in (parser.description, parser.epilog, parser.usage) if t]
        texts += [(word, a.help) for a in parser._actions if a.help]
        texts += [(word, g.description) for g in parser._action_groups if g.description]
    return texts


def package_strings(package: Path = ROOT / "flashvlm_export") -> list[tuple[str, str]]:
    """(file:line, text) of every string literal in the package that holds "--", an f-string's fields as {}. A literal
    that is one flag alone inside a list, a tuple or a default argument is an argv element of the program it goes to
    (tritonserver, polygraphy, cmake) and is left out, as is a lone `--flag=value` f-string; a flag passed on
    (`flag="--out-dir"`) is kept."""
    found = []
    for path in sorted(package.rglob("*.py")):
        tree = ast.parse(path.read_text())
        parent = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        for node in ast.walk(tree):
            if isinstance(node, ast.JoinedStr):
                text = "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
                if len(text.split()) == 1 and "=" in text:
                    continue  # `--backend-config=...` appended to another program's command line
            elif (
                isinstance(node, ast.Constant) and isinstance(node.value, str) and not isinstance(parent.get(node), ast.JoinedStr)
            ):
                text = node.value
                if len(text.split()) == 1 and isinstance(parent.get(node), ast.List | ast.Tuple | ast.arguments):
                    continue
            else:
                continue
            if "--" in text:
                found.append((f"{path.relative_to(package.parent)}:{node.lineno}", text))
    return found


# ---------------------------------------------------------------------------------------------------------------
# checking them with the CLI's parsers


def parse(argv: list[str]):
    """argv parsed by its command's own parser, without running it; required flags are not demanded (a shown command
    may be a fragment). A UsageError (an unknown flag, a bad value, an unknown --model) propagates."""
    word = argv[0] if argv and not argv[0].startswith("-") else ""
    if word not in PARSERS:
        raise UsageError(f"unknown command {word!r}")
    parser = PARSERS[word]
    saved = [(a, a.required) for a in parser._actions]
    for action, _ in saved:
        action.required = False
    try:
        return word, parser.parse_args(argv[bool(word) :])
    finally:
        for action, required in saved:
            action.required = required


def unknown_flags(text: str, owner: str | None) -> list[str]:
    """The flags `text` names that its command does not take. A clause (split at ; ( ) and sentence ends) speaks for
    `owner` (None: any of our commands), except where it shows a command line: `flashvlm-export run ...` or
    `run --answer ...` holds its flags (and each flag's one value) to that command, and another program's
    (`trtexec --onnx=...`, `polygraphy run --trt`, a venv made with --system-site-packages) flags are not ours."""
    ours = {word: set(p._option_string_actions) for word, p in PARSERS.items()}
    ours[None] = set().union(*ours.values())
    bad = []
    for clause in re.split(r"[;()]|(?<![.\s])[.:]\s", text):
        context, value_next = owner, False
        tokens = clause.replace("`", " ").replace("[", " ").replace("]", " ").split()
        for i, token in enumerate(tokens):
            following = tokens[i + 1] if i + 1 < len(tokens) else ""
            program = re.sub(r"'s$", "", Path(token).name.lower())
            if token in ("\\", "...", "|") or context == "other":
                continue  # a line continuation or an elision inside a command line; another program's clause
            if token.startswith("--"):
                value_next = "=" not in token
                for flag in FLAG.findall(token)[:1]:
                    if flag not in ours[context] and flag not in NOT_FLAGS:
                        bad.append(f"{flag} ({'any command' if context is None else context or 'export'})")
                continue
            if token == PROG:
                context, value_next = (following if following in COMMANDS else ""), following in COMMANDS
            elif program in OTHER_PROGRAMS:
                context = "other"  # the rest of the clause is that program's
            elif token in COMMANDS and following.startswith("--") and context != "other":
                context = token
            elif value_next:
                value_next = False  # the value of the flag before
            else:
                context = owner  # a word that is neither flag nor value: the command line has ended
    return bad


DOC_COMMANDS = doc_commands()


def test_the_docs_show_commands_of_every_kind():
    shown = {parse(argv)[0] for _, argv in DOC_COMMANDS}
    assert len(DOC_COMMANDS) > 40 and {"", "run", "parity", "gguf", "triton", "bench", "sidecar", "build-plugin"} <= shown


@pytest.mark.parametrize("where,argv", DOC_COMMANDS, ids=[where for where, _ in DOC_COMMANDS])
def test_each_documented_command_parses(where, argv):
    try:
        parse(argv)
    except UsageError as exc:
        pytest.fail(f"{where}: {PROG} {shlex.join(argv)}: {exc}")


def test_inline_commands_in_the_docs_name_only_their_commands_flags():
    bad = {
        f"{page.name}: `{span}`": flags
        for page in doc_pages()
        for span in inline_code(page)
        if span.startswith(PROG) or span.split()[:1] and span.split()[0] in COMMANDS
        for flags in [unknown_flags(span, "")]
        if flags
    }
    assert not bad, bad


def test_every_help_text_names_only_its_commands_flags():
    bad = {
        f"{owner or 'export'}: {text}": flags for owner, text in help_texts() for flags in [unknown_flags(text, None)] if flags
    }
    assert not bad, bad


def test_every_string_of_the_package_names_only_real_flags():
    """Error hints, log lines ("Done. Check it: flashvlm-export parity ..."), docstrings: a flag no command takes
    (a renamed one) is caught; a clause that names a command is held to that command's flags."""
    bad = {where: flags for where, text in package_strings() for flags in [unknown_flags(text, None)] if flags}
    assert not bad, bad


# the checkers catch what they are for: planted mistakes


def test_a_renamed_flag_in_a_shown_command_is_caught():
    (argv,) = commands_in("flashvlm-export run --graph g.onnx --answer --llm llama.cpp  # renamed: --llm-runtime")
    with pytest.raises(UsageError, match="--llm"):
        parse(argv)
    with pytest.raises(UsageError, match="--out"):
        parse(["run", "--graph", "g.onnx", "--out", "x.png"])  # a flag of another command
    with pytest.raises(UsageError, match="llava16"):
        parse(["--model", "llava16", "--budget", "64"])  # a model name the zoo does not have


def test_a_renamed_flag_in_a_help_text_or_hint_is_caught():
    assert unknown_flags("a GGUF for llama.cpp (run --answer --llm llama.cpp --gguf)", "gguf") == ["--llm (run)"]
    assert unknown_flags("write it with --layers N", "gguf") == []
    assert unknown_flags("the split's folder exists; choose another --out-dirs", None) == ["--out-dirs (any command)"]
    assert unknown_flags("then: flashvlm-export parity --heatmap x.png", None) == ["--heatmap (parity)"]
    assert unknown_flags("trtexec --saveEngine=x.plan --onnx=g.onnx", None) == []


def test_a_stale_flag_in_the_package_is_caught(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "m.py").write_text(
        'check_writable(paths, force, flag="--outdir")\n'  # a hint's flag, passed on: checked
        'raise UsageError(f"{path} exists; choose another --out-dirs")\n'
        'argv = ["tritonserver", "--model-repository", repo]\n'  # another program's argv: not ours
    )
    found = {where: unknown_flags(text, None) for where, text in package_strings(tmp_path / "pkg")}
    assert found == {"pkg/m.py:1": ["--outdir (any command)"], "pkg/m.py:2": ["--out-dirs (any command)"]}


def test_shell_lines_are_read_as_a_shell_reads_them(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "```bash\nA=1 flashvlm-export --model x \\\n    --budget 8   # comment --no-such\n"
        "pip install y && flashvlm-export run --graph 'a b.onnx' [--force]\n$ flashvlm-export bench\n```\n"
        "```python\nflashvlm-export --not-shell\n```\n"
    )
    assert [argv for _, argv in doc_commands([page])] == [
        ["--model", "x", "--budget", "8"],
        ["run", "--graph", "a b.onnx", "--force"],
        ["bench"],
    ]


# ---------------------------------------------------------------------------------------------------------------
# the docs run page after page: no refusal because an earlier command already wrote a file


def written(argv: list[str]) -> list[str]:
    """The paths a command writes and refuses to overwrite without --force, from its parsed flags and the CLI's own
    path rules (export/job.py plan_outputs, trt/engines.py, the sidecar's name); [] for commands that replace their
    own records (parity, bench) or write nothing."""
    word, args = parse(argv)
    if word == "":
        from flashvlm_export.cli.export import plan_export
        from flashvlm_export.trt.engines import EngineJob, EngineOptions

        _, _, outputs = plan_export(args)  # the export's own plan of what it writes
        paths = list(outputs.files)
        if args.engine:
            paths += EngineJob(EngineOptions(Path(args.engine_dir))).paths(outputs)
        return [os.path.normpath(p) for p in paths]
    if word == "run":
        return [os.path.normpath(p) for p in (args.heatmap, args.demo_image, args.demo_video) if p]
    if word in ("gguf", "triton"):
        return [os.path.normpath(args.out)]
    if word == "sidecar":
        from flashvlm_export.artifacts.sidecar import sidecar_path

        return [os.path.normpath(sidecar_path(Path(args.engine)))]
    return []


def collisions(commands: list[tuple[str, list[str]]]) -> list[str]:
    """Each command that would be refused because an earlier one (in reading order) wrote its path. A page that
    shows the same commands twice offers alternatives (README's CPU and CUDA set-up lines): only the first counts."""
    seen_on_page: dict[tuple[str, tuple[str, ...]], str] = {}
    owner: dict[str, str] = {}
    found = []
    for where, argv in commands:
        page = where.split(":")[0]
        key = (page, tuple(argv))
        if key in seen_on_page and seen_on_page[key] != where:
            continue
        seen_on_page.setdefault(key, where)
        paths, forced = written(argv), getattr(parse(argv)[1], "force", False)
        for path in paths if not forced else []:
            earlier = next((w for p, w in owner.items() if p == path or path.startswith(p + os.sep)), None)
            if earlier is not None:
                found.append(f"{where} writes {path}, which {earlier} wrote; pass --force or choose another path")
        for path in paths:
            owner.setdefault(path, where)
    return found


def test_the_docs_run_page_after_page_without_a_refusal():
    assert not collisions(DOC_COMMANDS), "\n".join(collisions(DOC_COMMANDS))


def test_a_planted_collision_between_pages_is_caught():
    readme = ("README.md:77", ["--model", "llava15-tiny", "--budget", "64", "--random-weights"])
    again = ("RUN.md:8", ["--model", "LLAVA15-tiny", "--budget", "64", "--random-weights"])  # the same graph
    assert collisions([readme, again]) and collisions([readme, again])[0].startswith(
        "RUN.md:8 writes graphs/llava15-tiny_b64.onnx"
    )
    forced = (again[0], [*again[1], "--force"])
    assert not collisions([readme, forced])
    assert collisions([readme, forced, ("HANDOFF.md:64", again[1])])  # a forced write is still a write
    split = ("BUDGETS.md:8", ["--model", "llava15-tiny", "--budget", "64,16", "--random-weights"])
    other = ("SPLIT.md:4", ["--model", "llava15-tiny", "--budget", "32,8", "--random-weights"])  # same folder, manifest
    assert collisions([split, other])
    heatmap = ("RUN.md:9", ["run", "--graph", "g.onnx", "--demo-image", "graphs/demo/demo.png", "--question", "Q"])
    assert collisions([heatmap, ("RUN.md:27", ["run", "--graph", "h.onnx", "--heatmap", "graphs/demo/demo.png"])])


# ---------------------------------------------------------------------------------------------------------------
# a refusal's hint names a flag that the same command then accepts


def _export_flags_apply(argv: list[str], line: str, tmp_path: Path) -> None:
    """Follow each flag the refusal suggests (a fresh path for a path flag): the export's own planning accepts it."""
    from flashvlm_export.export.job import plan_outputs
    from flashvlm_export.export.requests import export_requests

    for flag in set(FLAG.findall(line)) - {"--force"}:
        assert flag in PARSERS[""]._option_string_actions, line
        fresh = str(tmp_path / ("fresh.onnx" if flag == "--out" else "fresh"))
        _, args = parse([*argv, flag, fresh])
        _, requests = export_requests(args.model, args.budget, config=SelectorConfig(), selector_only=args.selector_only)
        try:
            plan_outputs(requests, Path(args.out_dir), args.out, args.split, args.fused)
        except UsageError as exc:
            pytest.fail(f"the refusal {line!r} suggests {flag}, which this export refuses: {exc}")


@pytest.mark.parametrize(
    "extra,planted",
    [
        (["--budget", "64,16"], "llava15-tiny_split/encoder.onnx"),  # a split: only --out-dir moves it
        (["--budget", "64"], "llava15-tiny_b64.onnx"),  # a default-named graph
        (["--budget", "64", "--out", "{d}/mine.onnx"], "mine.onnx"),  # a named graph
        (["--budget", "16", "--selector-only"], "llava15-tiny_selector_b16.onnx"),
    ],
    ids=["split", "default-name", "named", "selector-only"],
)
def test_an_export_collision_names_the_flag_that_moves_its_files(tmp_path, capsys, extra, planted):
    folder = tmp_path / "g"
    argv = ["--model", "llava15-tiny", "--random-weights", "--out-dir", str(folder), *[e.format(d=folder) for e in extra]]
    target = folder / planted
    target.parent.mkdir(parents=True)
    target.write_text("the user's")
    line = expect_one_line(capsys, argv, str(target), "--force")
    _export_flags_apply(argv, line, tmp_path)
    assert target.read_text() == "the user's"


def test_a_wrong_flag_in_a_refusal_is_caught(tmp_path):
    argv = ["--model", "llava15-tiny", "--random-weights", "--budget", "64,16", "--out-dir", str(tmp_path)]
    with pytest.raises(pytest.fail.Exception, match="suggests --out"):
        _export_flags_apply(argv, "x already exists; pass --force to overwrite it, or choose another --out", tmp_path)


@pytest.mark.parametrize(
    "argv",
    [
        ["gguf", "--model", "llava15-tiny", "--out", "{dir}/taken.gguf"],
        ["triton", "--manifest", "{dir}/none/manifest.json", "--out", "{dir}/taken"],
        ["--model", "llava15-tiny", "--random-weights", "--budget", "64,16", "--out-dir", "{dir}"],
    ],
    ids=["gguf", "triton", "split"],
)
def test_a_collision_hint_names_only_flags_its_command_takes(tmp_path, capsys, argv):
    (tmp_path / "taken").mkdir()  # a model repository
    for taken in ("taken.gguf", "llava15-tiny_split/manifest.json"):
        (tmp_path / taken).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / taken).write_text("the user's")
    argv = [a.format(dir=tmp_path) for a in argv]
    line = expect_one_line(capsys, argv, "already exists", "--force")
    word = argv[0] if not argv[0].startswith("-") else ""
    assert set(FLAG.findall(line)) <= set(PARSERS[word]._option_string_actions), line
