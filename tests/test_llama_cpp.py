"""The hand-off to llama.cpp: the kept visual_embeds as a batch of embeddings, the text as tokens, per model family.

The proof (issue 24, item 3), tiny random models, CPU, fp32 weights and fp32 KV cache: llama.cpp's logits for every
row of the prompt equal transformers' (runtime/answer.llm_input + the family's LLM_CLASS) on the same weights (the
GGUF is written from that very model), the same embedding rows and the same positions, at K = N and at K < N.
The rows are the model's own projected image features P(X) of the demo picture, the kept set a fixed scattered
subset in ascending order (which tokens a graph keeps is proven elsewhere; here only what a runtime does with them).

Bound: max |logit difference| <= TOL_REL = 1e-5 of the largest |logit|. Measured (this CPU, llama-cpp-python 0.3.36,
both families, K = N and K = 64): honest 3.5e-7 .. 4.5e-7; an embedding row off by one 2.8e-3 .. 0.72, two positions
exchanged 0.29 .. 0.46; the fault tests ask for > 100 x the bound. Both sides are fp32 with the same weights (and
llama.cpp runs an fp32 KV cache without flash attention, whose CPU kernel rounds: 7e-3 with it); they differ in
kernel order only (ggml's matmul, softmax and RMSNorm vs torch's; three batches vs one forward), the last bits.

The same bound for LLaVA-NeXT (llava-next-tiny, llava-next-mistral-tiny: arch llama) on the rows laid out as run lays
them out (base, unpadded grid, image_newline rows), K = N and K = 160: honest 3.4e-7 .. 4.2e-7, a kept row off by one
2.5e-2 .. 3.9e-2; and for a Qwen2.5-VL clip (4 frames, 2 groups, N = 512; K = N and K = 64): honest 3.9e-7 .. 5.2e-7,
the two groups' positions exchanged (in llama.cpp's order) 1.37 .. 1.40.

The same bound for the Qwen3 generation (qwen3-vl-tiny: arch qwen3vl, each kept row with its 3 DeepStack rows appended;
qwen3.5-tiny: arch qwen35, 3 Gated DeltaNet layers and 1 gated full-attention layer), K = N and K = 64: honest 4.2e-7 ..
4.3e-7 and 3.3e-7 .. 3.4e-7; two layers' DeepStack rows exchanged 0.51 .. 0.60, a row off by one 1.1e-2 .. 0.51, two
positions exchanged 0.24 .. 0.43. Both architectures read the GGUF's RMSNorm epsilon (src/models/qwen3vl.cpp line 6,
src/models/qwen35.cpp line 5 of llama-cpp-python 0.3.36's vendor/llama.cpp), so their reference is the model as it ships.

The reference those checks run has llama.cpp's RMSNorm epsilon: 0 for arch qwen2vl, whose loader ignores the GGUF's
(test_llama_cpps_rms_epsilon_is_the_ggufs_for_llama_and_0_for_qwen2vl), the model's own 1e-6 for arch llama. Against
the model as it ships (its own 1e-6) Qwen's logits are held to EPSILON_TOL_REL = 3e-3 instead. Why that much: RMSNorm
divides by sqrt(mean square + epsilon), and the tiny models' hidden rows are ~0.02 (mean square ~4e-4), so 1e-6 moves
every norm's scale by ~1e-6 / (2 * 4e-4) = 1.25e-3; measured at the logits (this CPU, llama.cpp against the unmodified
model, and transformers at 1e-6 against transformers at 0 alike): 1.42e-3 .. 1.49e-3 for the image at K = N and K = 64
and the clip at K = N and K = 64, i.e. ~150x TOL_REL. The bound is 2x that. Two positions exchanged still move the logits > 10x it (0.29);
an embedding row off by one (2.8e-3 at least) may not, which is why the tight check above runs the adjusted reference.
"""

from __future__ import annotations

import contextlib
import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from flashvlm_export.models.registry import get_spec

FAMILIES = ["llava15-tiny", "qwen2.5-vl-tiny", "qwen3-vl-tiny", "qwen3.5-tiny"]
WITH_POSITIONS = [name for name in FAMILIES if get_spec(name).has_positions]  # (t, h, w) rotary positions
QUESTION = "What is on the table?"
K_PRUNED = 64
TOL_REL = 1e-5  # of the largest |logit|: 20x the largest honest gap measured (module docstring)
EPSILON_TOL_REL = (
    3e-3  # against the unmodified model where llama.cpp runs another RMSNorm epsilon: 2x the measured gap (docstring)
)

try:
    import llama_cpp.llama_cpp  # noqa: F401

    NO_LLAMA = None
except Exception as exc:  # ImportError, or an OSError from a shared library that would not load
    NO_LLAMA = f"llama-cpp-python is not importable ({type(exc).__name__}: {exc}); .ci/run builds it (pip install -e '.[llama]')"
try:
    import gguf  # noqa: F401

    NO_GGUF = None
except ImportError as exc:
    NO_GGUF = f"the gguf package is not installed ({exc}); pip install -e '.[llama]'"

needs_llama = pytest.mark.skipif(NO_LLAMA is not None or NO_GGUF is not None, reason=NO_LLAMA or NO_GGUF or "")
needs_gguf = pytest.mark.skipif(NO_GGUF is not None, reason=NO_GGUF or "")


def _gap(ours: np.ndarray, theirs: np.ndarray) -> float:
    """max |difference| relative to the largest |logit| of the reference."""
    return float(np.abs(ours - theirs).max() / np.abs(theirs).max())


@pytest.fixture(scope="module", params=FAMILIES)
def side(request, tmp_path_factory):
    """One family: its random LLM (seed 0, the graph's), the GGUF written from it, the demo picture's P(X) rows."""
    from flashvlm_export.llm.gguf_file import llm_weights, write_gguf
    from flashvlm_export.models.adapter import get_parts
    from flashvlm_export.models.positions import token_positions
    from flashvlm_export.models.prompt import prompt_token_ids
    from flashvlm_export.models.weights import WeightsSource
    from flashvlm_export.runtime.answer import build_llm
    from flashvlm_export.runtime.image import demo_picture, prepare_image
    from flashvlm_export.runtime.llama_cpp import read_gguf
    from flashvlm_export.runtime.tokenizer import stand_in_tokenizer

    if NO_GGUF:
        pytest.skip(NO_GGUF)
    spec = get_spec(request.param)
    parts = get_parts(spec, WeightsSource(seed=0), with_embeddings=True)
    llm = build_llm(spec, parts, None, 0, torch.device("cpu"))
    folder = tmp_path_factory.mktemp("gguf")
    path = write_gguf(folder / f"{spec.name}.gguf", spec, llm.config.text_config, llm_weights(llm))
    picture = folder / "demo.png"
    demo_picture().save(picture)
    features = parts.reference_features(prepare_image(picture, spec).pixel_values)  # X, a, P(X)[, DeepStack (1, L, N, Dl)]
    info = read_gguf(path)
    llama_eps, own_eps = _run_llama_cpps_epsilon(llm, info)
    tokenizer = stand_in_tokenizer(spec)
    n = spec.n_tokens
    kept = np.sort(np.random.default_rng(0).choice(n - 1, K_PRUNED, replace=False))  # < n - 1: a next row exists
    return SimpleNamespace(
        spec=spec, llm=llm, info=info, llama_eps=llama_eps, own_eps=own_eps, rows=features[2][0], positions=token_positions(spec), tokenizer=tokenizer,
        ids=prompt_token_ids(tokenizer, QUESTION, spec), keep={n: np.arange(n), K_PRUNED: kept},
        deepstack=features[3][0] if len(features) > 3 else None,
    )  # fmt: skip


def _run_llama_cpps_epsilon(llm, info) -> tuple[float | None, list]:
    """Set every RMSNorm of the reference to the epsilon llama.cpp runs (see test_llama_cpps_rms_epsilon...): returns
    that epsilon and each module's own, for the check against the model as it ships (_unmodified)."""
    own = [(module, module.variance_epsilon) for module in llm.modules() if hasattr(module, "variance_epsilon")]
    if NO_LLAMA is not None:
        return None, own
    from flashvlm_export.runtime.llama_cpp import LlamaCppLLM

    with LlamaCppLLM(info, n_ctx=16) as probe:
        llama_eps = probe.rms_eps
    for module, _ in own:
        module.variance_epsilon = llama_eps
    return llama_eps, own


