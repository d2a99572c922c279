"""Issue 35: our Qwen2.5-VL graphs beside OpenVINO GenAI's CDPruner, on one machine, one photo, one question, one K.

Run in our venv, after scripts/setup_openvino_genai.sh (the peer's own venv) and scripts/peer_checkpoint.py (one
checkpoint both sides read):

    python scripts/bench_openvino_genai.py --checkpoint CKPT --ir-dir CKPT-ov \\
        --peer-python ~/.cache/flashvlm-export/openvino-genai-venv/bin/python --budgets 64,128 --out-dir bench-openvino-genai

1. The peer: scripts/openvino_genai_peer.py in its venv (converts CKPT to IR once, then VLMPipeline with
   pruning_ratio keeping K of N, max_new_tokens=1): time to first token, GenAI's embeddings preparation (vision
   + text embedding + CDPruner + merge), vision encoding, and CDPruner's own logged time.
2. Ours: a split export of CKPT (--model-path, budgets K...) once; then per runtime (ONNX Runtime CPU, OpenVINO CPU)
   the photo to the K kept rows (image preprocessing, prompt embedding, encoder, selector), and the selector alone;
   and the prefill of the same language model (the peer's own openvino_language_model.xml, OpenVINO CPU, f32) on
   the prompt with the K rows spliced in, lm_head on the last position as GenAI computes it: photo to first token.
3. The two methods' kept sets: GenAI exposes none of its indices (the peer script says why); ours are written.

Writes results.json and results.md to --out-dir. Times are medians of --repeats runs after one warm-up.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

MODEL = "qwen2.5-vl-7b"
QUESTION = "What is the man in the red coat holding?"  # the peer script's default, passed to both sides
LM_XML = "openvino_language_model.xml"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, required=True, help="folder from scripts/peer_checkpoint.py")
    p.add_argument("--ir-dir", type=Path, required=True, help="the peer's OpenVINO IR folder (converted once)")
    p.add_argument("--peer-python", type=Path, required=True, help="python of the peer venv (setup_openvino_genai.sh)")
    p.add_argument("--budgets", default="64,128", help="K, a comma list (default: 64,128)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out-dir", type=Path, default=Path("bench-openvino-genai"))
    p.add_argument("--question", default=QUESTION)
    return p.parse_args(argv)


def write_photo(path: Path) -> Path:
    """The repository's demo still life at 448x448 (Qwen's square at the checkpoint's pixel budget: no resize)."""
    from flashvlm_export.runtime.image import demo_picture

    path.parent.mkdir(parents=True, exist_ok=True)
    demo_picture(448).resize((448, 448)).save(path)
    return path


WEIGHTS = {"float16": "fp16", "float32": "fp32"}  # checkpoint dtype -> the IR weight format that holds it exactly


def check_same_weights(args) -> str:
    """Both sides must read the same values: the checkpoint's dtype and the IR's weight format (the peer's marker)."""
    dtype = json.loads((args.checkpoint / "config.json").read_text()).get("dtype")
    marker = args.ir_dir / ".peer-converted"
    if marker.is_file():
        form = json.loads(marker.read_text()).get("weight_format")
        if WEIGHTS.get(dtype) != form:
            raise SystemExit(
                f"{args.checkpoint} holds {dtype} weights and {args.ir_dir} {form}: not the same values on both sides"
            )
    elif dtype not in WEIGHTS:
        raise SystemExit(f"{args.checkpoint} holds {dtype} weights; write it with peer_checkpoint.py --dtype float16")
    return dtype


