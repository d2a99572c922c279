"""Hostile input, by kind: each ends in one line on stderr, exit 2 (130/143 for signals), no traceback,
and the user's files exactly as they were (byte-equal, a link still the same link)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from flashvlm_export.artifacts import placement
from flashvlm_export.artifacts.placement import atomic_outputs
from flashvlm_export.artifacts.staging import reclaim_stale_staging
from flashvlm_export.cli import main
from flashvlm_export.errors import UsageError
from flashvlm_export.selector.config import SelectorConfig

from faults import killed_writer, run_cli, staging_folders, start_cli, wait_for_staging

# the fastest real export: the tiny selector at K=560 has 2 pruning rounds; TorchScript writes it in ~1 s
FAST = ["--model", "llava15-tiny", "--selector-only", "--budget", "560", "--exporter", "torchscript"]


def snapshot(folder: Path) -> dict:
    """Every entry under folder: a link as its target, a file as its bytes."""
    state = {}
    for path in sorted(folder.rglob("*")):
        key = str(path.relative_to(folder))
        if path.is_symlink():
            state[key] = ("link", os.readlink(path))
        elif path.is_file():
            state[key] = ("file", path.read_bytes())
        else:
            state[key] = ("dir",)
    return state


def one_line(err: str, code: int, expected: int = 2) -> str:
    assert code == expected, err
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def expect_error(capsys, argv, *fragments) -> str:
    code = main(argv)
    line = one_line(capsys.readouterr().err, code)
    assert line.startswith("flashvlm-export: error:"), line
    for fragment in fragments:
        assert fragment in line, line
    return line


@pytest.fixture
def user_files(tmp_path):
    """A folder holding the user's own files at the names an export would take."""
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "keep.onnx").write_bytes(b"user graph")
    (folder / "keep.json").write_text('{"mine": true}')
    return folder


# ---------------------------------------------------------------- values accepted that should be refused


@pytest.mark.parametrize(
    "flag, value, shown",
    [
        ("--eta", "nan", "--eta nan is not finite"),
        ("--top-p", "inf", "--top-p inf is not finite"),
        ("--attenuation", "-1", "[0, 1]"),
        ("--power", "0", "(0, 64]"),
        ("--text-temperature", "1e-9", "[1e-06, 1e+06]"),
        ("--important-ratio", "2", "[0, 1]"),
        ("--step", "0", "--step 0"),
        ("--workspace", "nan", "--workspace nan must be a positive number"),
    ],
)
def test_non_finite_or_out_of_range_hyperparameters_are_refused_with_their_range(capsys, user_files, flag, value, shown):
    before = snapshot(user_files)
    expect_error(capsys, [*FAST, flag, value, "--out", str(user_files / "new.onnx")], shown)
    assert snapshot(user_files) == before


def test_selector_config_rejects_nan_even_from_python():
    with pytest.raises(UsageError, match="not finite"):
        SelectorConfig(patch_temperature=float("nan"))
    with pytest.raises(UsageError, match="not a number"):
        SelectorConfig(eta="0.5")


@pytest.mark.parametrize(
    "argv, shown",
    [
        (["--t-max", str(10**9)], "--t-max 1000000000 needs about"),
        (["--batch", str(10**7)], "--batch 10000000 needs about"),
        (["--opset", "99"], "--opset 99 is too new"),
        (["--opset", "16"], "--opset 16 is too old"),
    ],
)
def test_shape_and_opset_flags_have_upper_bounds_that_say_why(capsys, user_files, argv, shown):
    before = snapshot(user_files)
    line = expect_error(capsys, [*FAST, *argv, "--out", str(user_files / "new.onnx")], shown)
    assert "memory" in line or "opset" in line
    assert snapshot(user_files) == before


@pytest.mark.parametrize("seed", ["-1", str(2**70)])
def test_random_weights_seed_outside_torchs_range_is_refused(capsys, user_files, seed):
    before = snapshot(user_files)
    argv = ["--model", "llava15-tiny", "--budget", "560", "--random-weights", "--seed", seed]
    expect_error(capsys, [*argv, "--out", str(user_files / "new.onnx")], f"--seed {seed} is out of range")
    assert snapshot(user_files) == before


