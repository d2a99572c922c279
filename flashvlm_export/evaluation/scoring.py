"""Each benchmark's own rule: the prompt its reference evaluation gives the model, how it reads the answer, its score.

Every rule follows a named public evaluation script (its `source`), read at these commits:
- haotian-liu/LLaVA c121f0432da27facab705978f83c4ada465e46fd (LLaVA-1.5's evaluation: prompts, POPE, GQA, TextVQA);
- open-compass/VLMEvalKit e8e78f05f3080fe28154f2130321f17951c3be94 (multiple-choice matching, CircularEval);
- EvolvingLMMs-Lab/lmms-eval 75571cfe0fa36ca5ec2e6aa2bb268f9d38295af3 (MMStar's prompt, TextVQA without OCR tokens);
- MMStar-Benchmark/MMStar 79e6d1cbab00576162fc8c878a4ad584f98b4868 (MMStar's own scorer, eval/vlmeval/evaluate/mmstar.py);
- GQA's official eval.py (gqadataset.org, distributed as a zip, not on GitHub).

MMBench's multiple choice is read the way VLMEvalKit's `exact_matching` policy reads it: its rule-based matcher and no
LLM judge, so an answer the matcher cannot place is wrong (VLMEvalKit, with no judge, scores it as option 'Z', i.e.
wrong). MMStar's is read by its authors' own scorer (a letter at the reply's start), stricter than VLMEvalKit's.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from flashvlm_export import errors
from flashvlm_export.evaluation.questions import GQA, LAYOUTS, MMBENCH, MMSTAR, POPE, TEXTVQA, Question

# A letter, yes/no or a short phrase is all an answer needs, and every rule reads the first answer (POPE its first
# sentence, GQA/TextVQA the whole short reply, multiple choice a letter in the last few words): longer generation only
# costs time. lmms-eval runs GQA with the same limit (lmms_eval/tasks/gqa/gqa.yaml: max_new_tokens: 16).
DEFAULT_MAX_NEW_TOKENS = 16

LETTER_INSTRUCTION = "Answer with the option's letter from the given choices directly."
SHORT_ANSWER_INSTRUCTION = "Answer the question using a single word or phrase."


@dataclass(frozen=True)
class Rule:
    """One benchmark's rule: `prompt(q)` the text given to the model (the image placeholder is added elsewhere),
    `extract(q, prediction)` the benchmark's reading of the answer (None: no option can be read, i.e. malformed),
    `score(q, prediction)` in [0, 1], and `source` the scripts it follows."""

    layout: str
    prompt: Callable[[Question], str]
    extract: Callable[[Question, str], str | None]
    score: Callable[[Question, str], float]
    source: str


# ---------------------------------------------------------------------------------------------------------------------
# Prompts


def _is_none(value: str | None) -> bool:
    """LLaVA llava/eval/model_vqa_mmbench.py `is_none`: None, NaN, 'nan', 'none' mean "no value". An empty string
    also counts: pandas.read_table, which LLaVA reads the TSV with, turns an empty cell into NaN."""
    return value is None or value.strip() == "" or value.lower() in ("nan", "none")


def mmbench_prompt(q: Question) -> str:
    """LLaVA llava/eval/model_vqa_mmbench.py `eval_model` (run by scripts/v1_5/eval/mmbench.sh with
    args.single_pred_prompt set): hint + '\\n' + question, each option as '\\nA. text', then the letter instruction."""
    text = q.question if _is_none(q.hint) else q.hint + "\n" + q.question
    for letter, option in q.options:
        text += "\n" + letter + ". " + option
    return text + "\n" + LETTER_INSTRUCTION


def mmstar_prompt(q: Question) -> str:
    """lmms-eval lmms_eval/tasks/mmstar/utils.py `mmstar_doc_to_text` with _default_template_yaml's default
    post_prompt: the question (its options inline) stripped, then '\\nAnswer with the option's letter from the given
    choices directly' -- lmms-eval's text has no final period (LLaVA-1.5 did not evaluate MMStar)."""
    question = q.question.strip().replace(" Please answer yes or no.", "")  # as mmstar_doc_to_text does
    return question + "\n" + LETTER_INSTRUCTION.rstrip(".")


def short_answer_prompt(q: Question) -> str:
    """LLaVA docs/Evaluation.md "Short-answer": '<question>\\nAnswer the question using a single word or phrase.', the
    text of LLaVA's question files read by llava/eval/model_vqa_loader.py for POPE and GQA (scripts/v1_5/eval/pope.sh,
    gqa.sh). TextVQA: LLaVA-1.5's file also lists OCR tokens ('Reference OCR token: ...', see
    llava/eval/eval_textvqa.py `prompt_processor`); this is lmms-eval's TextVQA default without them
    (lmms_eval/tasks/textvqa/_default_template_textvqa_yaml: ocr: false)."""
    return q.question + "\n" + SHORT_ANSWER_INSTRUCTION


# ---------------------------------------------------------------------------------------------------------------------
# Multiple choice: VLMEvalKit vlmeval/utils/matching_util.py `can_infer` = `can_infer_option`, else `can_infer_text`

_REFUSALS = (
    "Sorry, I can't help with images of people yet.",
    "I can't process this file.",
    "I'm sorry, but without the image provided",
    "Cannot determine the answer",
)
_VERBOSE_ANSWER = re.compile(r"(?i)(?:correct\s+)?answer\s+is\s+\**([ABCD])\**")  # matching_util._VERBOSE_ANSWER_RE
_MMSTAR_OPTION = re.compile(r"(?:^|,\s*)([A-Z]):\s*")  # "Options: A: text, B: text, ..." (Lin-Chen/MMStar's question)


def can_infer_option(answer: str, choices: dict[str, str]) -> str | None:
    """VLMEvalKit `can_infer_option`: the letter the answer names, 'Z' for a refusal, None when it names none.

    Brackets and punctuation ``.()[],:;!*#{}`` become spaces and the answer is split into words. Exactly one of the
    choice letters among the words: that letter, if it is among the last four words (so 'B is right because ...' is not
    read); no choice letter but a lone 'Z': 'Z'. Otherwise 'answer is X' / 'correct answer is **X**' anywhere (any case).
    Two letters ('A or B') name no option. A refusal ('Cannot determine the answer', ...) is 'Z'.
    Not followed: with the VERBOSE environment variable set, VLMEvalKit also rejects a long answer holding the word 'A'.
    """
    if "Failed to obtain answer via API" in answer:
        return None
    if any(refusal in answer for refusal in _REFUSALS):
        return "Z"
    answer_mod = answer
    for c in ".()[],:;!*#{}":
        answer_mod = answer_mod.replace(c, " ")
    words = [w.strip() for w in answer_mod.split()]
    named = [letter for letter in choices if letter in words]
    if len(named) == 1 and words.index(named[0]) > len(words) - 5:
        return named[0]
    if not named and "Z" in words:
        return "Z"
    match = _VERBOSE_ANSWER.search(answer)
    if match and match.group(1).upper() in choices:
        return match.group(1).upper()
    return None


def can_infer_text(answer: str, choices: dict[str, str]) -> str | None:
    """VLMEvalKit `can_infer_text`: the one option whose text (lower-cased) is in the answer (lower-cased); None when
    none or several are, or when the answer is over twice as long as all the options' texts together."""
    answer = answer.lower()
    if len(answer) > 2 * sum(len(text) for text in choices.values()):
        return None
    found = [letter for letter, text in choices.items() if text.lower() in answer]
    return found[0] if len(found) == 1 else None


