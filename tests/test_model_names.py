"""--model names: one resolver for every command that takes --model (export, parity, gguf, ...): any case
matches, and an unknown name gets the nearest zoo name in the same one line from every command. Command words
get their nearest command by the same rule (errors.nearest)."""

import difflib

import pytest

from flashvlm_export.cli.commands import COMMANDS, parsers
from flashvlm_export.models.registry import MODELS

from conftest import expect_one_line

# the commands whose parser has --model, with what else each needs to parse
REQUIRED = {"gguf": ["--out", "unused.gguf"]}
WITH_MODEL = {word: p for word, p in parsers().items() if "--model" in p._option_string_actions}


def argv_of(word: str, name: str) -> list[str]:
    return [word] * bool(word) + ["--model", name, *REQUIRED.get(word, [])]


def test_the_commands_that_take_model_are_found():
    assert {"", "parity", "gguf"} <= set(WITH_MODEL)  # the export is ""


@pytest.mark.parametrize("word", sorted(WITH_MODEL), ids=lambda w: w or "export")
@pytest.mark.parametrize("name", list(MODELS))
def test_a_model_name_matches_in_any_case(word, name):
    for spelling in (name.upper(), name.title(), name.swapcase()):
        args = WITH_MODEL[word].parse_args(argv_of(word, spelling)[bool(word) :])
        assert args.model == name, spelling  # the zoo's spelling goes on: file names, metadata


def typos(name: str) -> list[str]:
    """One edit from `name` (a letter dropped, a letter added), upper-cased."""
    cut = len(name) // 2
    return [(name[:cut] + name[cut + 1 :]).upper(), (name + "x").upper()]


@pytest.mark.parametrize("name", list(MODELS))
def test_an_unknown_model_suggests_its_nearest_name_from_every_command(capsys, name):
    for typo in typos(name):
        # premise, by difflib's own measure on the case-folded names: `name` is the nearest one to the typo
        ratio = {known: difflib.SequenceMatcher(None, typo.casefold(), known).ratio() for known in MODELS}
        assert max(ratio, key=ratio.get) == name, (typo, ratio)
        lines = {
            expect_one_line(capsys, argv_of(word, typo), f"unknown --model {typo!r}", f"did you mean --model {name}?")
            for word in WITH_MODEL
        }
        assert len(lines) == 1, lines  # the same line, whichever command was given the name


def test_a_name_far_from_every_model_lists_them_all(capsys):
    for word in WITH_MODEL:
        line = expect_one_line(capsys, argv_of(word, "xyzzy"), "unknown --model 'xyzzy'")
        assert all(name in line for name in MODELS), line


@pytest.mark.parametrize("word", list(COMMANDS))
def test_a_misspelt_command_word_gets_its_nearest_command_in_any_case(capsys, word):
    """Command words follow the same nearest-name rule (errors.nearest) as --model names."""
    for typo in (word.upper(), word[:-1], word + "x"):
        expect_one_line(capsys, [typo, "--help"], f"unknown command {typo!r}; did you mean {word}?")