# ---------------------------------------------------------------- paths the OS refuses


@pytest.mark.parametrize(
    "out, shown",
    [
        ("x" * 300 + ".onnx", "over this file system's limit"),
        ("/proc/flashvlm.onnx", "cannot be written"),
        ("a-folder.onnx", "is a folder"),
    ],
)
def test_paths_the_os_refuses_are_one_line_errors(capsys, user_files, out, shown):
    (user_files / "a-folder.onnx").mkdir()
    before = snapshot(user_files)
    target = out if out.startswith("/") else str(user_files / out)
    expect_error(capsys, [*FAST, "--force", "--out", target], shown)
    assert snapshot(user_files) == before


# ---------------------------------------------------------------- a disk that fills up during the write


def test_disk_full_mid_write_is_one_line_and_keeps_the_old_files(user_files):
    assert main([*FAST, "--out", str(user_files / "own.onnx")]) == 0  # --force replaces only the tool's own graph
    before = snapshot(user_files)
    run = run_cli(*FAST, "--force", "--out", str(user_files / "own.onnx"), cwd=user_files, file_size_limit=64 * 1024)
    line = one_line(run.stderr, run.returncode)
    assert "cannot write" in line and "EFBIG" in line, line
    assert snapshot(user_files) == before  # the old graph and sidecar, untouched; no staging left


# ---------------------------------------------------------------- broken checkpoints


