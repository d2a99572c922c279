"""Each benchmark's rule (evaluation/scoring.py) against planted predictions, no model.

Expected values are worked out by hand from the reference code, at the commits scoring.py names:
VLMEvalKit vlmeval/utils/matching_util.py (MC), LLaVA llava/eval/eval_pope.py (POPE), scripts/convert_gqa_for_eval.py
and GQA's eval.py (GQA), llava/eval/m4c_evaluator.py (TextVQA), llava/eval/model_vqa_mmbench.py (MMBench prompt).
"""

import pytest

from flashvlm_export import errors
from flashvlm_export.evaluation import scoring
from flashvlm_export.evaluation.questions import GQA, LAYOUTS, MMBENCH, MMSTAR, POPE, TEXTVQA, Question

MMBENCH_Q = Question(
    qid="1",
    question="What animal is in the picture?",
    answer="B",
    image=b"",
    options=(("A", "cat"), ("B", "dog"), ("C", "horse"), ("D", "bird")),
    hint="The picture was taken in a park.",
)
MMSTAR_Q = Question(
    qid="0",
    question=(
        "Which option describe the object relationship in the image correctly?\n"
        "Options: A: The suitcase is on the book., B: The suitcase is beneath the cat., "
        "C: The suitcase is beneath the bed., D: The suitcase is beneath the book."
    ),
    answer="B",
    image=b"",
)


def mc(layout, prediction):
    q = MMBENCH_Q if layout == MMBENCH else MMSTAR_Q
    r = scoring.rule(layout)
    return r.extract(q, prediction), r.score(q, prediction)


# ---------------------------------------------------------------------------------------------------------------------
# Prompts


def test_mmbench_prompt_is_llavas():
    # model_vqa_mmbench.py L86 hint + '\n' + question; L88 '\n' + option_char + '. ' + option; L99 the instruction
    assert scoring.rule(MMBENCH).prompt(MMBENCH_Q) == (
        "The picture was taken in a park.\nWhat animal is in the picture?\nA. cat\nB. dog\nC. horse\nD. bird\n"
        "Answer with the option's letter from the given choices directly."
    )
    # is_none: no hint (None, 'nan') -> the question alone
    for hint in (None, "nan"):
        q = Question("2", "Q?", "A", b"", options=(("A", "x"), ("B", "y")), hint=hint)
        assert (
            scoring.rule(MMBENCH).prompt(q) == "Q?\nA. x\nB. y\nAnswer with the option's letter from the given choices directly."
        )


def test_mmstar_prompt_is_lmms_evals():
    # lmms-eval mmstar_doc_to_text: question.strip() + post_prompt "\nAnswer with the option's letter ... directly" (no ".")
    assert scoring.rule(MMSTAR).prompt(MMSTAR_Q) == (
        MMSTAR_Q.question + "\nAnswer with the option's letter from the given choices directly"
    )


@pytest.mark.parametrize("layout", [POPE, GQA, TEXTVQA])
def test_short_answer_prompt(layout):
    # LLaVA docs/Evaluation.md "Short-answer": <question>\nAnswer the question using a single word or phrase.
    q = Question("1", "Is there a dog in the image?", "yes", b"")
    assert scoring.rule(layout).prompt(q) == "Is there a dog in the image?\nAnswer the question using a single word or phrase."


# ---------------------------------------------------------------------------------------------------------------------
# Multiple choice (can_infer_option, then can_infer_text)


@pytest.mark.parametrize("layout", [MMBENCH])
@pytest.mark.parametrize(
    "prediction",
    [
        "B",  # words ['B']: one choice letter, among the last four words (L52)
        "B.",  # '.' becomes a space (L40)
        "(B)",
        " B\n",  # stripped
        "The answer is B",  # words ['The', 'answer', 'is', 'B']: 'B' at index 3 > 4 - 5
        "The correct answer is **B**.",  # '*' and '.' become spaces
        "Answer is B, because C is wrong",  # two letters, but _VERBOSE_ANSWER_RE (L15) reads 'answer is B'
    ],
)
def test_mc_right_letter(layout, prediction):
    assert mc(layout, prediction) == ("B", 1.0)


def test_mc_option_text():
    # can_infer_text (L109-L119): 'dog' is the one option text in the reply, and the reply is short enough
    assert mc(MMBENCH, "dog") == ("B", 1.0)
    assert mc(MMBENCH, "A dog.") == ("A", 0.0)  # but a lone leading 'A' is read as the letter first (L52: index 0 > 2 - 5)


@pytest.mark.parametrize("layout", [MMBENCH, MMSTAR])
def test_mc_wrong(layout):
    assert mc(layout, "C") == ("C", 0.0)
    assert mc(layout, "(D)") == ("D", 0.0)