@contextlib.contextmanager
def _unmodified(s):
    """The reference as transformers ships it: every RMSNorm back at its own epsilon, llama.cpp's again after."""
    changed = [(module, module.variance_epsilon) for module, _ in s.own_eps]
    for module, eps in s.own_eps:
        module.variance_epsilon = eps
    try:
        yield
    finally:
        for module, eps in changed:
            module.variance_epsilon = eps


def _transformers_logits(s, k) -> np.ndarray:
    """The family's LLM on the honest kept rows at budget k: runtime/answer.llm_input, its prefill arguments included
    (Qwen3-VL: the DeepStack rows through transformers' own path)."""
    from flashvlm_export.runtime.answer import llm_input

    idx = torch.from_numpy(s.keep[k])
    kept = s.positions[idx] if s.spec.has_positions else None
    inputs = llm_input(s.llm.get_input_embeddings(), s.ids, s.spec, s.rows[idx], kept, _deepstack(s, k))
    with torch.no_grad():
        return (
            s.llm(inputs_embeds=inputs.inputs_embeds, position_ids=inputs.position_ids, **(inputs.prefill or {}))
            .logits[0]
            .numpy()
        )


def _deepstack(s, k):
    """The kept rows' DeepStack rows (L, K, Dl) at budget k (Qwen3-VL), else None."""
    return None if s.deepstack is None else s.deepstack[:, torch.from_numpy(s.keep[k])].clone()


def _prefill(info, prompt) -> np.ndarray:
    from flashvlm_export.runtime.llama_cpp import LlamaCppLLM

    with LlamaCppLLM(info, n_ctx=prompt.length + 64) as llm:
        return llm.prefill(prompt, all_logits=True)


def _llama_logits(s, rows, positions, deepstack=None) -> np.ndarray:
    from flashvlm_export.runtime.llama_cpp import llama_cpp_prompt

    return _prefill(s.info, llama_cpp_prompt(s.ids, s.spec, rows, positions, deepstack=deepstack))


def _honest(s, k):
    """The kept rows at budget k, their (t, h, w) positions (M-RoPE families) and DeepStack rows (Qwen3-VL)."""
    idx = torch.from_numpy(s.keep[k])
    return s.rows[idx].clone(), (s.positions[idx].clone() if s.spec.has_positions else None), _deepstack(s, k)


# ---------------------------------------------------------------- the prompt's batches (no llama.cpp needed)


@pytest.mark.parametrize("name", FAMILIES)
def test_the_prompt_is_tokens_then_the_kept_rows_then_tokens_at_the_transformers_paths_positions(name):
    """Same positions as runtime/answer.llm_input: Qwen's (3, L) rows per batch (4 axes for the rows, the 4th 0),
    LLaVA's 0..L-1; the first generated token at the unpruned next position (Qwen) or at L (LLaVA)."""
    from flashvlm_export.models.positions import token_positions
    from flashvlm_export.models.prompt import prompt_token_ids
    from flashvlm_export.runtime.answer import image_position, llm_input
    from flashvlm_export.runtime.llama_cpp import llama_cpp_prompt
    from flashvlm_export.runtime.tokenizer import stand_in_tokenizer

    spec = get_spec(name)
    ids = prompt_token_ids(stand_in_tokenizer(spec), QUESTION, spec)
    idx = torch.tensor([0, 5, 17, 40, spec.n_tokens - 1])
    rows = torch.randn(len(idx), spec.text_hidden)
    kept = token_positions(spec)[idx] if spec.has_positions else None
    ds = torch.randn(spec.deepstack_layers, len(idx), spec.text_hidden) if spec.deepstack_layers else None
    prompt = llama_cpp_prompt(ids, spec, rows, kept, deepstack=ds)
    p = image_position(ids, spec.image_token_index)
    head, image, tail = prompt.segments
    assert head.token_ids.tolist() == ids[:p] and tail.token_ids.tolist() == ids[p + 1 :]
    wide = rows if ds is None else torch.cat([rows, *ds], dim=1)  # Qwen3-VL: each row, then its L DeepStack rows
    assert np.array_equal(image.embeds, wide.numpy())
    assert prompt.length == len(ids) - 1 + len(idx)
    ours = np.concatenate([head.positions[0], image.positions[0], tail.positions[0]])
    theirs = llm_input(torch.nn.Embedding(spec.text["vocab_size"], spec.text_hidden), ids, spec, rows, kept, ds)
    if spec.has_positions:
        full = theirs.position_ids[:, 0].numpy()  # (3, L)
        assert np.array_equal(ours, full[0])
        assert np.array_equal(image.positions[:3], full[:, p : p + len(idx)]) and not image.positions[3].any()
        assert prompt.next_position == theirs.next_position
    else:
        assert theirs.position_ids is None and np.array_equal(ours, np.arange(prompt.length))
        assert prompt.next_position == prompt.length


# ---------------------------------------------------------------- the hand-off proof


@needs_llama
def test_llama_cpps_rms_epsilon_is_the_ggufs_for_llama_and_0_for_qwen2vl(side):
    """A pinned llama.cpp finding: llama-cpp-python 0.3.36's qwen2vl loader reads no
    attention.layer_norm_rms_epsilon (src/models/qwen2vl.cpp load_arch_hparams reads only the rope sections) and
    runs RMSNorm with epsilon 0; arch llama reads it. On the tiny models (embeddings ~0.02, so mean square ~4e-4)
    epsilon 1e-6 vs 0 moves logits by ~1.5e-3 of the largest, ~150x the bound (module docstring), so the reference runs llama.cpp's
    epsilon (the fixture sets it). When a release reads the key, this test fails: drop the adjustment. qwen3vl and
    qwen35 read it (src/models/qwen3vl.cpp, src/models/qwen35.cpp load_arch_hparams)."""
    assert side.info.rms_eps == pytest.approx(1e-6)  # what the GGUF records: the model's own
    assert side.llama_eps == (0.0 if side.info.arch == "qwen2vl" else pytest.approx(1e-6))


@needs_llama
@pytest.mark.parametrize("k", ["N", K_PRUNED])
def test_llama_cpp_logits_with_the_kept_embeddings_equal_transformers(side, k):
    k = side.spec.n_tokens if k == "N" else k
    rows, positions, ds = _honest(side, k)
    ours, theirs = _llama_logits(side, rows, positions, ds), _transformers_logits(side, k)
    assert ours.shape == theirs.shape == (len(side.ids) - 1 + k, side.spec.text["vocab_size"])
    assert _gap(ours, theirs) <= TOL_REL, _gap(ours, theirs)


def _epsilon_bound(s) -> float:
    """The bound against the unmodified model: TOL_REL where llama.cpp runs the model's own epsilon (arch llama), else
    EPSILON_TOL_REL (module docstring: qwen2vl runs 0)."""
    own = s.llm.config.text_config.rms_norm_eps
    return TOL_REL if s.llama_eps == pytest.approx(own) else EPSILON_TOL_REL


@needs_llama
@pytest.mark.parametrize("k", ["N", K_PRUNED])
def test_llama_cpp_logits_equal_the_unmodified_transformers_model_within_the_epsilons_bound(side, k):
    """Against the model as transformers ships it (its RMSNorm epsilon, not llama.cpp's): what a user of both sees.
    Within TOL_REL where llama.cpp runs that epsilon; where it does not, above TOL_REL (the epsilon is what moves them,
    so the tight check above needs the adjusted reference) and within EPSILON_TOL_REL."""
    k = side.spec.n_tokens if k == "N" else k
    rows, positions, ds = _honest(side, k)
    ours = _llama_logits(side, rows, positions, ds)
    with _unmodified(side):
        gap = _gap(ours, _transformers_logits(side, k))
    bound = _epsilon_bound(side)
    assert gap <= bound and (bound == TOL_REL or gap > TOL_REL), (gap, bound)