def choices(q: Question) -> dict[str, str]:
    """The options by letter: MMBench's columns (q.options); MMStar's, read from 'Options: A: ..., B: ...' at the end
    of its question (VLMEvalKit's MMStar.tsv has them as columns A-D, `build_choices`). A question whose options
    cannot be read gets letters A-D with no text (MMStar's questions all have four options)."""
    if q.options:
        return dict(q.options)
    if "Options:" in q.question:
        parts = _MMSTAR_OPTION.split(q.question.rsplit("Options:", 1)[1].strip())
        found = {letter: text.strip() for letter, text in zip(parts[1::2], parts[2::2], strict=True)}
        if found:
            return found
    return dict.fromkeys("ABCD", "")


def extract_option(q: Question, prediction: str) -> str | None:
    """VLMEvalKit `can_infer` (vlmeval/dataset/utils/multiple_choice.py `extract_answer_from_item` under exact
    matching): the option letter, or None for a refusal ('Z') or an answer naming no single option (malformed).
    The reply is stripped first, as LLaVA strips its outputs (model_vqa_mmbench.py: `.strip()`)."""
    prediction, options = prediction.strip(), choices(q)
    letter = can_infer_option(prediction, options) or can_infer_text(prediction, options)
    return None if letter == "Z" else letter


def score_option(q: Question, prediction: str) -> float:
    """1.0 iff the letter read equals the answer's letter (VLMEvalKit `eval_vanilla`: opt == GT); malformed is wrong."""
    letter = extract_option(q, prediction)
    return float(letter is not None and letter == str(q.answer).strip())