def peer(args, photo: Path) -> list[dict]:
    """The peer's JSON lines, measured now (and kept in --out-dir/peer.jsonl)."""
    script = Path(__file__).with_name("openvino_genai_peer.py")
    cmd = [str(args.peer_python), str(script), "--checkpoint", str(args.checkpoint), "--ir-dir", str(args.ir_dir)]
    cmd += ["--keep", args.budgets, "--image", str(photo), "--question", args.question, "--repeats", str(args.repeats)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    lines = [line for line in out.splitlines() if line.startswith("{")]
    (args.out_dir / "peer.jsonl").write_text("\n".join(lines) + "\n")
    return [json.loads(line) for line in lines]


def export_split(args, budgets: list[int]) -> Path:
    folder = args.out_dir / "graphs"
    manifest = next(folder.glob("*/manifest.json"), None)
    if manifest is None:
        cli = str(Path(sys.executable).with_name("flashvlm-export"))  # this venv's
        cmd = [cli, "--model", MODEL, "--model-path", str(args.checkpoint), "--split", "--budget", ",".join(map(str, budgets))]
        subprocess.run([*cmd, "--out-dir", str(folder)], check=True)
        manifest = next(folder.glob("*/manifest.json"))
    return manifest


class SameLanguageModel:
    """The peer's stateful language model IR (OpenVINO CPU, f32): one prefill, the first token's argmax.

    As GenAI does at load (its apply_slice_before_matmul_transformation), lm_head sees the last position only: the
    prefill computes one row of logits, not L (152064-wide each)."""

    def __init__(self, ir_dir: Path):
        import openvino as ov
        import openvino.opset13 as ops

        core = ov.Core()
        model = core.read_model(str(ir_dir / LM_XML))
        head = model.outputs[0].get_node().input_value(0).get_node()
        while head.get_type_name() != "MatMul":
            head = head.input_value(0).get_node()
        hidden = head.input_value(0)
        last = ops.slice(hidden, np.array([-1]), np.array([np.iinfo(np.int64).max]), np.array([1]), np.array([1]))
        head.input(0).replace_source_output(last.output(0))
        compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        self.request = compiled.create_infer_request()
        self.names = {i.get_any_name() for i in compiled.inputs}

    def first_token(self, llm_input) -> int:
        embeds = llm_input.inputs_embeds.detach().float().numpy()
        feeds = {"inputs_embeds": embeds, "attention_mask": np.ones(embeds.shape[:2], np.int64)}
        feeds["position_ids"] = llm_input.position_ids.numpy().astype(np.int64)
        if "beam_idx" in self.names:
            feeds["beam_idx"] = np.zeros(embeds.shape[0], np.int32)
        self.request.reset_state()  # a new prompt: no KV cache of the last one
        logits = self.request.infer(feeds)[self.request.model_outputs[0]]
        return int(np.argmax(logits[0, -1]))


def ours(args, manifest_path: Path, photo: Path, budgets: list[int]) -> list[dict]:
    """Per runtime and K, --repeats runs after one warm-up, each timed step by step from the photo to the first token."""
    from flashvlm_export.backend import CPU, OPENVINO, runtime_label
    from flashvlm_export.export.interface import INDICES, PIXEL_VALUES, POSITIONS, TEXT_EMBEDS, TEXT_MASK, VISUAL_EMBEDS
    from flashvlm_export.export.manifest import read_manifest
    from flashvlm_export.models.adapter import get_parts
    from flashvlm_export.models.prompt import prompt_token_ids, text_inputs
    from flashvlm_export.models.weights import WeightsSource
    from flashvlm_export.runtime.answer import llm_input
    from flashvlm_export.runtime.chain import OpenVinoChain, OrtChain
    from flashvlm_export.runtime.image import prepare_image
    from flashvlm_export.runtime.tokenizer import load_tokenizer

    manifest = read_manifest(manifest_path)
    request = manifest.request(budgets[0])
    spec = request.spec
    parts = get_parts(spec, WeightsSource(path=str(args.checkpoint)), with_embeddings=True)
    tokenizer, _ = load_tokenizer(spec, args.checkpoint)
    language_model = SameLanguageModel(args.ir_dir)

    def one_run(chain, k: int) -> dict:
        marks = [time.perf_counter()]
        pixels = prepare_image(photo, spec, args.checkpoint).pixel_values
        ids = prompt_token_ids(tokenizer, args.question, spec)
        text, mask = text_inputs(parts.embed_tokens, ids, request.t_max, spec.image_token_index)
        feeds = {PIXEL_VALUES: pixels.numpy(), TEXT_EMBEDS: text.numpy(), TEXT_MASK: mask.numpy()}
        marks.append(time.perf_counter())
        chain.encode(feeds)
        marks.append(time.perf_counter())
        out = chain.select(feeds, k)
        marks.append(time.perf_counter())
        rows_k = torch.from_numpy(out[VISUAL_EMBEDS][0].copy())
        positions = torch.from_numpy(out[POSITIONS][0].astype(np.int64))
        token = language_model.first_token(llm_input(parts.embed_tokens, ids, spec, rows_k, positions))
        marks.append(time.perf_counter())
        steps = np.diff(marks) * 1e3
        return dict(inputs=steps[0], encoder=steps[1], selector=steps[2], prefill=steps[3], ttft=marks[-1] - marks[0],
                    token=token, indices=out[INDICES][0].tolist(), prompt=len(ids) - 1 + k)  # fmt: skip

    rows = []
    for provider in (CPU, OPENVINO):
        start = time.perf_counter()
        chain = OrtChain(manifest, CPU) if provider == CPU else OpenVinoChain(manifest)
        started = time.perf_counter() - start
        for k in budgets:
            one_run(chain, k)  # warm-up
            runs = [one_run(chain, k) for _ in range(args.repeats)]

            def med(key, runs=runs):
                return statistics.median(r[key] for r in runs)

            rows.append(
                dict(
                    side="flashvlm-export",
                    runtime=runtime_label(provider),
                    budget=k,
                    tokens=request.tokens,
                    start_s=round(started, 2),
                    photo_to_kept_ms=round(statistics.median(r["inputs"] + r["encoder"] + r["selector"] for r in runs), 1),
                    inputs_ms=round(med("inputs"), 1),
                    encoder_ms=round(med("encoder"), 1),
                    selector_ms=round(med("selector"), 2),
                    prefill_ms=round(med("prefill"), 1),
                    ttft_ms=round(1e3 * med("ttft"), 1),
                    prompt_tokens=runs[-1]["prompt"],
                    first_token=runs[-1]["token"],
                    kept_indices=runs[-1]["indices"],
                )
            )
            print(json.dumps({key: v for key, v in rows[-1].items() if key != "kept_indices"}), flush=True)
        del chain
    return rows


def markdown(peer_rows: list[dict], our_rows: list[dict], setup: dict) -> str:
    lines = [
        "| side | runtime | K | photo to kept rows (ms) | vision encoder (ms) | pruning step (ms) | TTFT (ms) | prompt tokens |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in our_rows:
        lines.append(
            f"| flashvlm-export | {r['runtime']} | {r['budget']} | {r['photo_to_kept_ms']:.0f} | {r['encoder_ms']:.0f} | "
            f"{r['selector_ms']:.1f} (selector graph) | {r['ttft_ms']:.0f} | {r['prompt_tokens']} |"
        )
    for r in peer_rows:
        pruning = r.get("pruning_total_ms", {}).get("median")
        lines.append(
            f"| OpenVINO GenAI (CDPruner) | OpenVINO CPU | {r['kept_visual_tokens']} | {r['prepare_embeddings_ms']['median']:.0f} | "
            f"{r['vision_encoding_ms']['median']:.0f} | {'-' if pruning is None else f'{pruning:.0f} (whole ms, its log)'} | "
            f"{r['ttft_ms']['median']:.0f} | {r['input_tokens']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    budgets = [int(k) for k in args.budgets.split(",")]
    dtype = check_same_weights(args)
    photo = write_photo(args.out_dir / "photo.png")
    peer_lines = peer(args, photo)
    setup = next(line["setup"] for line in peer_lines if "setup" in line)
    peer_rows = [line for line in peer_lines if "keep_requested" in line]
    print(json.dumps(dict(peer=peer_rows)), flush=True)
    manifest = export_split(args, budgets)
    our_rows = ours(args, manifest, photo, budgets)
    record = dict(
        date=time.strftime("%Y-%m-%d"),
        machine=f"{os.cpu_count()} CPUs, {os.uname().machine}",
        checkpoint=str(args.checkpoint),
        weights=f"{dtype} checkpoint; the peer's IR holds the same values; both compute in f32",
        columns=dict(
            photo_to_kept_ms="ours: PNG decode + preprocessing + prompt embedding + encoder + selector; the peer: GenAI's "
            "prepare_embeddings (preprocessing, vision, text embedding, CDPruner, merge; the photo decoded before)",
            encoder_ms="ours: the encoder graph; the peer: not separable (GenAI's vision_encoding covers a part of it)",
            pruning="ours: the selector graph; the peer: CDPruner's logged 'Total Pruning Time' (whole ms)",
            prefill_ms="ours: the splice and the peer's own language model IR (lm_head on the last position)",
            start_s="ours: every session ready, the OpenVINO model cache as found in the split folder",
        ),
        question=args.question,
        peer_setup=setup,
        peer=peer_rows,
        ours=our_rows,
        overlap="not computed: OpenVINO GenAI exposes no kept indices (" + peer_rows[0]["kept_indices_note"] + ")",
    )
    (args.out_dir / "results.json").write_text(json.dumps(record, indent=1) + "\n")
    (args.out_dir / "results.md").write_text(markdown(peer_rows, our_rows, setup))
    print((args.out_dir / "results.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
