"""The run config schema: ranges, choices, did-you-mean, YAML round trip, and a CLI fuzz test
(hypothesis over config values and overrides: a bad value exits 2 with one line naming the
field, and nothing is written)."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from attnkit import UsageError
from attnkit.cli import main
from attnkit.train.config import (
    ConfigError,
    Precision,
    RunConfig,
    TrainConfig,
    apply_overrides,
    config_changes,
    resolve_config,
    run_config_from_dict,
)

# One thread, no TensorBoard, and one step should a bad value ever pass. Set with --set (not
# flags), and left out when the fuzzed field is one of them: --set wins over the file.
FAST = {"train.num_threads": 1, "train.tensorboard": "false", "train.max_steps": 1}


def test_values_are_typed_and_enums_are_enums() -> None:
    config = resolve_config({"preset": "tiny", "train": {"precision": "bf16", "lr": "1e-3",
                                                         "betas": [0.8, 0.9]}}, family="vit")
    assert config.train.precision is Precision.BF16 and f"{config.train.precision}" == "bf16"
    assert config.train.lr == 1e-3  # YAML 1.1 reads 1e-3 as a string; the schema converts it
    assert config.train.betas == (0.8, 0.9)
    assert config.model.d_model == 32 and config.model.family == "vit"  # preset, then family


def test_round_trip_through_yaml() -> None:
    config = resolve_config({"preset": "tiny", "model": {"attention": ["mha", "gated"],
                                                         "num_layers": 2}}, family="vit")
    text = yaml.safe_dump(config.to_dict(), sort_keys=False)
    back = run_config_from_dict(yaml.safe_load(text))
    assert back == config and config_changes(config, back) == {}


@pytest.mark.parametrize("override,field,allowed", [
    ("train.grad_clip=-1", "train.grad_clip=-1", "greater than 0"),
    ("train.lr=0", "train.lr=0", "greater than 0"),
    ("train.epochs=0", "train.epochs=0", "greater than or equal to 1"),
    ("train.max_steps=0", "train.max_steps=0", "greater than or equal to 1"),
    ("train.warmup_fraction=3", "train.warmup_fraction=3", "less than 1"),
    ("train.min_lr_ratio=5", "train.min_lr_ratio=5", "less than or equal to 1"),
    ("train.weight_decay=-1", "train.weight_decay=-1", "greater than or equal to 0"),
    ("train.num_threads=-1", "train.num_threads=-1", "greater than or equal to 1"),
    ("train.device=foo", "train.device='foo'", "must be auto, cpu, mps, cuda or cuda:N"),
    ("train.precision=fp16", "train.precision='fp16'", "'auto', 'bf16' or 'fp32'"),
    ("model.d_model=0", "model.d_model=0", "greater than or equal to 1"),
    ("model.norm=batchnorm", "model.norm='batchnorm'", "'layernorm' or 'rmsnorm'"),
    ("model.dropout=1.5", "model.dropout=1.5", "less than 1"),
    ("name=a/b", "name='a/b'", "plain directory name"),
])
def test_bad_values_name_field_value_range_and_fix(override: str, field: str,
                                                   allowed: str) -> None:
    with pytest.raises(ConfigError) as info:
        resolve_config(apply_overrides({"preset": "tiny"}, [override]), family="vit")
    message = str(info.value)
    assert message.startswith(f"{field} is not allowed") and allowed in message, message
    assert "\n" not in message
    section_key = override.split("=")[0]
    if "." in section_key:
        assert f"--set {section_key}=" in message  # the fix


@pytest.mark.parametrize("raw,expected", [
    ({"train": {"lrr": 1}}, "unknown train option 'lrr'; did you mean 'lr'?"),
    ({"model": {"num_head": 2}}, "unknown model option 'num_head'; did you mean 'num_heads'?"),
    ({"trian": {}}, "unknown config option 'trian'; did you mean 'train'?"),
    ({"train": 3}, "config section 'train' must be a mapping"),
])
def test_unknown_keys_suggest_the_closest(raw: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError, match=expected.replace("?", r"\?")):
        resolve_config(raw, family="vit")


def test_assignment_is_validated_too() -> None:
    config = TrainConfig()
    with pytest.raises(ValueError, match="greater than 0"):
        config.lr = -1.0
    assert isinstance(ConfigError("x"), UsageError)


def test_run_config_rejects_unknown_top_level_keys() -> None:
    with pytest.raises(ConfigError, match="did you mean 'out_dir'"):
        run_config_from_dict({"outdir": "x"})
    assert RunConfig().train.checkpoint_minutes > 0  # time-based checkpoints by default


# --- CLI fuzz -------------------------------------------------------------------------------

_BAD_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "train.epochs": st.integers(max_value=0),
    "train.batch_size": st.integers(max_value=0),
    "train.lr": st.one_of(st.floats(max_value=0.0, allow_nan=False), st.just("fast")),
    "train.grad_clip": st.floats(max_value=0.0, allow_nan=False, allow_infinity=False),
    "train.warmup_fraction": st.floats(min_value=1.0, max_value=1e6),
    "train.min_lr_ratio": st.floats(min_value=1.01, max_value=1e6),
    "train.weight_decay": st.floats(max_value=-1e-6, min_value=-1e6),
    "train.label_smoothing": st.floats(min_value=1.0, max_value=10.0),
    "train.max_steps": st.integers(max_value=0),
    "train.max_minutes": st.floats(max_value=0.0, min_value=-1e6),
    "train.num_threads": st.integers(max_value=0),
    "train.patience": st.integers(max_value=0),
    "train.device": st.sampled_from(["foo", "gpu", "cuda:x", "tpu"]),
    "train.precision": st.sampled_from(["fp16", "half", "float"]),
    "train.progress": st.sampled_from(["maybe", "[1, 2]"]),
    "model.d_model": st.one_of(st.integers(max_value=0), st.just("wide")),
    "model.num_heads": st.integers(max_value=0),
    "model.dropout": st.floats(min_value=1.0, max_value=100.0),
    "model.norm": st.sampled_from(["batchnorm", "LayerNorm", "none"]),
    "model.pooling": st.sampled_from(["max", "last"]),  # "first" is valid (BERT checkpoints)
    "model.positional": st.sampled_from(["alibi2", "absolute"]),
}
_GOOD = st.sampled_from(["train.lr=0.002", "train.epochs=2", "model.dropout=0.2",
                         "train.seed=3", "model.norm=rmsnorm"])


@settings(max_examples=25, deadline=None)
@given(field=st.sampled_from(sorted(_BAD_VALUES)), data=st.data(),
       good=st.lists(_GOOD, max_size=2), in_file=st.booleans())
def test_cli_fuzz_bad_value_exits_2_naming_the_field(
        tmp_path_factory: pytest.TempPathFactory, field: str, data: st.DataObject,
        good: list[str], in_file: bool) -> None:
    value = data.draw(_BAD_VALUES[field])
    root = tmp_path_factory.mktemp("fuzz")
    existing = root / "runs" / "old"
    existing.mkdir(parents=True)
    (existing / "config.yaml").write_text("kept: true\n")
    before = sorted(p.name for p in (root / "runs").iterdir())
    argv = ["train", "--preset", "tiny", "--out-dir", str(root / "runs"), "--name", "new"]
    for text in [*(f"{k}={v}" for k, v in FAST.items()), *good]:
        if text.split("=")[0] != field:
            argv += ["--set", text]
    if in_file:  # the same value from a YAML file instead of --set
        section, key = field.split(".")
        cfg = root / "cfg.yaml"
        cfg.write_text(yaml.safe_dump({section: {key: value}}))
        argv += ["--config", str(cfg)]
    else:
        argv += ["--set", f"{field}={json.dumps(value)}"]
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    lines = err.getvalue().strip().splitlines()
    assert code == 2, err.getvalue()
    assert len(lines) == 1 and field in lines[0] and "Traceback" not in lines[0], lines
    assert sorted(p.name for p in (root / "runs").iterdir()) == before  # nothing written
    assert (existing / "config.yaml").read_text() == "kept: true\n"


def test_config_given_a_folder_is_one_line(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--config", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "is a directory" in err and len(err.splitlines()) == 1


def test_unknown_task_option_is_one_line_with_a_suggestion(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--set", "task.options.augment_shit=1", "--out-dir",
                 str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip()
    assert "task 'digits' has no option 'augment_shit'; did you mean 'augment_shift'?" in err
    assert not (tmp_path / "runs").exists()