@needs_llama
@pytest.mark.parametrize("side", WITH_POSITIONS, indirect=True)
def test_two_positions_exchanged_fail_against_the_unmodified_model_too(side):
    """The epsilon bound still tells a wrong hand-off: two kept tokens' positions exchanged (planted past the check,
    as above) move the logits far past it. Families with (t, h, w) positions only (1-D: consecutive positions)."""
    assert side.spec.has_positions
    from flashvlm_export.runtime.llama_cpp import llama_cpp_prompt

    rows, positions, ds = _honest(side, K_PRUNED)
    prompt = llama_cpp_prompt(side.ids, side.spec, rows, positions, deepstack=ds)
    image = prompt.segments[1].positions
    image[:, [0, -1]] = image[:, [-1, 0]]
    with _unmodified(side):
        assert _gap(_prefill(side.info, prompt), _transformers_logits(side, K_PRUNED)) > 10 * _epsilon_bound(side)


@needs_llama
@pytest.mark.parametrize("k", ["N", K_PRUNED])
def test_an_embedding_row_off_by_one_fails_the_llama_cpp_hand_off(side, k):
    k = side.spec.n_tokens if k == "N" else k
    rows, positions, ds = _honest(side, k)
    j = k // 2
    rows[j] = side.rows[side.keep[k][j] + 1]  # the next token's row at kept row j
    assert _gap(_llama_logits(side, rows, positions, ds), _transformers_logits(side, k)) > 100 * TOL_REL


@needs_llama
@pytest.mark.parametrize("k", ["N", K_PRUNED])
@pytest.mark.parametrize("side", WITH_POSITIONS, indirect=True)
def test_positions_of_two_kept_tokens_exchanged_fail_the_llama_cpp_hand_off(side, k):
    """Families with (t, h, w) positions only: a 1-D family's kept rows sit at consecutive positions, none of the graph's."""
    assert side.spec.has_positions
    from flashvlm_export.errors import UsageError
    from flashvlm_export.runtime.llama_cpp import llama_cpp_prompt

    k = side.spec.n_tokens if k == "N" else k
    rows, positions, ds = _honest(side, k)
    swapped = positions.clone()
    swapped[[0, -1]] = swapped[[-1, 0]]  # (0, h0, w0) <-> (0, h, w): different rows and columns
    with pytest.raises(UsageError, match="do not rise along the prompt"):  # refused where llama.cpp's mask would differ
        llama_cpp_prompt(side.ids, side.spec, rows, swapped, deepstack=ds)
    prompt = llama_cpp_prompt(side.ids, side.spec, rows, positions, deepstack=ds)
    image = prompt.segments[1].positions
    image[:, [0, -1]] = image[:, [-1, 0]]  # planted past the check: what llama.cpp would compute
    assert _gap(_prefill(side.info, prompt), _transformers_logits(side, k)) > 100 * TOL_REL


@needs_llama
def test_greedy_decoding_through_llama_cpp_continues_at_the_transformers_paths_positions(side):
    """K < N, 6 tokens: each step's logits equal transformers' greedy_answer's (Qwen: at the unpruned next positions,
    the rope delta kept); decoding Qwen at the spliced length instead fails."""
    from flashvlm_export.runtime.answer import greedy_answer, llm_input
    from flashvlm_export.runtime.llama_cpp import LlamaCppLLM, llama_cpp_prompt

    rows, positions, ds = _honest(side, K_PRUNED)
    steps = []

    def recording(**kwargs):
        out = side.llm(**kwargs)
        steps.append(out.logits[0, -1].numpy())
        return out

    inputs = llm_input(side.llm.get_input_embeddings(), side.ids, side.spec, rows, positions, ds)
    theirs = greedy_answer(recording, inputs, side.tokenizer, 6, "t")
    prompt = llama_cpp_prompt(side.ids, side.spec, rows, positions, deepstack=ds)
    with LlamaCppLLM(side.info, n_ctx=prompt.length + 64) as llm:
        ours = [llm.prefill(prompt)]
        for i, token in enumerate(theirs.token_ids[:-1]):
            ours.append(llm.step(token, prompt.next_position + i))
        assert _gap(np.stack(ours), np.stack(steps[1:])) <= TOL_REL  # after transformers' untimed warm-up forward
        if side.spec.has_positions:
            llm.prefill(prompt)
            wrong = [llm.step(token, prompt.length + i) for i, token in enumerate(theirs.token_ids[:-1])]
            assert _gap(np.stack(wrong), np.stack(steps[2:])) > 100 * TOL_REL


@needs_llama
def test_the_gguf_vocabulary_gives_the_stand_in_tokenizers_ids(side):
    """llama.cpp tokenizes the prompt text (special tokens whole) to the same ids as the stand-in tokenizer."""
    from flashvlm_export.models.registry import adapter
    from flashvlm_export.runtime.llama_cpp import LlamaCppLLM

    text = adapter(side.spec).chat_prompt(QUESTION + " é")
    want = side.tokenizer(text).input_ids
    with LlamaCppLLM(side.info, n_ctx=64) as llm:
        lib = llm.lib
        vocab = lib.llama_model_get_vocab(llm.model)
        data = text.encode()
        out = (lib.llama_token * 1024)()
        n = lib.llama_tokenize(vocab, data, len(data), out, 1024, True, True)
        assert list(out[:n]) == want


# ---------------------------------------------------------------- run --llm-runtime llama.cpp


@pytest.fixture(scope="module")
def llava_graph(tiny_full_graphs):
    """llava15-tiny's full graph at K_PRUNED, random weights, seed 0 (shared with test_run: conftest)."""
    return tiny_full_graphs[K_PRUNED]


@pytest.fixture(scope="module")
def llava_gguf(tmp_path_factory):
    from flashvlm_export.cli import main

    if NO_GGUF:
        pytest.skip(NO_GGUF)
    path = tmp_path_factory.mktemp("llama_gguf") / "llava15-tiny.gguf"
    assert main(["gguf", "--model", "llava15-tiny", "--out", str(path)]) == 0
    return path


@needs_llama
def test_run_answers_through_llama_cpp_with_the_same_tokens_as_transformers(llava_graph, llava_gguf, tmp_path, capsys):
    from flashvlm_export.cli import main

    common = ["run", "--graph", str(llava_graph), "--demo-image", str(tmp_path / "demo.png"), "--question", QUESTION,
              "--answer", "--compare-full", "--max-new-tokens", "5", "--force"]  # fmt: skip
    assert main(common + ["--llm-runtime", "llama.cpp", "--gguf", str(llava_gguf)]) == 0
    out = capsys.readouterr().out
    assert "greedy decoding through llama.cpp (arch llama," in out
    assert f"Answer [pruned K={K_PRUNED}]: prefill" in out and "Answer [full N=576]: prefill" in out
    assert main(common) == 0
    reference = capsys.readouterr().out

    def ids(text, label):
        return text.split(f"Answer [{label}]: ", 1)[1].split("ids ", 1)[1].splitlines()[0]

    for label in (f"pruned K={K_PRUNED}", "full N=576"):
        assert ids(out, label) == ids(reference, label)


def _one_line_exit_2(capsys, argv) -> str:
    from flashvlm_export.cli import main

    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    return err


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--llm-runtime", "llama.cpp"], "needs --gguf FILE"),
        (["--gguf", "x.gguf"], "--gguf is the LLM for --llm-runtime llama.cpp"),
        (["--llm-runtime", "llama.cpp", "--gguf", "nowhere.gguf", "--answer"], "nowhere.gguf does not exist"),
    ],
)
def test_llm_runtime_and_gguf_misuse_is_one_line_exit_2(llava_graph, tmp_path, capsys, extra, expected):
    argv = ["run", "--graph", str(llava_graph), "--image", str(tmp_path / "none.png"), "--question", "q", *extra]
    assert expected in _one_line_exit_2(capsys, argv)


@needs_gguf
def test_a_file_that_is_not_gguf_is_refused_in_one_line(llava_graph, tmp_path, capsys):
    argv = ["run", "--graph", str(llava_graph), "--demo-image", str(tmp_path / "d.png"), "--question", "q", "--answer",
            "--llm-runtime", "llama.cpp", "--gguf", str(llava_graph)]  # fmt: skip
    assert "is not a GGUF file" in _one_line_exit_2(capsys, argv)
    assert not (tmp_path / "d.png").exists()  # refused before anything was written