def _tiny_checkpoint(folder: Path) -> Path:
    from safetensors.torch import save_file

    from flashvlm_export.models.llava import random_parts
    from flashvlm_export.models.registry import get_spec

    folder.mkdir()
    parts = random_parts(get_spec("llava15-tiny"))
    parts.config.to_json_file(str(folder / "config.json"))
    state = {f"model.multi_modal_projector.{k}": v.contiguous() for k, v in parts.projector.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"))
    return folder


@pytest.mark.parametrize("damage", ["broken-config", "foreign-config", "truncated-safetensors", "foreign-safetensors"])
def test_broken_checkpoint_folders_are_one_line_errors(capsys, tmp_path, damage):
    ckpt = _tiny_checkpoint(tmp_path / "ckpt")
    if damage == "broken-config":
        (ckpt / "config.json").write_text('{"model_type": "llava", "vision_config": ')
    elif damage == "foreign-config":
        (ckpt / "config.json").write_text('{"model_type": "bert", "hidden_size": 12}')
    elif damage == "truncated-safetensors":
        data = (ckpt / "model.safetensors").read_bytes()
        (ckpt / "model.safetensors").write_bytes(data[: len(data) // 2])
    else:
        (ckpt / "model.safetensors").write_bytes(b"PK\x03\x04 not a safetensors file at all")
    before = snapshot(ckpt)
    argv = ["--model", "llava15-tiny", "--budget", "560", "--model-path", str(ckpt), "--out-dir", str(tmp_path / "g")]
    expect_error(capsys, argv, str(ckpt))
    assert snapshot(ckpt) == before
    assert not (tmp_path / "g").exists() or list((tmp_path / "g").iterdir()) == []


# ---------------------------------------------------------------- sidecars and graph metadata


@pytest.mark.parametrize(
    "content, shown", [("{not json", "is not readable JSON"), ("[1, 2]", "not a record"), ('{"budget": 64}', "lacks")]
)
def test_broken_or_incomplete_engine_sidecar_is_one_line_error(capsys, tmp_path, content, shown):
    engine = tmp_path / "e.plan"
    engine.write_bytes(b"engine bytes")
    (tmp_path / "e.json").write_text(content)
    before = snapshot(tmp_path)
    expect_error(capsys, ["parity", "--engine", str(engine), "--no-save"], shown)
    assert snapshot(tmp_path) == before


@pytest.fixture(scope="module")
def fast_graph(tmp_path_factory) -> Path:
    graph = tmp_path_factory.mktemp("fast") / "s.onnx"
    assert main([*FAST, "--out", str(graph)]) == 0
    return graph


@pytest.mark.parametrize(
    "key, value, shown",
    [
        ("budget", "sixty", "'budget'"),
        ("budget", "9999", "'budget'"),
        ("selector_config", "{broken", "'selector_config'"),
        ("selector_config", '{"eta": NaN}', "'selector_config'"),
        ("graph", "video", "'graph'"),
        ("precision", "int4", "'precision'"),
    ],
)
def test_malformed_graph_metadata_is_one_line_error(capsys, tmp_path, fast_graph, key, value, shown):
    proto = onnx.load(str(fast_graph))
    for prop in proto.metadata_props:
        if prop.key == key:
            prop.value = value
    graph = tmp_path / "edited.onnx"
    onnx.save(proto, str(graph))
    capsys.readouterr()
    expect_error(capsys, ["parity", "--graph", str(graph), "--no-save", "--repeats", "1"], "malformed", shown)


def test_graph_sidecar_keeps_types_and_onnx_metadata_stays_strings(fast_graph):
    record = json.loads(fast_graph.with_suffix(".json").read_text())
    assert record["budget"] == 560 and record["batch"] == 1 and record["plugin"] is False
    assert record["selector_config"]["eta"] == 0.5 and record["selector_config"]["max_rounds"] is None
    props = {p.key: p.value for p in onnx.load(str(fast_graph), load_external_data=False).metadata_props}
    assert props["budget"] == "560" and json.loads(props["selector_config"])["step"] == 8


# ---------------------------------------------------------------- files replaced without --force


def test_dangling_symlink_at_the_output_is_the_users(capsys, user_files):
    (user_files / "new.onnx").symlink_to(user_files / "nowhere.onnx")
    before = snapshot(user_files)
    expect_error(capsys, [*FAST, "--out", str(user_files / "new.onnx")], "symbolic link", "--force")
    assert snapshot(user_files) == before and (user_files / "new.onnx").is_symlink()


def test_symlink_to_a_users_file_is_neither_followed_nor_replaced(capsys, user_files):
    (user_files / "new.onnx").symlink_to("keep.onnx")
    before = snapshot(user_files)
    expect_error(capsys, [*FAST, "--out", str(user_files / "new.onnx")], "--force")
    assert snapshot(user_files) == before


def test_force_neither_replaces_a_link_nor_follows_it(capsys, user_files):
    (user_files / "new.onnx").symlink_to("keep.onnx")
    before = snapshot(user_files)
    expect_error(capsys, [*FAST, "--force", "--out", str(user_files / "new.onnx")], "symbolic link", "only files this tool wrote")
    assert snapshot(user_files) == before  # the link and its target, as they were


def test_a_file_that_appears_during_the_write_is_not_replaced(user_files):
    finals = [user_files / "g.onnx", user_files / "g.json"]
    with pytest.raises(UsageError, match="appeared while this run was writing"):
        with atomic_outputs(finals, overwrite=False) as (graph, sidecar):
            graph.write_bytes(b"new graph")
            sidecar.write_text("{}")
            (user_files / "g.json").write_text("someone else's")  # another export, or the user, meanwhile
    assert not (user_files / "g.onnx").exists()  # the graph was placed first, then taken back: both or neither
    assert (user_files / "g.json").read_text() == "someone else's"
    assert staging_folders(user_files) == []


def test_graph_and_sidecar_land_together_or_the_old_pair_stays(monkeypatch, user_files):
    before = snapshot(user_files)
    place = placement._place_exclusive

    def fail_on_sidecar(temp, final):
        if final.suffix == ".json":
            raise OSError(28, "No space left on device")  # ENOSPC while placing the second file
        place(temp, final)

    monkeypatch.setattr(placement, "_place_exclusive", fail_on_sidecar)
    with pytest.raises(UsageError, match="ENOSPC"):
        # own_only=False: the restore path alone, whoever wrote the old pair (test_force.py checks whose may be replaced)
        pair = [user_files / "keep.onnx", user_files / "keep.json"]
        with atomic_outputs(pair, overwrite=True, own_only=False) as (graph, sidecar):
            graph.write_bytes(b"new graph")
            sidecar.write_text("{}")
    assert snapshot(user_files) == before


# ---------------------------------------------------------------- interruptions


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupted_export_exits_with_one_line_and_leaves_nothing(user_files, sig, code):
    before = snapshot(user_files)
    # dynamo takes ~20 s for 64 rounds: long enough to be stopped in the middle
    argv = ["--model", "llava15-tiny", "--selector-only", "--budget", "64", "--out", str(user_files / "new.onnx")]
    child = start_cli(*argv, cwd=user_files)
    wait_for_staging(user_files, child)
    child.send_signal(sig)
    _, err = child.communicate(timeout=120)
    line = one_line(err, child.returncode, code)
    assert "no partial files were kept" in line
    assert snapshot(user_files) == before


def test_after_a_sigkill_mid_write_the_next_export_reclaims_the_staging(user_files):
    left = killed_writer(user_files)
    assert (left / "g.onnx").stat().st_size > 0  # half a graph, as a killed export leaves it
    run = run_cli(*FAST, "--out", str(user_files / "new.onnx"), cwd=user_files)
    assert run.returncode == 0, run.stderr
    assert "reclaimed 1 stale staging folder" in run.stdout
    assert staging_folders(user_files) == []
    assert (user_files / "new.onnx").is_file() and (user_files / "keep.onnx").read_bytes() == b"user graph"


def test_a_live_writers_staging_is_never_reclaimed(tmp_path):
    with atomic_outputs([tmp_path / "g.onnx"]) as (temp,):
        temp.write_bytes(b"in progress")
        assert reclaim_stale_staging(tmp_path, log=lambda _: None) == []
        assert temp.read_bytes() == b"in progress"


def test_an_old_ownerless_staging_folder_is_reclaimed(tmp_path):
    old = tmp_path / ".flashvlm-tmp-old"
    old.mkdir()
    (old / "g.onnx").write_bytes(b"half")
    os.utime(old, (0, 0))
    lines = []
    assert reclaim_stale_staging(tmp_path, log=lines.append) == [old]
    assert not old.exists() and len(lines) == 1


# ---------------------------------------------------------------- --help


def test_help_is_fast_and_lists_the_subcommands():
    script = (
        "import sys\n"
        "from flashvlm_export.cli import bench, build_plugin, evaluate, export\n"
        "text = export.parser().format_help(); bench.parser().format_help(); build_plugin.parser().format_help()\n"
        "evaluate.parser().format_help()\n"
        "print('torch' in sys.modules, 'onnx' in sys.modules); print(text.splitlines()[1])\n"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert run.returncode == 0, run.stderr
    imported, usage = run.stdout.splitlines()[:2]
    assert imported == "False False"  # printing defaults imports neither torch nor onnx
    assert "{parity,run,bench,eval,sidecar,build-plugin,triton,gguf}" in usage  # every command (run and sidecar were missing)


# ---------------------------------------------------------------- bounds and progress helpers


def test_parity_repeats_bound_refuses_a_corpus_larger_than_memory():
    from flashvlm_export.limits import check_repeats_fit
    from flashvlm_export.models.registry import get_spec

    spec = get_spec("llava15")
    check_repeats_fit(2, 14, spec, 576, 128, 1, selector_only=True)  # the default: fine
    with pytest.raises(UsageError, match=r"--repeats 10000000 holds about .* use --repeats \d+ or less"):
        check_repeats_fit(10**7, 14, spec, 576, 128, 1, selector_only=True)


def test_progress_ticks_the_elapsed_time_on_a_terminal_after_one_opening_line():
    import io
    import time

    from flashvlm_export.progress import progress

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    stream, lines = Terminal(), []
    with progress("ONNX: exporting", log=lines.append, stream=stream):
        time.sleep(1.3)
    assert lines == ["ONNX: exporting"]
    assert "1s elapsed" in stream.getvalue()


def test_a_missing_onnxruntime_wheel_is_one_line_naming_the_extra(capsys, monkeypatch, fast_graph):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if neither the cpu nor the gpu extra were installed
    capsys.readouterr()
    expect_error(capsys, ["parity", "--graph", str(fast_graph), "--no-save", "--repeats", "1"], "'onnxruntime'", ".[cpu]")
