import pathlib
import textwrap

import pytest

from tfbn.config import ConfigError, dump_config, load_config, parse_config, parse_yaml
from tfbn.run import main

CONFIGS = pathlib.Path(__file__).parent.parent / "configs"


def write(tmp_path, text):
    path = tmp_path / "config.yaml"
    path.write_text(textwrap.dedent(text))
    return str(path)


def test_that_ratios_stay_strings_and_exponents_are_numbers():
    assert parse_yaml("r: 1:9\nlr: 1e-3\nn: 60\nx: 0.5") == {"r": "1:9", "lr": 0.001, "n": 60, "x": 0.5}


def test_that_overrides_are_applied_and_read_as_yaml(tmp_path):
    path = write(tmp_path, "train:\n  steps: 100\n  eval_every: 50\n")
    config = load_config(path, ["train.steps=200", "data.classes=[0, 1]",
                                "study.factors.test_ratio=['1:1', 1:9]", "log.dir=/tmp/x"])
    assert config.train.steps == 200 and config.train.eval_every == 50
    assert config.data.classes == (0, 1)
    assert config.study.factors == {"test_ratio": ("1:1", "1:9")}
    assert config.log.dir == "/tmp/x"


def test_that_a_dumped_config_loads_back_unchanged(tmp_path):
    config = load_config(str(CONFIGS / "quickstart.yaml"), ["data.classes=[0, 1]", "data.test_ratio=1:19"])
    path = tmp_path / "saved.yaml"
    path.write_text(dump_config(config))
    assert load_config(str(path)) == config


def test_that_every_shipped_config_is_valid():
    names = sorted(p.name for p in CONFIGS.glob("*.yaml"))
    assert {"quickstart.yaml", "ioffe2015_mnist.yaml", "course2017_mnist.yaml",
            "fashion_mnist_idx.yaml"} <= set(names)
    for name in names:
        load_config(str(CONFIGS / name))


@pytest.mark.parametrize("raw, message", [
    ({"trian": {}}, "unknown key trian; did you mean train?"),
    ({"train": {"setps": 5}}, "unknown key train.setps; did you mean train.steps?"),
    ({"train": {"steps": "many"}}, "train.steps: expected an integer, got 'many'"),
    ({"train": {"batch_size": True}}, "train.batch_size: expected an integer, got True"),
    ({"train": {"optimizer": "rmsprop"}}, "train.optimizer: 'rmsprop' is not a valid choice; choose one of: sgd, adam"),
    ({"model": {"activation": "swish"}}, "choose one of: lrelu, relu, sigmoid, softplus, tanh"),
    ({"data": {"classes": [0, 1], "test_ratio": "1-9"}}, "data.test_ratio: '1-9' is not a class ratio"),
    ({"data": {"test_ratio": "1:9"}}, "ratio '1:9' has 2 parts but data.classes is not set"),
    ({"train": {"steps": 0}}, "train.steps: must be positive"),
    ({"train": {"steps": 120, "eval_every": 50}}, "must be a multiple of train.eval_every"),
    ({"data": {"source": "tfds"}}, "source tfds needs a data set name"),
    ({"study": {"factors": {"activaton": ["relu"]}}}, "did you mean study.factors.activation?"),
    ({"study": {"factors": {"bn": ["before", "sideways"]}}}, "study.factors.bn[1]: 'sideways' is not a valid choice"),
    ({"study": {"factors": {"seed": [0, 0]}}}, "give one or more distinct levels"),
    ({"data": {"classes": [0, 1]}, "study": {"design": "one_at_a_time", "factors": {"test_ratio": ["1:9"]}}},
     "study.factors.test_ratio: a one_at_a_time design varies each factor from the config's own value, "
     "but data.test_ratio is not set"),
])
def test_that_invalid_configs_name_the_key_and_the_fix(raw, message):
    with pytest.raises(ConfigError) as error:
        parse_config(raw)
    assert message in str(error.value)


def test_that_a_user_error_exits_with_status_2_and_one_line(tmp_path, capsys):
    path = write(tmp_path, "model:\n  activaton: relu\n")
    assert main(["--config", path]) == 2
    err = capsys.readouterr().err
    assert err == ("tfbn: error: unknown key model.activaton; did you mean model.activation? "
                   "(valid keys here: depth, width, activation, bn, leaky_slope, bn_momentum, "
                   "bn_epsilon, noise_shift, noise_scale, initializer, logits_initializer, bn_sync, "
                   "builder)\n")


@pytest.mark.parametrize("args, message", [
    (["--set", "train.steps"], "--set 'train.steps': write key.path=value"),
    (["--set", "train.lr=0.1"], "unknown key train.lr"),
    (["--set", "data.test_ratio=1:9"], "ratio '1:9' has 2 parts but data.classes is not set"),
])
def test_that_bad_overrides_exit_with_status_2(args, message, capsys):
    assert main(["--config", str(CONFIGS / "quickstart.yaml"), *args]) == 2
    assert message in capsys.readouterr().err


def test_that_a_missing_config_file_exits_with_status_2(tmp_path, capsys):
    assert main(["--config", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml not found" in capsys.readouterr().err