@needs_gguf
def test_a_gguf_of_another_width_is_refused_in_one_line(llava_graph, tmp_path, capsys):
    from flashvlm_export.llm.gguf_file import text_config, timing_weights, write_gguf

    spec = get_spec("llava15-tiny")
    config = text_config(spec)
    config.hidden_size, config.intermediate_size = 32, 64
    narrow = write_gguf(tmp_path / "narrow.gguf", spec, config, timing_weights(config, 0))
    argv = ["run", "--graph", str(llava_graph), "--demo-image", str(tmp_path / "d.png"), "--question", "q", "--answer",
            "--llm-runtime", "llama.cpp", "--gguf", str(narrow)]  # fmt: skip
    err = _one_line_exit_2(capsys, argv)
    assert "is an LLM 32 wide" in err and "visual_embeds 64 wide" in err


@needs_gguf
def test_the_gguf_command_refuses_layers_for_a_test_model_and_needs_them_for_a_full_size_one(tmp_path, capsys):
    err = _one_line_exit_2(capsys, ["gguf", "--model", "llava15-tiny", "--layers", "1", "--out", str(tmp_path / "a.gguf")])
    assert "--layers 1" in err
    err = _one_line_exit_2(capsys, ["gguf", "--model", "qwen2.5-vl-7b", "--out", str(tmp_path / "b.gguf")])
    assert "--layers N" in err and "1..28" in err
    assert not list(tmp_path.iterdir())


def test_check_gguf_names_both_widths(monkeypatch):
    from flashvlm_export.errors import UsageError
    from flashvlm_export.runtime import llama_cpp

    spec = dataclasses.replace(get_spec("llava15-tiny"), text_hidden=128)
    monkeypatch.setattr(llama_cpp, "read_gguf", lambda path: llama_cpp.GGUFInfo(path, "llama", 64, 0))
    with pytest.raises(UsageError, match="is an LLM 64 wide but g.onnx .* gives visual_embeds 128 wide"):
        llama_cpp.check_gguf("m.gguf", spec, "g.onnx")


def test_check_gguf_refuses_another_familys_llama_cpp_architecture(monkeypatch):
    """Every tiny model is 64 wide, so the width alone would pass a llama GGUF on a Qwen graph (1-D rotary for rows
    that need M-RoPE): the architecture is checked too, both ways."""
    from flashvlm_export.errors import UsageError
    from flashvlm_export.runtime import llama_cpp

    for model, planted, right in (("qwen2.5-vl-tiny", "llama", "qwen2vl"), ("llava15-tiny", "qwen2vl", "llama")):
        spec = get_spec(model)
        monkeypatch.setattr(
            llama_cpp, "read_gguf", lambda path, arch=planted, width=spec.text_hidden: llama_cpp.GGUFInfo(path, arch, width, 0)
        )
        with pytest.raises(UsageError, match=f"is a llama.cpp '{planted}' LLM but g.onnx .* needs a '{right}' one"):
            llama_cpp.check_gguf("m.gguf", spec, "g.onnx")
        monkeypatch.setattr(
            llama_cpp, "read_gguf", lambda path, arch=right, width=spec.text_hidden: llama_cpp.GGUFInfo(path, arch, width, 0)
        )
        assert llama_cpp.check_gguf("m.gguf", spec, "g.onnx").arch == right


@needs_gguf
def test_the_gguf_command_never_overwrites_without_force(tmp_path, capsys):
    existing = tmp_path / "m.gguf"
    existing.write_bytes(b"mine")
    err = _one_line_exit_2(capsys, ["gguf", "--model", "llava15-tiny", "--out", str(existing)])
    assert "--force" in err and existing.read_bytes() == b"mine"
    assert "must end in .gguf" in _one_line_exit_2(capsys, ["gguf", "--model", "llava15-tiny", "--out", str(tmp_path / "m.bin")])


# ---------------------------------------------------------------- LLaVA-NeXT: the laid-out rows at 1-D positions

NEXT_FAMILIES = ["llava-next-tiny", "llava-next-mistral-tiny"]
K_NEXT = 160


def _llm_and_gguf(spec, parts, folder):
    """The family's random LLM (seed 0, the graph's) and the GGUF written from it; the reference runs the RMSNorm
    epsilon llama.cpp runs (see test_llama_cpps_rms_epsilon_is_the_ggufs_for_llama_and_0_for_qwen2vl)."""
    from flashvlm_export.llm.gguf_file import llm_weights, write_gguf
    from flashvlm_export.runtime.answer import build_llm
    from flashvlm_export.runtime.llama_cpp import read_gguf

    llm = build_llm(spec, parts, None, 0, torch.device("cpu"))
    info = read_gguf(write_gguf(folder / f"{spec.name}.gguf", spec, llm.config.text_config, llm_weights(llm)))
    _, own_eps = _run_llama_cpps_epsilon(llm, info)
    return llm, info, own_eps


@pytest.fixture(scope="module", params=NEXT_FAMILIES)
def next_side(request, tmp_path_factory):
    """A LLaVA-NeXT family: its random LLM and GGUF, the demo picture's P(X) rows (5 crops x 576), the newline row."""
    from flashvlm_export.models.adapter import get_parts
    from flashvlm_export.models.prompt import prompt_token_ids
    from flashvlm_export.models.weights import WeightsSource
    from flashvlm_export.runtime.image import demo_picture, prepare_image
    from flashvlm_export.runtime.tokenizer import stand_in_tokenizer

    if NO_GGUF:
        pytest.skip(NO_GGUF)
    spec = get_spec(request.param)
    parts = get_parts(spec, WeightsSource(seed=0), with_embeddings=True)
    folder = tmp_path_factory.mktemp("gguf_next")
    llm, info, own_eps = _llm_and_gguf(spec, parts, folder)
    demo_picture().save(folder / "demo.png")
    prepared = prepare_image(folder / "demo.png", spec)
    _, _, projected = parts.reference_features(prepared.pixel_values)
    n = spec.n_tokens
    kept = np.sort(np.random.default_rng(0).choice(n - 1, K_NEXT, replace=False))
    return SimpleNamespace(
        spec=spec, llm=llm, info=info, own_eps=own_eps, rows=projected[0], newline=parts.image_newline.row, image_hw=prepared.image_hw,
        ids=prompt_token_ids(stand_in_tokenizer(spec), QUESTION, spec), keep={n: np.arange(n), K_NEXT: kept},
    )  # fmt: skip


def _laid_out(s, rows, k):
    from flashvlm_export.models.anyres import llm_rows

    return llm_rows(rows, s.keep[k], s.newline, s.spec, s.image_hw)


def test_the_mistral_test_model_is_llava_next_with_mistrals_decoder_and_template():
    from flashvlm_export.llm.gguf_file import gguf_arch, text_config
    from flashvlm_export.models.prompt import prompt_token_ids
    from flashvlm_export.runtime.tokenizer import stand_in_tokenizer

    spec = get_spec("llava-next-mistral-tiny")
    config = text_config(spec)
    assert config.model_type == "mistral" and config.num_key_value_heads < config.num_attention_heads
    assert gguf_arch(spec) == "llama"  # convert_hf_to_gguf: MistralForCausalLM -> LlamaModel
    assert stand_in_tokenizer(spec).decode(prompt_token_ids(stand_in_tokenizer(spec), "q", spec)).count("[INST]") == 1


@needs_llama
@pytest.mark.parametrize("k", ["N", K_NEXT])
def test_llama_cpp_logits_on_llava_nexts_laid_out_rows_equal_transformers(next_side, k):
    """The rows as _crops_layout gives both runtimes (base, unpadded grid, image_newline rows) at 0..L-1."""
    from flashvlm_export.models.anyres import NEWLINE, layout
    from flashvlm_export.runtime.answer import llm_input
    from flashvlm_export.runtime.llama_cpp import llama_cpp_prompt

    s = next_side
    k = s.spec.n_tokens if k == "N" else k
    laid = _laid_out(s, s.rows[torch.from_numpy(s.keep[k])], k)
    assert (layout(s.keep[k], s.spec, s.image_hw) == NEWLINE).sum() > 0  # image_newline rows among them
    inputs = llm_input(s.llm.get_input_embeddings(), s.ids, s.spec, laid)
    with torch.no_grad():
        theirs = s.llm(inputs_embeds=inputs.inputs_embeds).logits[0].numpy()
    ours = _prefill(s.info, llama_cpp_prompt(s.ids, s.spec, laid))
    assert ours.shape == theirs.shape == (len(s.ids) - 1 + laid.shape[0], s.spec.text["vocab_size"])
    assert _gap(ours, theirs) <= TOL_REL, _gap(ours, theirs)