# ---------------------------------------------------------------------------------------------------------------------
# MMStar: its authors' own scorer, MMStar-Benchmark/MMStar eval/vlmeval/evaluate/mmstar.py `MMStar_eval`
# (commit 79e6d1cbab00576162fc8c878a4ad584f98b4868): the final score is the right answers over all 1,500 questions

_MMSTAR_PREFIXES = ("(", "option ", "the answer is ")  # MMStar_eval: predict[0] == '(', [0:7] == 'option ', [0:14] == ...


def extract_mmstar(q: Question, prediction: str) -> str | None:
    """MMStar_eval's reading: the reply lower-cased, stripped, newlines as spaces; the letter is its first character, or
    the one right after '(', 'option ' or 'the answer is ' (upper-cased here). None for an empty reply (an IndexError
    there, caught: wrong). Any other reply is read as its first character: 'The cat (B)' reads 't', wrong."""
    reply = prediction.lower().strip().replace("\n", " ")
    for prefix in _MMSTAR_PREFIXES:
        if reply.startswith(prefix) and len(reply) > len(prefix):
            return reply[len(prefix)].upper()
    return reply[0].upper() if reply else None


def score_mmstar(q: Question, prediction: str) -> float:
    """MMStar_eval: 1 when the answer's letter (lower-cased) is the character read, else 0."""
    letter = extract_mmstar(q, prediction)
    return float(letter is not None and letter.lower() == str(q.answer).lower().strip())


# ---------------------------------------------------------------------------------------------------------------------
# POPE: LLaVA llava/eval/eval_pope.py `eval_pope`


def extract_pope(q: Question, prediction: str) -> str:
    """LLaVA eval_pope.py: the first sentence (up to the first '.'), commas removed, split on spaces; 'No', 'not' or
    'no' among the words is "no", anything else (an empty reply, 'NO') is "yes". Never None: POPE has no malformed."""
    text = prediction.strip()  # model_vqa_loader.py strips the decoded output
    if text.find(".") != -1:
        text = text.split(".")[0]
    words = text.replace(",", "").split(" ")
    return "no" if "No" in words or "not" in words or "no" in words else "yes"


def score_pope(q: Question, prediction: str) -> float:
    """eval_pope.py accuracy: the label 'no' is negative, any other label positive; 1.0 when the reading agrees."""
    label = "no" if str(q.answer).strip().lower() == "no" else "yes"
    return float(extract_pope(q, prediction) == label)


# ---------------------------------------------------------------------------------------------------------------------
# GQA: LLaVA scripts/convert_gqa_for_eval.py, then GQA's official eval.py


def extract_gqa(q: Question, prediction: str) -> str:
    """LLaVA scripts/convert_gqa_for_eval.py: `res['text'].rstrip('.').lower()` of the stripped output."""
    return prediction.strip().rstrip(".").lower()


def score_gqa(q: Question, prediction: str) -> float:
    """GQA eval.py: `correct = (predicted == gold)`, an exact string match with the label."""
    return float(extract_gqa(q, prediction) == str(q.answer))


# ---------------------------------------------------------------------------------------------------------------------
# TextVQA: LLaVA llava/eval/m4c_evaluator.py (from facebookresearch/mmf), run by llava/eval/eval_textvqa.py

