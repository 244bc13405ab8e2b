"""params.yaml validation: every mistake is named by its full key path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.common.errors import PipelineError
from pipeline.config.params import Params, load_params
from pipeline.config.same_result import same_result_keys
from tests.conftest import PROJECT_ROOT

PROJECT_PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


def write_params(tmp_path: Path, edit: Any) -> Path:
    """A copy of the project's params.yaml with `edit(dict)` applied."""
    values = yaml.safe_load(PROJECT_PARAMS.read_text())
    edit(values)
    target = tmp_path / "params.yaml"
    target.write_text(yaml.safe_dump(values, sort_keys=False))
    return target


def error_of(path: Path) -> str:
    with pytest.raises(PipelineError) as caught:
        load_params(path)
    return str(caught.value)


def test_project_params_load_with_article_defaults() -> None:
    params = load_params(PROJECT_PARAMS)
    assert isinstance(params, Params)
    assert list(params.variants) == ["plain", "bn"]
    plain, bn = params.variant("plain"), params.variant("bn")
    assert (plain.batch_norm, bn.batch_norm) == (False, True)
    for settings in (plain, bn):
        assert settings.activation == "sigmoid"
        assert settings.optimizer == "rmsprop"
        assert (settings.epochs, settings.batch_size, settings.learning_rate) == (10, 32, 1e-3)
    assert params.normalize.method == "standardize"
    assert params.tune.n_trials == 0


def test_variant_overrides_inherit_the_rest(tmp_path: Path) -> None:
    def add_relu(values: dict) -> None:
        values["train"]["augmentation"]["shear_degrees"] = 5.0
        values["variants"]["relu"] = {"activation": "relu", "augmentation": {"zoom": 0.1}}

    params = load_params(write_params(tmp_path, add_relu))
    relu = params.variant("relu")
    assert relu.activation == "relu"
    assert relu.augmentation.zoom == 0.1
    assert relu.augmentation.shear_degrees == 5.0  # nested overrides change only the keys they set
    assert relu.epochs == params.train.epochs
    with pytest.raises(PipelineError, match="unknown variant 'nope'.*plain, bn, relu"):
        params.variant("nope")


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (
            lambda v: v["train"].update(learnig_rate=0.1),
            "unknown key 'train.learnig_rate' (did you mean 'train.learning_rate'?)",
        ),
        (
            lambda v: v["variants"]["bn"].update(batch_nrom=True),
            "unknown key 'variants.bn.batch_nrom' (did you mean 'variants.bn.batch_norm'?)",
        ),
        (
            lambda v: v["train"]["augmentation"].update(zoon=0.1),
            "'train.augmentation.zoon' (did you mean 'train.augmentation.zoom'?)",
        ),
        (lambda v: v.update(trian={}), "unknown key 'trian' (did you mean 'train'?)"),
        (lambda v: v["train"].update(epochs=-3), "train.epochs: Input should be greater than 0"),
        (lambda v: v["train"].update(epochs="ten"), "train.epochs: Input should be a valid"),
        (lambda v: v["train"].update(learning_rate=0), "train.learning_rate: Input should be"),
        (lambda v: v["data"].update(val_fraction=1.5), "data.val_fraction: Input should be less"),
        (
            lambda v: v["data"].update(val_fraction=-0.1),
            "data.val_fraction: Input should be greater",
        ),
        (
            lambda v: v["data"].update(val_fraction=0),
            "data.val_fraction 0 leaves no validation split: set train.validation_data: test",
        ),
        (
            lambda v: v["train"].update(rmsprop_epsilon="outside"),
            "train.rmsprop_epsilon: Input should be 'inside_sqrt' or 'outside_sqrt'",
        ),
        (
            lambda v: v["train"]["augmentation"].update(shear=0.2),
            "'train.augmentation.shear' (did you mean 'train.augmentation.shear_degrees'?)",
        ),
        (lambda v: v["normalize"].update(method="zscore"), "normalize.method: Input should be"),
        (lambda v: v.update(variants={}), "variants: Dictionary should have at least 1 item"),
        (lambda v: v["variants"]["bn"].update(activation="softsign"), "variants.bn.activation"),
        (lambda v: v["tune"].update(lr_low=0.1, lr_high=0.01), "must be greater than tune.lr_low"),
        (lambda v: v["tune"]["pruner"].update(kind="random"), "tune.pruner.kind"),
        (lambda v: v.update(seeds=[1, 1]), "seeds: must not repeat a seed (got [1, 1])"),
        (lambda v: v.update(seeds=[]), "seeds: List should have at least 1 item"),
        (
            lambda v: v["train"]["speed"].update(jit_compile=True),
            "train.speed.jit_compile needs train.deterministic: false",
        ),
    ],
)
def test_bad_values_are_named_by_key_path(tmp_path: Path, edit: Any, expected: str) -> None:
    message = error_of(write_params(tmp_path, edit))
    assert expected in message
    assert "\n" not in message


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("seed: 1\ntrain:\n  epochs: [3\n")
    message = error_of(path)
    assert "not valid YAML at line" in message


def test_missing_file_and_non_mapping(tmp_path: Path) -> None:
    assert "not found" in error_of(tmp_path / "absent.yaml")
    path = tmp_path / "params.yaml"
    path.write_text("- just\n- a list\n")
    assert "must be a mapping" in error_of(path)


def test_a_same_result_section_marks_its_nested_settings_too() -> None:
    keys = same_result_keys()
    # probe is marked whole: its landscape section's settings are not factors of a grid either
    assert {"train.probe.interval", "train.probe.landscape.every_steps"} <= keys
    assert "train.probe.landscape" not in keys  # a section, not a setting
    assert "train.learning_rate" not in keys and "train.speed.precision" not in keys


def test_a_variant_named_like_another_variant_s_run_is_refused(tmp_path: Path) -> None:
    values = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    values["seeds"] = [42, 7]
    values["variants"]["bn-7"] = {"batch_norm": True}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(values))
    with pytest.raises(PipelineError, match="variant 'bn-7' is also the name of variant 'bn'"):
        load_params(path)
    del values["variants"]["bn-7"]
    values["variants"]["bn-8"] = {"batch_norm": True}  # no seed 8: no clash
    path.write_text(yaml.safe_dump(values))
    assert "bn-8" in load_params(path).variants