@needs_llama
def test_llava_next_reference_is_unmodified_llama_cpp_runs_its_epsilon(next_side):
    """Arch llama reads the GGUF's epsilon: the reference the LLaVA-NeXT checks run is the model as it ships."""
    assert all(
        module.variance_epsilon == pytest.approx(eps, rel=1e-6) for module, eps in next_side.own_eps
    )  # float32 in the GGUF


@needs_llama
@pytest.mark.parametrize("k", ["N", K_NEXT])
def test_a_laid_out_row_off_by_one_fails_the_llava_next_hand_off(next_side, k):
    from flashvlm_export.runtime.answer import llm_input
    from flashvlm_export.runtime.llama_cpp import llama_cpp_prompt

    s = next_side
    k = s.spec.n_tokens if k == "N" else k
    kept = s.rows[torch.from_numpy(s.keep[k])].clone()
    honest = _laid_out(s, kept, k)
    j = k // 2
    kept[j] = s.rows[s.keep[k][j] + 1]  # the next token's row at kept row j
    inputs = llm_input(s.llm.get_input_embeddings(), s.ids, s.spec, honest)
    with torch.no_grad():
        theirs = s.llm(inputs_embeds=inputs.inputs_embeds).logits[0].numpy()
    assert _gap(_prefill(s.info, llama_cpp_prompt(s.ids, s.spec, _laid_out(s, kept, k))), theirs) > 100 * TOL_REL


@pytest.fixture(scope="module")
def next_graph(tmp_path_factory):
    from flashvlm_export.export.graphs import ExportRequest, export_graph
    from flashvlm_export.models.adapter import get_parts
    from flashvlm_export.models.weights import WeightsSource
    from flashvlm_export.selector.config import SelectorConfig

    spec = get_spec("llava-next-tiny")
    request = ExportRequest(spec=spec, budget=K_NEXT, t_max=spec.t_max, batch=1, config=SelectorConfig(), selector_only=False)
    path = tmp_path_factory.mktemp("llama_graphs_next") / f"llava-next-tiny_b{K_NEXT}.onnx"
    return export_graph(request, path, get_parts(spec, WeightsSource(seed=0)), "random:0", exporter="torchscript")


@needs_llama
def test_run_answers_a_llava_next_graph_through_llama_cpp_with_the_same_tokens_as_transformers(next_graph, tmp_path, capsys):
    from flashvlm_export.cli import main

    gguf_path = tmp_path / "next.gguf"
    assert main(["gguf", "--model", "llava-next-tiny", "--out", str(gguf_path)]) == 0
    common = ["run", "--graph", str(next_graph), "--demo-image", str(tmp_path / "demo.png"), "--question", QUESTION,
              "--answer", "--max-new-tokens", "5", "--force"]  # fmt: skip
    assert main(common + ["--llm-runtime", "llama.cpp", "--gguf", str(gguf_path)]) == 0
    out = capsys.readouterr().out
    assert "greedy decoding through llama.cpp (arch llama," in out and "image_newline rows included" in out
    assert main(common) == 0
    reference = capsys.readouterr().out

    def ids(text):
        return text.split(f"Answer [pruned K={K_NEXT}]: ", 1)[1].split("ids ", 1)[1].splitlines()[0]

    assert ids(out) == ids(reference)


# ---------------------------------------------------------------- a Qwen2.5-VL clip: (t, h, w) at the video placeholder

CLIP_FRAMES = 4  # 2 frame groups of 256 tokens: N = 512
K_CLIP = 64


@pytest.fixture(scope="module")
def clip_side(tmp_path_factory):
    """qwen2.5-vl-tiny's random LLM and GGUF, a 4-frame clip's P(X) rows (transformers' own tower), its positions at 2 fps."""
    from flashvlm_export.models.adapter import get_parts
    from flashvlm_export.models.positions import clip_token_positions
    from flashvlm_export.models.weights import WeightsSource
    from flashvlm_export.runtime.clip import clip_prompt_ids
    from flashvlm_export.runtime.tokenizer import stand_in_tokenizer

    if NO_GGUF:
        pytest.skip(NO_GGUF)
    spec = get_spec("qwen2.5-vl-tiny")
    parts = get_parts(spec, WeightsSource(seed=0), with_embeddings=True)
    llm, info, own_eps = _llm_and_gguf(spec, parts, tmp_path_factory.mktemp("gguf_clip"))
    clip = torch.randn(1, CLIP_FRAMES, 3, spec.image_size, spec.image_size, generator=torch.Generator().manual_seed(3))
    _, _, projected = parts.reference_clip_features(clip)
    n = CLIP_FRAMES // 2 * spec.n_tokens
    kept = np.sort(np.random.default_rng(0).choice(n - 1, K_CLIP, replace=False))
    return SimpleNamespace(
        spec=spec, llm=llm, info=info, own_eps=own_eps, rows=projected[0], positions=clip_token_positions(spec, CLIP_FRAMES, 1.0),
        ids=clip_prompt_ids(stand_in_tokenizer(spec), QUESTION, spec), keep={n: np.arange(n), K_CLIP: kept}, n=n,
    )  # fmt: skip


def _last_t(table) -> int:
    """The unpruned clip's last temporal position (its position table's largest t)."""
    return int(table[:, 0].max())


def _clip_transformers_logits(s, rows, positions) -> np.ndarray:
    from flashvlm_export.runtime.clip import clip_llm_input

    inputs = clip_llm_input(s.llm.get_input_embeddings(), s.ids, s.spec, rows, positions, last_t=_last_t(s.positions))
    with torch.no_grad():
        return s.llm(inputs_embeds=inputs.inputs_embeds, position_ids=inputs.position_ids).logits[0].numpy()


def test_a_clips_prompt_has_clip_llm_inputs_positions_and_next_position():
    """No llama.cpp needed: the clip's batches at the positions runtime/clip.clip_llm_input gives transformers."""
    from flashvlm_export.models.positions import clip_token_positions
    from flashvlm_export.runtime.clip import clip_llm_input, clip_prompt_ids
    from flashvlm_export.runtime.llama_cpp import llama_cpp_prompt
    from flashvlm_export.runtime.tokenizer import stand_in_tokenizer

    spec = get_spec("qwen2.5-vl-tiny")
    ids = clip_prompt_ids(stand_in_tokenizer(spec), QUESTION, spec)
    idx = torch.tensor([0, 7, 255, 256, 300, 511])  # both groups
    positions = clip_token_positions(spec, CLIP_FRAMES, 1.0)[idx]
    rows = torch.randn(len(idx), spec.text_hidden)
    last_t = _last_t(clip_token_positions(spec, CLIP_FRAMES, 1.0))
    prompt = llama_cpp_prompt(ids, spec, rows, positions, clip_last_t=last_t)
    theirs = clip_llm_input(
        torch.nn.Embedding(spec.text["vocab_size"], spec.text_hidden), ids, spec, rows, positions, last_t=last_t
    )
    full = theirs.position_ids[:, 0].numpy()
    head, image, tail = prompt.segments
    p = len(head)
    assert np.array_equal(np.concatenate([head.positions[0], image.positions[0], tail.positions[0]]), full[0])
    assert np.array_equal(image.positions[:3], full[:, p : p + len(idx)]) and not image.positions[3].any()
    assert prompt.next_position == theirs.next_position
    assert image.positions[0, 3] > image.positions[0, 2]  # the second group at a later t


def _clip_llama_logits(s, k):
    """llama.cpp's logits for the clip's kept tokens at budget k (N: all), with their rows and positions."""
    from flashvlm_export.runtime.llama_cpp import llama_cpp_prompt

    idx = torch.from_numpy(s.keep[k])
    rows, positions = s.rows[idx], s.positions[idx]
    ours = _prefill(s.info, llama_cpp_prompt(s.ids, s.spec, rows, positions, clip_last_t=_last_t(s.positions)))
    return ours, rows, positions


