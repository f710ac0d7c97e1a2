"""Config loading, overrides and the errors a user sees for bad input."""

from pathlib import Path

import pytest
import yaml

from disttrain.config import DEFAULT_CONFIG, ConfigError, dump_config, load_config
from launchers import load_job


def test_default_config_loads_with_the_documented_shape():
    config = load_config()
    assert (config.cluster.workers, config.cluster.ps, config.eval.enabled) == (2, 1, True)
    assert config.data.source == "builtin"


def test_overrides_parse_values_as_yaml():
    config = load_config(
        None, ["train.steps=42", "eval.enabled=false", "name=job-2", "train.learning_rate=1e-3"]
    )
    assert config.train.steps == 42
    assert config.eval.enabled is False
    assert config.name == "job-2"
    assert config.train.learning_rate == pytest.approx(1e-3)


def test_an_integer_is_accepted_where_a_number_is_expected():
    assert load_config(None, ["train.learning_rate=1"]).train.learning_rate == 1.0


def test_unknown_key_is_named_with_the_keys_accepted():
    with pytest.raises(ConfigError) as error:
        load_config(None, ["train.stepz=10"])
    assert "'train.stepz'" in str(error.value)
    assert "steps" in str(error.value) and "learning_rate" in str(error.value)


def test_unknown_section_in_a_file_is_rejected(tmp_path: Path):
    path = tmp_path / "c.yaml"
    path.write_text("trainer:\n  steps: 3\n")
    with pytest.raises(ConfigError, match="unknown config key 'trainer'"):
        load_config(path)


def test_a_bad_value_in_a_file_names_the_file_and_one_from_set_does_not(tmp_path: Path):
    path = tmp_path / "bad.yaml"
    path.write_text("data:\n  source: image-folder\n")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert str(error.value).startswith("data.source: got 'image-folder'")
    assert str(error.value).endswith(f"(in config file '{path}')")
    for override in (
        "train.steps=abc",  # a bad value
        "train.stepz=3",  # an unknown key
        "launcher.k8s.foo.bar=1",  # an unknown section, made by a deeper key
        "launcher.k8s.chief.node_selector.pool=has space",  # a rule on the map holding it
    ):
        with pytest.raises(ConfigError) as error:
            load_job(None, [override], "k8s")
        assert "config file" not in str(error.value)


def test_every_problem_is_reported_at_once_each_saying_where_it_came_from(tmp_path: Path):
    path = tmp_path / "bad.yaml"
    path.write_text(
        "name: My Job\n"
        "train:\n  steps: 0\n  stepz: 3\n"
        "cluster:\n  workers: two\n"
        "data:\n  source: imagefolder\n"
    )
    with pytest.raises(ConfigError) as error:
        load_config(path, ["train.learning_rate=-1"])
    in_file = f" (in config file '{path}')"
    lines = str(error.value).splitlines()
    assert lines[0] == "the config has 6 problems:"
    assert [line.strip().split(":")[0].split(";")[0] for line in lines[1:]] == [
        "unknown config key 'train.stepz'",
        "cluster.workers",
        "data.source",
        "name",
        "train.steps",
        "train.learning_rate",
    ]
    assert all(line.endswith(in_file) for line in lines[1:-1])
    assert lines[-1] == "  train.learning_rate: got -1.0; accepted: a number > 0"


def test_wrong_type_names_key_value_and_what_is_accepted():
    with pytest.raises(ConfigError) as error:
        load_config(None, ["train.steps=abc"])
    assert str(error.value) == "train.steps: got 'abc'; accepted: an integer"


def test_a_bool_is_not_an_integer():
    with pytest.raises(ConfigError, match="train.steps: got True"):
        load_config(None, ["train.steps=true"])


def test_out_of_range_value_is_rejected_with_the_range():
    with pytest.raises(ConfigError, match=r"cluster.workers: got -1; accepted: an integer >= 0"):
        load_config(None, ["cluster.workers=-1"])


def test_the_crop_area_must_be_a_fraction_of_the_image():
    assert load_config(None, ["data.crop_min_area=0.08"]).data.crop_min_area == 0.08
    with pytest.raises(ConfigError, match=r"data.crop_min_area: got 1.5; accepted: a number in"):
        load_config(None, ["data.crop_min_area=1.5"])


