"""CLI: smoke runs, --help, and every bad-input path (one line, exit code 2, nothing left behind)."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from flashvlm_export.artifacts.placement import atomic_outputs
from flashvlm_export.cli import bench, build_plugin, export, gguf, main, parity, run, sidecar

CLI = str(Path(sys.executable).with_name("flashvlm-export"))


def run_cli(*args, cwd, env=None):
    return subprocess.run([CLI, *args], cwd=cwd, capture_output=True, text=True, env={**os.environ, **(env or {})})


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


def expect_usage_error(capsys, argv, *fragments):
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("flashvlm-export: error:"), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def test_export_and_parity_smoke_on_the_tiny_model(tmp_path):
    """The default exporter (dynamo) end to end; budgets near N keep its unrolled rounds few (2-3), and so the test fast."""
    run = run_cli(
        "--model", "llava15-tiny", "--budget", "560,544", "--fused", "--random-weights", "--out-dir", "graphs", cwd=tmp_path
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "graphs/llava15-tiny_b560.onnx").is_file() and (tmp_path / "graphs/llava15-tiny_b544.json").is_file()
    assert run.stdout.count("ONNX: export success") == 2
    assert all(
        " saved as 'graphs/llava15-tiny_b" in line and "MB)" in line
        for line in run.stdout.splitlines()
        if "ONNX: export success" in line
    )
    assert run.stdout.count("ONNX: exporting the full graph") == 2 and "(about " not in run.stdout  # progress, no guess
    assert "Model: loaded llava15-tiny (random weights, seed 0)" in run.stdout
    assert "flashvlm-export parity --graph graphs/llava15-tiny_b560.onnx --random-weights" in run.stdout
    parity = run_cli("parity", "--graph", "graphs/llava15-tiny_b560.onnx", "--repeats", "1", cwd=tmp_path)
    assert parity.returncode == 0, parity.stdout + parity.stderr
    assert "layer 1 decisions: held (3/3 images replayed exactly" in parity.stdout  # static torch, then ONNX Runtime
    assert parity.stdout.strip().splitlines()[-1].startswith("PASSED")
    assert (tmp_path / "graphs/parity/llava15-tiny_b560_inputs.json").is_file()
    again = run_cli("--model", "llava15-tiny", "--budget", "560", "--random-weights", "--out-dir", "graphs", cwd=tmp_path)
    assert again.returncode == 2 and "--force" in again.stderr  # never silently overwrite


def test_selector_only_export_and_standalone_parity(tmp_path, capsys):
    # budgets near N: few unrolled rounds, so the default exporter (dynamo) stays fast; many rounds: test_onnx_selector
    assert main(["--model", "llava15-tiny", "--selector-only", "--budget", "560", "--out", str(tmp_path / "s.onnx")]) == 0
    assert (tmp_path / "s.onnx").is_file() and (tmp_path / "s.json").is_file()
    code = main(["parity", "--model", "llava15-tiny", "--budget", "552", "--repeats", "1", "--no-save"])
    out = capsys.readouterr().out
    assert (
        code == 0
        and "PASSED" in out
        and "onnxruntime[CPU]:" in out
        and "layer 3 outcome (reported, not a gate): identical index sets" in out
    )


@pytest.mark.parametrize("command", [export, parity, run, bench, sidecar, build_plugin, gguf], ids=lambda m: m.__name__)
def test_help_documents_every_flag(command):
    for action in command.parser()._actions:
        assert action.help, f"{action.option_strings} has no help"


COMMANDS = ["parity", "run", "bench", "sidecar", "build-plugin", "gguf"]


def test_top_level_help_lists_every_command_with_one_line(tmp_path):
    run = run_cli("--help", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    for name in COMMANDS:
        listed = [line for line in lines if line.split()[:1] == [name]]
        assert len(listed) == 1 and len(listed[0].split()) > 2, (name, run.stdout)  # the name, then its line


@pytest.mark.parametrize("name", COMMANDS)
def test_each_commands_help_works(capsys, name):
    with pytest.raises(SystemExit) as stopped:
        main([name, "--help"])
    assert stopped.value.code == 0 and capsys.readouterr().out.startswith(f"usage: flashvlm-export {name}")


def test_a_misspelt_command_gets_the_nearest_one(capsys):
    expect_usage_error(capsys, ["rnu", "--image", "demo.png"], "unknown command 'rnu'; did you mean run?")
    line = expect_usage_error(capsys, ["xyzzy"], "unknown command 'xyzzy'")
    assert all(name in line for name in COMMANDS)


@pytest.mark.parametrize("argv", [["--imag", "demo.png"], ["run", "--imag", "demo.png", "--question", "q"]])
def test_a_flags_prefix_is_not_taken_for_the_flag(capsys, argv):
    line = expect_usage_error(capsys, argv, "unrecognized arguments: --imag")
    assert "invalid int value" not in line  # not read as --image-size


def _out_of_range():
    from flashvlm_export.selector.config import RANGES

    cases = [(name, str(high * 2 + 1)) for name, (_, high, _, _) in RANGES.items()]
    return cases + [("step", "0"), ("max_rounds", "0")]


@pytest.mark.parametrize("name, value", _out_of_range())
def test_a_hyperparameter_out_of_range_names_its_flag(tmp_path, capsys, name, value):
    flag = "--" + name.replace("_", "-")
    argv = ["--model", "llava15-tiny", "--selector-only", flag, value, "--out", str(tmp_path / "s.onnx")]
    line = expect_usage_error(capsys, argv, f"error: {flag} {value} ")
    assert name + "=" not in line and ("out of range" in line or ">= 1" in line)
    assert files_under(tmp_path) == []


def test_a_selector_setting_error_carries_its_field_name():
    from flashvlm_export.selector.config import SelectorConfig, SettingError

    with pytest.raises(SettingError) as caught:
        SelectorConfig(top_p=2.0)
    assert caught.value.name == "top_p" and caught.value.named("--top-p").startswith("--top-p 2.0 is out of range")


def test_counts_take_the_singular_for_one():
    from flashvlm_export.progress import plural

    assert [plural(n, "pruning round") for n in (0, 1, 2)] == ["0 pruning rounds", "1 pruning round", "2 pruning rounds"]


@pytest.mark.parametrize("budget", ["1", "577", "0", "12x"])
def test_bad_budget_is_a_one_line_error(tmp_path, capsys, budget):
    expect_usage_error(
        capsys, ["--model", "llava15-tiny", "--random-weights", "--budget", budget, "--out-dir", str(tmp_path / "g")], "--budget"
    )
    assert files_under(tmp_path) in ([], ["g"])


def test_unknown_model_suggests_the_nearest_name(capsys):
    line = expect_usage_error(capsys, ["--model", "llava1.5", "--random-weights"], "llava1.5")
    assert "did you mean --model llava15" in line


def test_missing_weights_offline_names_both_fixes(tmp_path):
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_CACHE": str(tmp_path / "hf/hub"), "HF_HUB_OFFLINE": "1"}
    run = run_cli("--model", "llava15", "--budget", "128", "--out-dir", "graphs", cwd=tmp_path, env=env)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert "--model-path" in run.stderr and "--random-weights" in run.stderr
    assert not (tmp_path / "graphs").exists() or files_under(tmp_path / "graphs") == []


def test_model_path_without_checkpoint_is_rejected(tmp_path, capsys):
    expect_usage_error(
        capsys, ["--model-path", str(tmp_path), "--out-dir", str(tmp_path / "g")], "--model-path", "--random-weights"
    )


@pytest.mark.parametrize("kind, said", [("file", "is a file, not a checkpoint folder"), ("nothing", "does not exist")])
def test_model_path_that_is_a_file_or_missing_is_named_so_not_a_folder_missing_its_files(tmp_path, capsys, kind, said):
    """A path of the wrong kind is named as what it is (as --image names a folder), not as 'holds no config.json'."""
    path = tmp_path / "checkpoint"
    if kind == "file":
        path.write_text("{}")
    err = expect_usage_error(capsys, ["--model-path", str(path), "--out-dir", str(tmp_path / "g")], f"--model-path {path} {said}")
    assert "config.json" not in err and not (tmp_path / "g").exists()


def test_unwritable_output_directory_is_rejected_before_work(tmp_path, capsys):
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    expect_usage_error(
        capsys,
        ["--model", "llava15-tiny", "--random-weights", "--out-dir", str(blocker / "graphs")],
        "cannot create output directory",
    )


def test_wrong_image_size_is_rejected(tmp_path, capsys):
    expect_usage_error(capsys, ["--model", "llava15", "--random-weights", "--image-size", "224"], "--image-size 224", "336")


def test_existing_graph_is_not_overwritten_without_force(tmp_path, capsys):
    target = tmp_path / "mine.onnx"
    target.write_bytes(b"user data")
    expect_usage_error(capsys, ["--model", "llava15-tiny", "--selector-only", "--out", str(target)], "--force")
    assert target.read_bytes() == b"user data"


@pytest.fixture(scope="module")
def tiny_selector(tmp_path_factory) -> Path:
    """One tiny selector graph for the input-validation tests (what they check does not depend on the exporter, so
    the faster torchscript one)."""
    graph = tmp_path_factory.mktemp("selector") / "s.onnx"
    assert (
        main(["--model", "llava15-tiny", "--selector-only", "--budget", "16", "--exporter", "torchscript", "--out", str(graph)])
        == 0
    )
    return graph


def test_nan_input_to_parity_is_rejected(tiny_selector, tmp_path, capsys):
    from polygraphy.json import save_json

    from flashvlm_export.parity.corpus import Geometry, selector_corpus

    graph = tiny_selector
    case = selector_corpus(Geometry(576, 32, 64, 32, 1), repeats=1)[0]
    case.feeds["cls_attention"][0, 5] = np.nan
    save_json([case.feeds], str(tmp_path / "nan.json"))
    capsys.readouterr()
    expect_usage_error(
        capsys,
        ["parity", "--graph", str(graph), "--load-inputs", str(tmp_path / "nan.json"), "--no-save"],
        "NaN",
        "cls_attention",
    )


def test_wrong_shaped_parity_input_names_the_expected_shape(tiny_selector, tmp_path, capsys):
    from polygraphy.json import save_json

    graph = tiny_selector
    save_json([{"vision_features": np.zeros((1, 500, 32), np.float32)}], str(tmp_path / "bad.json"))
    capsys.readouterr()
    expect_usage_error(capsys, ["parity", "--graph", str(graph), "--load-inputs", str(tmp_path / "bad.json"), "--no-save"])


def test_plugin_with_the_torchscript_exporter_is_rejected(tmp_path, capsys):
    argv = [
        "--model",
        "llava15-tiny",
        "--selector-only",
        "--plugin",
        "--exporter",
        "torchscript",
        "--out",
        str(tmp_path / "p.onnx"),
    ]
    expect_usage_error(capsys, argv, "--plugin", "dynamo")
    assert files_under(tmp_path) == []


def test_unknown_flag_is_a_one_line_error(capsys):
    expect_usage_error(capsys, ["--budgett", "128"], "--budgett")


def test_failed_write_leaves_no_partial_files(tmp_path):
    finals = [tmp_path / "a.onnx", tmp_path / "a.json"]
    with pytest.raises(RuntimeError):
        with atomic_outputs(finals) as temps:
            temps[0].write_bytes(b"half a graph")
            raise RuntimeError("export failed")
    assert files_under(tmp_path) == []


def test_missing_weights_is_reported_before_an_existing_graph(tmp_path):
    (tmp_path / "graphs").mkdir()
    (tmp_path / "graphs/llava15_b128.onnx").write_bytes(b"from set-up")
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_CACHE": str(tmp_path / "hf/hub"), "HF_HUB_OFFLINE": "1"}
    run = run_cli("--model", "llava15", "--budget", "128", cwd=tmp_path, env=env)
    assert run.returncode == 2 and "--random-weights" in run.stderr and "already exists" not in run.stderr
    assert (tmp_path / "graphs/llava15_b128.onnx").read_bytes() == b"from set-up"


def test_weights_source_round_trips_through_its_metadata_tag():
    from flashvlm_export.errors import UsageError
    from flashvlm_export.models.weights import WeightsSource

    for source in (WeightsSource(seed=7), WeightsSource(path="/ckpt/llava")):
        assert WeightsSource.from_tag(source.tag) == source
    assert WeightsSource(seed=7).flags() == "--random-weights --seed 7"
    with pytest.raises(UsageError, match="malformed"):
        WeightsSource.from_tag("random:seven")


def test_text_inputs_are_built_at_the_graphs_batch():
    import torch

    from flashvlm_export.models.prompt import text_inputs

    embeds, mask = text_inputs(torch.nn.Embedding(10, 4), [1, 2, 9, 3], t_max=6, image_token_index=9, batch=3)
    assert embeds.shape == (3, 6, 4) and mask.shape == (3, 6) and mask.sum().item() == 9