@needs_llama
@pytest.mark.parametrize("k", ["N", K_CLIP])
def test_llama_cpp_logits_for_a_clip_equal_transformers(clip_side, k):
    s = clip_side
    k = s.n if k == "N" else k
    ours, rows, positions = _clip_llama_logits(s, k)
    theirs = _clip_transformers_logits(s, rows, positions)
    assert ours.shape == theirs.shape == (len(s.ids) - 1 + k, s.spec.text["vocab_size"])
    assert _gap(ours, theirs) <= TOL_REL, _gap(ours, theirs)


@needs_llama
@pytest.mark.parametrize("k", ["N", K_CLIP])
def test_llama_cpp_logits_for_a_clip_equal_the_unmodified_transformers_model_within_the_epsilons_bound(clip_side, k):
    s = clip_side
    k = s.n if k == "N" else k
    ours, rows, positions = _clip_llama_logits(s, k)
    with _unmodified(s):
        gap = _gap(ours, _clip_transformers_logits(s, rows, positions))
    assert TOL_REL < gap <= EPSILON_TOL_REL, gap  # qwen2vl: llama.cpp runs epsilon 0


@needs_llama
@pytest.mark.parametrize("k", ["N", K_CLIP])
def test_two_frame_groups_positions_swapped_fail_the_clip_hand_off(clip_side, k):
    """Group 0's rows at group 1's t and back. In the rows' order: refused before llama.cpp (the positions do not rise),
    and planted past that check, llama.cpp refuses the batch itself (its t decreases). Put in position order (what
    llama.cpp accepts): its logits leave transformers' honest ones."""
    from flashvlm_export.errors import FlashVLMError, UsageError
    from flashvlm_export.runtime.llama_cpp import llama_cpp_prompt

    s = clip_side
    k = s.n if k == "N" else k
    idx = torch.from_numpy(s.keep[k])
    rows, positions = s.rows[idx], s.positions[idx]
    t0, t1 = sorted(set(positions[:, 0].tolist()))
    swapped = positions.clone()
    swapped[:, 0] = torch.where(positions[:, 0] == t0, t1, t0)
    with pytest.raises(UsageError, match="do not rise along the prompt"):
        llama_cpp_prompt(s.ids, s.spec, rows, swapped, clip_last_t=_last_t(s.positions))
    prompt = llama_cpp_prompt(s.ids, s.spec, rows, positions, clip_last_t=_last_t(s.positions))
    image = prompt.segments[1].positions
    image[0] = np.where(image[0] == image[0].min(), image[0].max(), image[0].min())  # the same swap, past the check
    with pytest.raises(FlashVLMError, match="could not decode"):
        _prefill(s.info, prompt)
    order = np.lexsort(swapped.numpy().T[::-1])  # by (t, h, w): group 1's rows first, at group 0's positions
    reordered = llama_cpp_prompt(s.ids, s.spec, rows[order], swapped[order], clip_last_t=_last_t(s.positions))
    assert _gap(_prefill(s.info, reordered), _clip_transformers_logits(s, rows, positions)) > 100 * TOL_REL


@pytest.mark.parametrize("fps, why", [(8.0, "groups share t = 0"), (0.2, "group 1 at t = 20, past the text's start 16")])
def test_a_clip_whose_positions_llama_cpp_would_mask_otherwise_is_refused_in_one_line(fps, why):
    from flashvlm_export.errors import UsageError
    from flashvlm_export.models.positions import clip_token_positions, second_per_grid
    from flashvlm_export.runtime.clip import clip_prompt_ids
    from flashvlm_export.runtime.llama_cpp import llama_cpp_prompt
    from flashvlm_export.runtime.tokenizer import stand_in_tokenizer

    spec = get_spec("qwen2.5-vl-tiny")
    table = clip_token_positions(spec, CLIP_FRAMES, second_per_grid(spec, fps))
    ids = clip_prompt_ids(stand_in_tokenizer(spec), QUESTION, spec)
    with pytest.raises(UsageError, match="sample the clip at another --fps") as caught:
        llama_cpp_prompt(ids, spec, torch.zeros(len(table), spec.text_hidden), table, clip_last_t=_last_t(table))
    assert len(str(caught.value).splitlines()) == 1, why


@pytest.fixture(scope="module")
def clip_graph(tmp_path_factory):
    from flashvlm_export.cli import main

    graph = tmp_path_factory.mktemp("llama_clip_graph") / "clip.onnx"
    argv = ["--model", "qwen2.5-vl-tiny", "--budget", str(K_CLIP), "--random-weights", "--exporter", "torchscript",
            "--video", "--frames", str(CLIP_FRAMES), "--out", str(graph)]  # fmt: skip
    assert main(argv) == 0
    return graph


@needs_llama
def test_run_video_answers_through_llama_cpp_with_the_same_tokens_as_transformers(clip_graph, tmp_path, capsys):
    """run --video --llm-runtime llama.cpp answers through llama.cpp (before: silently through transformers)."""
    from flashvlm_export.cli import main

    gguf_path = tmp_path / "qwen.gguf"
    assert main(["gguf", "--model", "qwen2.5-vl-tiny", "--out", str(gguf_path)]) == 0
    common = ["run", "--graph", str(clip_graph), "--demo-video", str(tmp_path / "clip.mp4"), "--question", QUESTION,
              "--answer", "--compare-full", "--max-new-tokens", "5", "--force"]  # fmt: skip
    assert main(common + ["--llm-runtime", "llama.cpp", "--gguf", str(gguf_path)]) == 0
    out = capsys.readouterr().out
    assert "greedy decoding through llama.cpp (arch qwen2vl," in out and "LLM ready on" not in out
    assert main(common) == 0
    reference = capsys.readouterr().out
    assert "greedy decoding through llama.cpp" not in reference

    def ids(text, label):
        return text.split(f"Answer [{label}]: ", 1)[1].split("ids ", 1)[1].splitlines()[0]

    for label in (f"pruned K={K_CLIP}", f"full N={CLIP_FRAMES // 2 * 256}"):
        assert ids(out, label) == ids(reference, label)


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--llm-runtime", "llama.cpp"], "needs --gguf FILE"),
        (["--gguf", "x.gguf"], "--gguf is the LLM for --llm-runtime llama.cpp"),
        (["--llm-runtime", "llama.cpp", "--gguf", "nowhere.gguf", "--answer"], "nowhere.gguf does not exist"),
    ],
)
def test_video_llm_runtime_and_gguf_misuse_is_one_line_exit_2(clip_graph, tmp_path, capsys, extra, expected):
    argv = ["run", "--graph", str(clip_graph), "--demo-video", str(tmp_path / "c.mp4"), "--question", "q", *extra]
    assert expected in _one_line_exit_2(capsys, argv)
    assert not (tmp_path / "c.mp4").exists()  # refused before anything was written


# ---------------------------------------------------------------- the Qwen3 generation: DeepStack rows, hybrid decoder

QWEN3 = ["qwen3-vl-tiny", "qwen3.5-tiny"]


@needs_llama
@pytest.mark.parametrize("k", ["N", K_PRUNED])
@pytest.mark.parametrize("side", ["qwen3-vl-tiny"], indirect=True)
def test_deepstack_rows_of_two_layers_exchanged_fail_the_llama_cpp_hand_off(side, k):
    """Each kept row carries its L DeepStack rows in layer order (llama.cpp adds slice l + 1 after decoder layer l):
    layers 0 and 1 exchanged move the logits far past the bound (measured 0.60 at K = N, 0.51 at K = 64)."""
    k = side.spec.n_tokens if k == "N" else k
    rows, positions, ds = _honest(side, k)
    assert ds.shape == (3, k, side.spec.text_hidden)
    ds[[0, 1]] = ds[[1, 0]]
    assert _gap(_llama_logits(side, rows, positions, ds), _transformers_logits(side, k)) > 100 * TOL_REL