@pytest.mark.parametrize("layout", [MMBENCH])
@pytest.mark.parametrize(
    "prediction",
    [
        "",  # no letter, no option text
        "A or B",  # two choice letters (count 2, L45-L54), no 'answer is X', no single option text
        "I have no idea what this is about, sorry",  # unrelated
        "Cannot determine the answer",  # a refusal (reject_to_answer, L24): 'Z'
        "Z",  # no choice letter, a lone 'Z' (L54): 'Z'
        "B is the one because the animal on the left looks like it",  # 'B' too early (L52: index 0 > 12 - 5 fails)
    ],
)
def test_mc_malformed(layout, prediction):
    assert mc(layout, prediction) == (None, 0.0)


@pytest.mark.parametrize(
    ("prediction", "read", "score"),
    [
        # MMStar_eval (MMStar-Benchmark/MMStar eval/vlmeval/evaluate/mmstar.py): lower().strip(), '\n' -> ' ', then
        ("B", "B", 1.0),  # answer == predict[0]
        ("b. beneath the cat", "B", 1.0),  # predict[0]
        (" (B) beneath\n", "B", 1.0),  # predict[0] == '(' and answer == predict[1]
        ("Option B", "B", 1.0),  # predict[0:7] == 'option ' and answer == predict[7]
        ("The answer is B", "B", 1.0),  # predict[0:14] == 'the answer is ' and answer == predict[14]
        ("The correct answer is B", "T", 0.0),  # none of the four: predict[0] is 't'
        ("C", "C", 0.0),  # wrong letter
        ("", None, 0.0),  # predict[0] raises IndexError, caught: wrong (malformed)
        ("I think it is B", "I", 0.0),  # malformed for this rule: read as 'i'
    ],
)
def test_mmstar_is_its_authors_scorer(prediction, read, score):
    r = scoring.rule(MMSTAR)
    assert (r.extract(MMSTAR_Q, prediction), r.score(MMSTAR_Q, prediction)) == (read, score)


def test_mmstar_options_are_read_from_the_question():
    assert scoring.choices(MMSTAR_Q) == {
        "A": "The suitcase is on the book.",
        "B": "The suitcase is beneath the cat.",
        "C": "The suitcase is beneath the bed.",
        "D": "The suitcase is beneath the book.",
    }


# ---------------------------------------------------------------------------------------------------------------------
# POPE (eval_pope.py L13-L17: first sentence, commas removed, split on ' ', 'No'/'not'/'no' -> no, else yes)


@pytest.mark.parametrize(
    ("prediction", "read"),
    [
        ("Yes, there is", "yes"),  # words ['Yes', 'there', 'is']
        ("yes", "yes"),
        ("No.", "no"),  # first sentence 'No'
        ("No, there is no dog.", "no"),
        ("There is not a dog", "no"),  # 'not'
        ("Yes. There is no cat.", "yes"),  # only the first sentence counts
        ("", "yes"),  # nothing negative: yes
        ("NO", "yes"),  # case-sensitive words: 'NO' is none of 'No', 'not', 'no'
    ],
)
def test_pope_reading(prediction, read):
    q_yes = Question("1", "Is there a dog in the image?", "yes", b"")
    q_no = Question("2", "Is there a cat in the image?", "no", b"")
    pope = scoring.rule(POPE)
    assert pope.extract(q_yes, prediction) == read
    assert pope.score(q_yes, prediction) == float(read == "yes")
    assert pope.score(q_no, prediction) == float(read == "no")


# ---------------------------------------------------------------------------------------------------------------------
# GQA (convert_gqa_for_eval.py L14: rstrip('.').lower(); eval.py: predicted == gold)


def test_gqa_exact_match_after_normalisation():
    q = Question("1", "What color is the car?", "red", b"")
    gqa = scoring.rule(GQA)
    assert gqa.extract(q, "Red.") == "red"
    assert gqa.score(q, "Red.") == 1.0
    assert gqa.score(q, "red") == 1.0
    assert gqa.score(q, "a red") == 0.0  # no article removal in GQA
    assert gqa.score(q, "red car") == 0.0
    assert gqa.score(q, "blue") == 0.0


# ---------------------------------------------------------------------------------------------------------------------
# TextVQA (m4c_evaluator.py)


@pytest.mark.parametrize(
    ("raw", "processed"),
    [
        ("Two", "2"),  # NUMBER_MAP
        ("the dog", "dog"),  # ARTICLES dropped
        ("dont", "don't"),  # CONTRACTIONS
        ("Yes.", "yes"),  # PERIOD_STRIP: a period not before a digit goes
        ("3.5", "3.5"),  # ... a period before a digit stays
        ("1,000", "1000"),  # word_tokenize drops commas
        ("hello-world", "hello world"),  # '-' with no space beside it becomes a space
        ("The Dog's", "dog 's"),  # word_tokenize: "'s" -> " 's"; 'the' dropped
    ],
)
def test_evalai_processing(raw, processed):
    assert scoring.evalai_answer(raw) == processed