_CONTRACTIONS = dict(
    pair.split(":")
    for pair in """
aint:ain't arent:aren't cant:can't couldve:could've couldnt:couldn't couldn'tve:couldn't've
couldnt've:couldn't've didnt:didn't doesnt:doesn't dont:don't hadnt:hadn't hadnt've:hadn't've
hadn'tve:hadn't've hasnt:hasn't havent:haven't hed:he'd hed've:he'd've he'dve:he'd've hes:he's howd:how'd
howll:how'll hows:how's Id've:I'd've I'dve:I'd've Im:I'm Ive:I've isnt:isn't itd:it'd itd've:it'd've
it'dve:it'd've itll:it'll let's:let's maam:ma'am mightnt:mightn't mightnt've:mightn't've
mightn'tve:mightn't've mightve:might've mustnt:mustn't mustve:must've neednt:needn't notve:not've
oclock:o'clock oughtnt:oughtn't ow's'at:'ow's'at 'ows'at:'ow's'at 'ow'sat:'ow's'at shant:shan't
shed've:she'd've she'dve:she'd've she's:she's shouldve:should've shouldnt:shouldn't shouldnt've:shouldn't've
shouldn'tve:shouldn't've somebody'd:somebodyd somebodyd've:somebody'd've somebody'dve:somebody'd've
somebodyll:somebody'll somebodys:somebody's someoned:someone'd someoned've:someone'd've
someone'dve:someone'd've someonell:someone'll someones:someone's somethingd:something'd
somethingd've:something'd've something'dve:something'd've somethingll:something'll thats:that's thered:there'd
thered've:there'd've there'dve:there'd've therere:there're theres:there's theyd:they'd theyd've:they'd've
they'dve:they'd've theyll:they'll theyre:they're theyve:they've twas:'twas wasnt:wasn't wed've:we'd've
we'dve:we'd've weve:we've werent:weren't whatll:what'll whatre:what're whats:what's whatve:what've
whens:when's whered:where'd wheres:where's whereve:where've whod:who'd whod've:who'd've who'dve:who'd've
wholl:who'll whos:who's whove:who've whyll:why'll whyre:why're whys:why's wont:won't wouldve:would've
wouldnt:wouldn't wouldnt've:wouldn't've wouldn'tve:wouldn't've yall:y'all yall'll:y'all'll y'allll:y'all'll
yall'd've:y'all'd've y'alld've:y'all'd've y'all'dve:y'all'd've youd:you'd youd've:you'd've you'dve:you'd've
youll:you'll youre:you're youve:you've
""".split()
)  # EvalAIAnswerProcessor.CONTRACTIONS, all 120 entries as written there ("somebody'd" -> "somebodyd" included)
_NUMBERS = dict(
    zip("none zero one two three four five six seven eight nine ten".split(), "0 0 1 2 3 4 5 6 7 8 9 10".split(), strict=True)
)
_ARTICLES = ("a", "an", "the")
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")  # sic: "(?!<=" is a lookahead, as in the source
_COMMA_STRIP = re.compile(r"(?<=\d)(\,)+(?=\d)")
_PUNCTUATIONS = (";", r"/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")


def _process_punctuation(text: str) -> str:
    """EvalAIAnswerProcessor.process_punctuation: a mark next to a space (or any text with a digit,digit comma) is
    removed, else it becomes a space; then periods not before a digit go (at most 32: the source passes re.UNICODE
    as `sub`'s count)."""
    out = text
    for p in _PUNCTUATIONS:
        if (p + " " in text or " " + p in text) or re.search(_COMMA_STRIP, text) is not None:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_STRIP.sub("", out, count=re.UNICODE)


def _process_digit_article(text: str) -> str:
    """EvalAIAnswerProcessor.process_digit_article: number words to digits, articles dropped, contractions restored."""
    words = [_NUMBERS.get(word, word) for word in text.lower().split()]
    return " ".join(_CONTRACTIONS.get(word, word) for word in words if word not in _ARTICLES)


def evalai_answer(answer: str) -> str:
    """m4c_evaluator.py EvalAIAnswerProcessor.__call__: word_tokenize (lower-case, drop ',' and '?', "'s" -> " 's"),
    newlines and tabs to spaces, punctuation, then digits/articles/contractions: "Two" -> "2", "the dog" -> "dog",
    "dont" -> "don't"."""
    text = answer.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return _process_digit_article(_process_punctuation(text))


def extract_textvqa(q: Question, prediction: str) -> str:
    """The EvalAI-processed answer, as TextVQAAccuracyEvaluator.eval_pred_list reads the prediction."""
    return evalai_answer(prediction)


def vqa_accuracy(prediction: str, human_answers: tuple[str, ...]) -> float:
    """m4c_evaluator.py TextVQAAccuracyEvaluator._compute_answer_scores + eval_pred_list: for each way of leaving one
    human answer out, min(1, (matches among the others) / 3), averaged. With ten answers: 1 match 0.3, 2 matches 0.6,
    3 matches 0.9, 4 or more 1.0. The source asserts ten answers; here any number is used the same way (so with fewer
    than ten fewer matches are needed per leave-one-out), and a single answer, where leaving it out leaves nothing to
    match, is scored as an exact match of the processed texts."""
    answers = [evalai_answer(a) for a in human_answers]
    if len(answers) == 1:
        return float(prediction == answers[0])
    matches = answers.count(prediction)
    accs = [min(1.0, (matches - (gt == prediction)) / 3) for gt in answers]
    return sum(accs) / len(accs)


def score_textvqa(q: Question, prediction: str) -> float:
    """VQA accuracy of the processed prediction against q.answer's human answers (a lone string is one answer)."""
    human = (q.answer,) if isinstance(q.answer, str) else tuple(q.answer)
    return vqa_accuracy(extract_textvqa(q, prediction), human)


# ---------------------------------------------------------------------------------------------------------------------
# The rules, by layout

_MC_SOURCE = (
    "open-compass/VLMEvalKit vlmeval/utils/matching_util.py can_infer (can_infer_option, can_infer_text), "
    "vlmeval/dataset/utils/multiple_choice.py (exact matching, no LLM judge)"
)
RULES: dict[str, Rule] = {
    MMSTAR: Rule(
        MMSTAR,
        mmstar_prompt,
        extract_mmstar,
        score_mmstar,
        "prompt: EvolvingLMMs-Lab/lmms-eval lmms_eval/tasks/mmstar/utils.py mmstar_doc_to_text + _default_template_yaml; "
        "answer and score: MMStar-Benchmark/MMStar eval/vlmeval/evaluate/mmstar.py MMStar_eval (the authors' own)",
    ),
    MMBENCH: Rule(
        MMBENCH,
        mmbench_prompt,
        extract_option,
        score_option,
        "prompt: haotian-liu/LLaVA llava/eval/model_vqa_mmbench.py eval_model (args.single_pred_prompt set); answer: "
        + _MC_SOURCE
        + "; units: mcq_circular_eval (CircularEval, index % 1e6)",
    ),
    POPE: Rule(
        POPE,
        short_answer_prompt,
        extract_pope,
        score_pope,
        "prompt: haotian-liu/LLaVA docs/Evaluation.md (short answer), llava/eval/model_vqa_loader.py; "
        "answer and score: llava/eval/eval_pope.py eval_pope",
    ),
    GQA: Rule(
        GQA,
        short_answer_prompt,
        extract_gqa,
        score_gqa,
        "prompt: haotian-liu/LLaVA docs/Evaluation.md (short answer), llava/eval/model_vqa_loader.py; "
        "answer: scripts/convert_gqa_for_eval.py; score: GQA's official eval.py (predicted == gold)",
    ),
    TEXTVQA: Rule(
        TEXTVQA,
        short_answer_prompt,
        extract_textvqa,
        score_textvqa,
        "prompt: EvolvingLMMs-Lab/lmms-eval lmms_eval/tasks/textvqa (no OCR tokens), haotian-liu/LLaVA docs/Evaluation.md; "
        "answer and score: haotian-liu/LLaVA llava/eval/m4c_evaluator.py EvalAIAnswerProcessor, TextVQAAccuracyEvaluator",
    ),
}


def rule(layout: str) -> Rule:
    """The rule of a layout; an unknown one is a UsageError naming it and the layouts."""
    if layout in RULES:
        return RULES[layout]
    guess = errors.nearest(str(layout), LAYOUTS)
    hint = f" (did you mean {guess!r}?)" if guess else ""
    raise errors.UsageError(f"unknown benchmark layout {layout!r}{hint}; the layouts are: {', '.join(LAYOUTS)}")


def units(layout: str, questions: list[Question], scores: list[float]) -> list[float]:
    """The benchmark's units of accuracy, in order of first appearance. MMBench: CircularEval (VLMEvalKit
    vlmeval/dataset/utils/multiple_choice.py mcq_circular_eval, eval_circular_group: a question's rotated copies share
    index % 1e6, here q.group) -- a group scores 1 only if every copy scored 1, and counts only once all its copies
    (q.rotations) are among `questions` (a partial run or --limit leaves an incomplete group out); a question with no
    group is its own unit. Every other layout: one unit per question, its score."""
    rule(layout)
    if len(questions) != len(scores):
        raise ValueError(f"units: {len(questions)} questions but {len(scores)} scores")
    if layout != MMBENCH:
        return list(scores)
    groups: dict[object, list[float]] = {}
    size: dict[object, int] = {}
    for i, (q, s) in enumerate(zip(questions, scores, strict=True)):
        key = ("group", q.group) if q.group is not None else ("single", i)
        groups.setdefault(key, []).append(s)
        size[key] = q.rotations if q.group is not None else 1
    return [float(all(s == 1.0 for s in group)) for key, group in groups.items() if len(group) == size[key]]


def answer_key(layout: str, q: Question, prediction: str) -> str:
    """What `eval` compares for agreement with the K = N answer: the benchmark's reading of the answer, or, where it
    reads none (malformed), the reply lower-cased with whitespace collapsed, so two identical malformed replies agree."""
    read = rule(layout).extract(q, prediction)
    return read if read is not None else " ".join(prediction.lower().split())