def test_a_qwen3_vl_prompt_needs_its_deepstack_rows():
    from flashvlm_export.models.positions import token_positions
    from flashvlm_export.models.prompt import prompt_token_ids
    from flashvlm_export.runtime.llama_cpp import llama_cpp_prompt
    from flashvlm_export.runtime.tokenizer import stand_in_tokenizer

    spec = get_spec("qwen3-vl-tiny")
    ids = prompt_token_ids(stand_in_tokenizer(spec), QUESTION, spec)
    rows, positions = torch.zeros(4, spec.text_hidden), token_positions(spec)[:4]
    for wrong in (None, torch.zeros(2, 4, spec.text_hidden)):
        with pytest.raises(ValueError, match=r"needs \(L, K, Dl\) = \(3, 4, 64\) DeepStack rows"):
            llama_cpp_prompt(ids, spec, rows, positions, deepstack=wrong)


@needs_llama
@pytest.mark.parametrize("side", ["qwen3-vl-tiny"], indirect=True)
def test_llama_cpp_still_aborts_where_deepstack_reaches_its_last_layer_unless_every_row_is_an_output(side):
    """A pinned llama.cpp finding (llama-cpp-python 0.3.36): qwen3vl adds the DeepStack slice to decoder layer il's output
    for il < L, also in the last layer, after cutting that layer's rows to the batch's outputs (src/models/qwen3vl.cpp
    lines 126-157): with fewer outputs than rows, GGML_ASSERT(ggml_can_repeat(b, a)) aborts the process. qwen3-vl-tiny
    has 3 layers and L = 3, so LlamaCppLLM makes every row an output there (every_row). Run in a child process with the
    workaround off; when a release fixes this, the child survives and this test fails: drop every_row."""
    import subprocess
    import sys
    from pathlib import Path

    assert side.info.deepstack == 3 and side.llm.config.text_config.num_hidden_layers == 3
    script = f"""
import numpy as np, torch
from flashvlm_export.models.registry import get_spec
from flashvlm_export.models.positions import token_positions
from flashvlm_export.runtime.llama_cpp import LlamaCppLLM, llama_cpp_prompt, read_gguf
spec = get_spec("qwen3-vl-tiny")
prompt = llama_cpp_prompt({side.ids!r}, spec, torch.zeros(8, 64), token_positions(spec)[:8], deepstack=torch.zeros(3, 8, 64))
with LlamaCppLLM(read_gguf({str(side.info.path)!r}), n_ctx=prompt.length + 8) as llm:
    assert llm.every_row
    llm.prefill(prompt)
    print("with every_row: fine", flush=True)
    llm.every_row = False
    llm.prefill(prompt)
    print("survived", flush=True)
"""
    run = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=Path(__file__).parents[1], timeout=300
    )
    assert "with every_row: fine" in run.stdout and "survived" not in run.stdout, (run.stdout, run.stderr[-2000:])
    assert run.returncode != 0 and "GGML_ASSERT(ggml_can_repeat(b, a)) failed" in run.stderr, run.stderr[-2000:]


def test_interleaved_m_rope_sections_are_the_pairs_transformers_gives_each_axis():
    """llm/gguf_file.interleaved_sections: the released checkpoints' mrope_section as the converter writes it; the tiny
    models' such that llama.cpp's rule (ggml-cpu ops.cpp ggml_mrope_cache_init, is_imrope) picks transformers' axis
    (Qwen3VLTextRotaryEmbedding.recomposition_frequencies) for every pair, none the 4th (0 for text tokens)."""
    from flashvlm_export.llm.gguf_file import interleaved_sections

    def transformers_axis(i, section):
        return 1 if i % 3 == 1 and i < 3 * section[1] else 2 if i % 3 == 2 and i < 3 * section[2] else 0

    def llama_axis(i, sections):
        sector = i % sum(sections)
        for axis in (1, 2, 0):
            if sector % 3 == axis % 3 and sector < 3 * sections[axis]:
                return axis
        return 3

    assert interleaved_sections([24, 20, 20], 64) == [24, 20, 20, 0]  # Qwen3-VL's
    assert interleaved_sections([11, 11, 10], 32) == [11, 11, 10, 0]  # Qwen3.5's
    for name in QWEN3:
        text = get_spec(name).text
        rope = text["rope_parameters"]
        pairs = int(text["head_dim"] * rope.get("partial_rotary_factor", 1.0)) // 2
        sections = interleaved_sections(rope["mrope_section"], pairs)
        assert [llama_axis(i, sections) for i in range(pairs)] == [
            transformers_axis(i, rope["mrope_section"]) for i in range(pairs)
        ]
    assert interleaved_sections([2, 3, 3], 8) == [3, 3, 2, 0]  # qwen3-vl-tiny: padding [2, 3, 3] would put pair 6 on the 4th


@needs_llama
@pytest.mark.parametrize("side", ["qwen3-vl-tiny"], indirect=True)
def test_the_converters_plain_sections_would_miss_the_bound_on_qwen3_vl_tiny(side, tmp_path, monkeypatch):
    """Why the sections are counted, not padded: with [2, 3, 3, 0] llama.cpp rotates pair 6 of every text token by
    position 0: measured 6.7e-5 of the largest logit (K = N), ~7x TOL_REL."""
    from flashvlm_export.llm import gguf_file
    from flashvlm_export.runtime.llama_cpp import read_gguf

    monkeypatch.setattr(gguf_file, "interleaved_sections", lambda section, pairs: list(section))
    path = gguf_file.write_gguf(tmp_path / "padded.gguf", side.spec, side.llm.config.text_config, gguf_file.llm_weights(side.llm))
    padded = SimpleNamespace(**{**vars(side), "info": read_gguf(path)})
    rows, positions, ds = _honest(side, side.spec.n_tokens)
    assert _gap(_llama_logits(padded, rows, positions, ds), _transformers_logits(side, side.spec.n_tokens)) > 2 * TOL_REL


@needs_llama
@pytest.mark.parametrize("side", QWEN3, indirect=True)
def test_timing_gguf_of_the_qwen3_generation_has_the_test_models_tensors_and_runs(side, tmp_path):
    """A full-size geometry's timing GGUF (gguf --layers N) is written by timing_weights through the same conversion:
    on the tiny geometry it holds exactly the test model's tensor names and shapes, llama.cpp loads and decodes it, and
    its KV cache counts only the attention layers' keys and values (plus qwen35's recurrent state)."""
    from gguf import GGUFReader

    from flashvlm_export.llm.gguf_file import text_config, timing_weights, write_gguf
    from flashvlm_export.runtime.llama_cpp import LlamaCppLLM, Prompt, Segment, read_gguf

    config = text_config(side.spec)
    path = write_gguf(tmp_path / "timing.gguf", side.spec, config, timing_weights(config, 0), dtype="f16")

    def shapes(p):
        return {t.name: tuple(int(x) for x in t.shape) for t in GGUFReader(p).tensors}

    assert shapes(path) == shapes(side.info.path)
    info = read_gguf(path)
    with LlamaCppLLM(info, n_ctx=32) as llm:
        logits = llm.prefill(Prompt([Segment(np.arange(5, dtype=np.int32)[None], token_ids=np.arange(1, 6, dtype=np.int32))], 5))
        assert np.isfinite(logits).all()
        text = side.llm.config.text_config
        attention = sum(
            t == "full_attention" for t in getattr(text, "layer_types", None) or ["full_attention"] * text.num_hidden_layers
        )
        assert llm.kv_bytes(10) == 2 * attention * text.num_key_value_heads * text.head_dim * 10 * 2 + info.state_bytes  # f16
        assert (info.state_bytes > 0) == (side.spec.family == "qwen3_5")


def test_check_gguf_refuses_a_qwen3_vl_gguf_without_its_deepstack_layers(monkeypatch):
    from flashvlm_export.errors import UsageError
    from flashvlm_export.runtime import llama_cpp

    spec = get_spec("qwen3-vl-tiny")
    monkeypatch.setattr(llama_cpp, "read_gguf", lambda path: llama_cpp.GGUFInfo(path, "qwen3vl", 64, 0, deepstack=0))
    with pytest.raises(UsageError, match="is an LLM with 0 DeepStack layers but g.onnx .* gives 3") as caught:
        llama_cpp.check_gguf("m.gguf", spec, "g.onnx")
    assert len(str(caught.value).splitlines()) == 1