def test_textvqa_vqa_accuracy():
    textvqa = scoring.rule(TEXTVQA)

    def q(answers):
        return Question("1", "What is written?", tuple(answers), b"")

    # _compute_answer_scores (L242): over the 10 leave-one-out sets of 9, min(1, matches / 3), averaged (L244).
    # 4 humans said "stop": leaving out a "stop" leaves 3 -> 1; leaving out another leaves 4 -> 1: (4*1 + 6*1)/10 = 1.0
    assert textvqa.score(q(["stop"] * 4 + ["go"] * 6), "stop") == 1.0
    # 3 humans: leaving out a "stop" leaves 2 -> 2/3 (3 times); else 3 -> 1 (7 times): (3*2/3 + 7)/10 = 0.9
    assert textvqa.score(q(["stop"] * 3 + ["go"] * 7), "stop") == pytest.approx(0.9)
    # 2 humans: (2 * 1/3 + 8 * 2/3)/10 = 0.6
    assert textvqa.score(q(["stop"] * 2 + ["go"] * 8), "stop") == pytest.approx(0.6)
    # 1 human: leaving it out leaves 0 -> 0 (once); else 1 -> 1/3 (9 times): (0 + 9 * 1/3)/10 = 0.3
    assert textvqa.score(q(["stop"] + ["go"] * 9), "stop") == pytest.approx(0.3)
    # nobody: unique_answer_scores.get(pred, 0.0) (L253)
    assert textvqa.score(q(["go"] * 10), "stop") == 0.0
    # both sides are EvalAI-processed: "Two" -> "2", "the dog" -> "dog", "dont" -> "don't"
    assert textvqa.score(q(["2"] * 10), "Two") == 1.0
    assert textvqa.score(q(["dog"] * 10), "The dog.") == 1.0
    assert textvqa.score(q(["don't"] * 10), "dont") == 1.0
    assert textvqa.extract(q(["x"] * 10), "Two") == "2"


def test_textvqa_other_answer_counts():
    textvqa = scoring.rule(TEXTVQA)
    # one answer (a string): exact match of the processed texts
    assert textvqa.score(Question("1", "?", "Stop", b""), "stop.") == 1.0
    assert textvqa.score(Question("1", "?", "stop", b""), "go") == 0.0
    # five answers, three "stop": leaving out a "stop" leaves 2 -> 2/3 (3 times); else 3 -> 1 (2 times): (2 + 2)/5 = 0.8
    assert textvqa.score(Question("1", "?", ("stop",) * 3 + ("go",) * 2, b""), "stop") == pytest.approx(0.8)


# ---------------------------------------------------------------------------------------------------------------------
# Units, answer keys, lookup


def test_mmbench_circular_units():
    def q(qid, group, rotations=2):
        return Question(qid, "?", "A", b"", options=(("A", "x"), ("B", "y")), group=group, rotations=rotations)

    questions = [q("1", "g1"), q("1000001", "g1"), q("2", "g2"), q("1000002", "g2"), q("3", None, 1), q("4", None, 1)]
    scores = [1.0, 1.0, 1.0, 0.0, 1.0, 0.0]
    # eval_circular_group: a group is a hit only if every rotation is right (multiple_choice.py L424 `if g != p`)
    assert scoring.units(MMBENCH, questions, scores) == [1.0, 0.0, 1.0, 0.0]
    # a group with one of its two copies answered (a partial run, --limit) is no unit yet: not a hit on one copy
    assert scoring.units(MMBENCH, questions[:1] + questions[2:], scores[:1] + scores[2:]) == [0.0, 1.0, 0.0]
    # every other layout: one unit per question
    assert scoring.units(MMSTAR, questions, scores) == scores
    with pytest.raises(ValueError):
        scoring.units(MMBENCH, questions, scores[:-1])


def test_answer_key():
    assert scoring.answer_key(MMBENCH, MMBENCH_Q, "(B)") == scoring.answer_key(MMBENCH, MMBENCH_Q, "The answer is B") == "B"
    # malformed: the reply lower-cased, whitespace collapsed, so identical malformed replies agree
    assert scoring.answer_key(MMBENCH, MMBENCH_Q, "A  or\nB") == scoring.answer_key(MMBENCH, MMBENCH_Q, "a or b") == "a or b"
    assert scoring.answer_key(POPE, MMBENCH_Q, "No.") == "no"
    assert scoring.answer_key(TEXTVQA, MMBENCH_Q, "Two") == "2"


def test_rules_cover_every_layout_and_cite_sources():
    assert set(scoring.RULES) == set(LAYOUTS)
    for layout in LAYOUTS:
        assert scoring.rule(layout).layout == layout
        assert "/" in scoring.rule(layout).source and ".py" in scoring.rule(layout).source
    assert scoring.DEFAULT_MAX_NEW_TOKENS == 16


def test_unknown_layout_is_a_one_line_usage_error():
    with pytest.raises(errors.UsageError) as info:
        scoring.rule("mmbnech")
    message = str(info.value)
    assert "\n" not in message
    assert "'mmbnech'" in message and "did you mean 'mmbench'" in message
    assert all(layout in message for layout in LAYOUTS)
    with pytest.raises(errors.UsageError):
        scoring.units("vqav2", [], [])