def test_the_preemption_checkpoint_is_a_part_of_the_grace_period_and_grace_is_positive():
    assert load_config(None, ["train.preemption_checkpoint=0"]).train.preemption_checkpoint == 0
    with pytest.raises(
        ConfigError, match=r"train.preemption_checkpoint: got 1.0; accepted: a number in \[0, 1\)"
    ):
        load_config(None, ["train.preemption_checkpoint=1"])
    for key, got in (("local.stop_grace_seconds", "0.0"), ("k8s.termination_grace_seconds", "0")):
        with pytest.raises(ConfigError, match=rf"launcher.{key}: got {got}; accepted: "):
            load_job(None, [f"launcher.{key}=0"], key.split(".")[0])


def test_choice_lists_the_accepted_values():
    with pytest.raises(ConfigError, match="data.source: got 'imagenet'; accepted: builtin"):
        load_config(None, ["data.source=imagenet"])


def test_ps_without_workers_is_rejected():
    with pytest.raises(ConfigError, match="cluster.workers: got 0 with cluster.ps = 1"):
        load_config(None, ["cluster.workers=0"])


def test_malformed_override_is_explained():
    with pytest.raises(ConfigError, match="must look like key.path=value"):
        load_config(None, ["train.steps"])


def test_missing_config_file_is_named(tmp_path: Path):
    with pytest.raises(ConfigError, match="does-not-exist.yaml"):
        load_config(tmp_path / "does-not-exist.yaml")


def test_resolved_config_round_trips_through_yaml(tmp_path: Path):
    config = load_config(None, ["train.steps=7", "cluster.ps=2"])
    path = tmp_path / "resolved.yaml"
    path.write_text(dump_config(config))
    assert load_config(path) == config


def test_every_key_in_the_default_file_is_a_real_key():
    raw = yaml.safe_load(DEFAULT_CONFIG.read_text())
    load_config(DEFAULT_CONFIG)  # would raise on an unknown key
    assert set(raw) <= {
        "name",
        "run_dir",
        "data",
        "model",
        "train",
        "checkpoint",
        "eval",
        "cluster",
        "launcher",
    }


def test_a_sas_token_in_a_url_is_refused_without_being_echoed():
    with pytest.raises(ConfigError) as error:
        load_config(None, ["run_dir=az://c/run?sv=2022&sig=PLANTEDSECRET"])
    assert "PLANTEDSECRET" not in str(error.value)
    assert str(error.value).startswith("run_dir: got az://c/run?<query hidden>")


@pytest.mark.parametrize("url", ["az://", "az:///runs/x", "abfs://@acct.dfs.core.windows.net/r"])
def test_a_url_that_names_no_container_is_refused_before_anything_is_written(url):
    with pytest.raises(ConfigError) as error:
        load_config(None, [f"run_dir={url}", f"data.root={url}"])
    lines = str(error.value).splitlines()
    assert lines[0] == "the config has 2 problems:"
    assert lines[1].strip().startswith(f"run_dir: got {url!r}, which names no container")
    assert load_config(None, ["run_dir=az://runs/x"]).run_dir == "az://runs/x"


def test_a_hung_task_timeout_is_off_or_long_enough_for_a_few_heartbeats():
    assert load_config(None, ["cluster.hung_task_seconds=0"]).cluster.hung_task_seconds == 0
    with pytest.raises(ConfigError) as error:
        load_config(None, ["cluster.hung_task_seconds=5"])
    assert str(error.value) == (
        "cluster.hung_task_seconds: got 5; accepted: 0 (off) or an integer >= 10"
    )


def test_the_stall_warning_must_come_before_the_hung_task_restart():
    with pytest.raises(ConfigError) as error:
        load_config(None, ["train.stall_warning_seconds=120", "cluster.hung_task_seconds=100"])
    assert str(error.value) == (
        "train.stall_warning_seconds: got 120.0 with cluster.hung_task_seconds = 100; accepted: "
        "less than cluster.hung_task_seconds (the hung task is restarted by then), or 0 (off)"
    )
    # Either one off: nothing to order.
    assert load_config(None, ["train.stall_warning_seconds=0"]).train.stall_warning_seconds == 0
    no_restart = ["train.stall_warning_seconds=500", "cluster.hung_task_seconds=0"]
    assert load_config(None, no_restart).train.stall_warning_seconds == 500
    with pytest.raises(ConfigError, match=r"train.stall_warning_seconds: got -1.0; accepted: a "):
        load_config(None, ["train.stall_warning_seconds=-1"])