@pytest.fixture(scope="module", params=QWEN3)
def qwen3_clip_side(request, tmp_path_factory):
    """A Qwen3-generation model's random LLM and GGUF, a 4-frame clip's rows and DeepStack rows (transformers' own tower),
    its timestamped prompt (frames 0..3 at 2 fps): the clip hand-off through llama.cpp, frame groups between timestamps."""
    from flashvlm_export.models.adapter import get_parts
    from flashvlm_export.models.positions import clip_token_positions
    from flashvlm_export.models.weights import WeightsSource
    from flashvlm_export.runtime.clip import clip_prompt_ids, group_timestamps
    from flashvlm_export.runtime.tokenizer import stand_in_tokenizer

    if NO_GGUF:
        pytest.skip(NO_GGUF)
    spec = get_spec(request.param)
    parts = get_parts(spec, WeightsSource(seed=0), with_embeddings=True)
    llm, info, _ = _llm_and_gguf(spec, parts, tmp_path_factory.mktemp("gguf_qwen3_clip"))
    clip = torch.randn(1, CLIP_FRAMES, 3, spec.image_size, spec.image_size, generator=torch.Generator().manual_seed(3))
    features = parts.reference_clip_features(clip)
    n = CLIP_FRAMES // 2 * spec.n_tokens
    kept = np.sort(np.random.default_rng(0).choice(n - 1, K_CLIP, replace=False))
    tokenizer = stand_in_tokenizer(spec)
    stamps = group_timestamps(range(CLIP_FRAMES), 2.0)
    return SimpleNamespace(
        spec=spec, llm=llm, info=info, rows=features[2][0], deepstack=features[3][0] if len(features) > 3 else None,
        positions=clip_token_positions(spec, CLIP_FRAMES, 1.0), tokenizer=tokenizer, stamps=stamps,
        ids=clip_prompt_ids(tokenizer, QUESTION, spec, stamps), keep={n: np.arange(n), K_CLIP: kept}, n=n,
    )  # fmt: skip


def _qwen3_clip_inputs(s, k):
    idx = torch.from_numpy(s.keep[k])
    return idx, s.rows[idx], s.positions[idx], None if s.deepstack is None else s.deepstack[:, idx]


@needs_llama
@pytest.mark.parametrize("k", ["N", K_CLIP])
def test_llama_cpp_logits_for_a_qwen3_clip_equal_transformers(qwen3_clip_side, k):
    """Each frame group's kept rows (with their DeepStack rows: Qwen3-VL) between the group timestamps, through llama.cpp,
    give transformers' logits on the same input (runtime/clip.clip_llm_input, proved against transformers' own video
    forward in tests/test_qwen3_handoff.py); a timestamp off by one second in llama.cpp's prompt does not."""
    from flashvlm_export.runtime.clip import clip_llm_input, clip_prompt_ids
    from flashvlm_export.runtime.llama_cpp import llama_cpp_prompt

    s = qwen3_clip_side
    k = s.n if k == "N" else k
    idx, rows, positions, deepstack = _qwen3_clip_inputs(s, k)
    ours = _prefill(s.info, llama_cpp_prompt(s.ids, s.spec, rows, positions, 0, deepstack, idx.numpy()))
    inputs = clip_llm_input(
        s.llm.get_input_embeddings(), s.ids, s.spec, rows, positions, last_t=0, indices=idx, deepstack=deepstack
    )
    with torch.no_grad():
        theirs = s.llm(inputs_embeds=inputs.inputs_embeds, position_ids=inputs.position_ids, **(inputs.prefill or {}))
    theirs = theirs.logits[0].numpy()
    assert ours.shape == theirs.shape == (len(s.ids) - CLIP_FRAMES // 2 + k, s.spec.text["vocab_size"])
    assert _gap(ours, theirs) <= TOL_REL, _gap(ours, theirs)
    stamps = list(s.stamps)
    stamps[1] += 1.0
    wrong = clip_prompt_ids(s.tokenizer, QUESTION, s.spec, stamps)
    assert (
        _gap(_prefill(s.info, llama_cpp_prompt(wrong, s.spec, rows, positions, 0, deepstack, idx.numpy())), theirs)
        > 100 * TOL_REL
    )


@needs_llama
def test_the_gguf_command_refuses_a_model_whose_architecture_the_installed_llama_cpp_lacks(tmp_path, capsys, monkeypatch):
    """The bundled llama.cpp has qwen3vl and qwen35; one without the model's architecture is simulated by a name none
    has. The file is probed (llama.cpp's loader, vocabulary only) before it is put in place: one line, exit 2, nothing written."""
    from flashvlm_export.models import qwen3_5

    from conftest import expect_one_line

    monkeypatch.setattr(qwen3_5, "GGUF_ARCH", "qwen99")
    expect_one_line(
        capsys, ["gguf", "--model", "qwen3.5-tiny", "--out", str(tmp_path / "q.gguf")],
        "qwen3.5-tiny: the installed llama.cpp (llama-cpp-python ", "has no 'qwen99' architecture",
        "answer with the transformers LLM (--answer without --llm-runtime llama.cpp and --gguf)",
    )  # fmt: skip
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------- run: a Qwen3-VL graph through llama.cpp


@pytest.fixture(scope="module")
def qwen3_graph(tmp_path_factory):
    """qwen3-vl-tiny's full graph at K_PRUNED (random weights, seed 0): its outputs include deepstack_embeds."""
    from flashvlm_export.cli import main

    graph = tmp_path_factory.mktemp("llama_qwen3_graph") / "qwen3-vl-tiny.onnx"
    argv = [
        "--model",
        "qwen3-vl-tiny",
        "--budget",
        str(K_PRUNED),
        "--random-weights",
        "--exporter",
        "torchscript",
        "--out",
        str(graph),
    ]
    assert main(argv) == 0
    return graph


@needs_llama
def test_run_answers_a_qwen3_vl_graph_through_llama_cpp_with_the_same_tokens_as_transformers(qwen3_graph, tmp_path, capsys):
    """The graph's kept rows with their DeepStack rows (Selection.deepstack) and, with --compare-full, all N with the
    tower's own: the same greedy tokens as transformers, and the same KV cache (fp32 both)."""
    from flashvlm_export.cli import main

    gguf_path = tmp_path / "q3.gguf"
    assert main(["gguf", "--model", "qwen3-vl-tiny", "--out", str(gguf_path)]) == 0
    common = ["run", "--graph", str(qwen3_graph), "--demo-image", str(tmp_path / "demo.png"), "--question", QUESTION,
              "--answer", "--compare-full", "--max-new-tokens", "5", "--force"]  # fmt: skip
    assert main(common + ["--llm-runtime", "llama.cpp", "--gguf", str(gguf_path)]) == 0
    out = capsys.readouterr().out
    assert "greedy decoding through llama.cpp (arch qwen3vl," in out
    assert main(common) == 0
    reference = capsys.readouterr().out

    def answer(text, label):
        line = text.split(f"Answer [{label}]: ", 1)[1].splitlines()[0]
        return line.split("KV cache ", 1)[1].split(":")[0], line.split("ids ", 1)[1]

    for label in (f"pruned K={K_PRUNED}", "full N=256"):
        assert answer(out, label) == answer(reference, label)


@needs_llama
def test_run_refuses_a_gguf_whose_architecture_the_installed_llama_cpp_lacks(qwen3_graph, tmp_path, capsys, monkeypatch):
    """run checks the GGUF against the installed llama.cpp before anything is written or selected (simulated as above;
    the file itself written past the gguf command's own check)."""
    from flashvlm_export.llm import gguf_file
    from flashvlm_export.models import qwen3_vl
    from flashvlm_export.models.registry import get_spec as spec_of

    from conftest import expect_one_line

    monkeypatch.setattr(qwen3_vl, "GGUF_ARCH", "qwen99")
    monkeypatch.setattr(gguf_file, "check_llama_cpp_has", lambda *args: None)
    planted = gguf_file.write_model_gguf(spec_of("qwen3-vl-tiny"), tmp_path / "q99.gguf", log=lambda *a: None)
    argv = ["run", "--graph", str(qwen3_graph), "--demo-image", str(tmp_path / "d.png"), "--question", "q", "--answer",
            "--llm-runtime", "llama.cpp", "--gguf", str(planted)]  # fmt: skip
    expect_one_line(capsys, argv, "qwen3-vl-tiny: the installed llama.cpp", "has no 'qwen99' architecture")
    assert not (tmp_path / "d.png").exists()  # refused before anything was written
