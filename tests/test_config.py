import os
import pathlib
import re
import subprocess
import sys
import textwrap

import pytest

from tfbn.config import ConfigError, dump_config, load_builder, load_config, parse_config, parse_yaml
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
    ({"model": {"initializer": float("nan")}}, "model.initializer: nan is not a finite number"),
    ({"model": {"noise_scale": [1.0, float("inf")]}}, "model.noise_scale[1]: inf is not a finite number"),
    ({"train": {"learning_rate": float("-inf")}}, "train.learning_rate: -inf is not a finite number"),
    ({"train": {"seed": -1}}, "train.seed: a seed must lie in 0 .. 2**32 - 1"),
    ({"train": {"seed": 2**32}}, "train.seed: a seed must lie in 0 .. 2**32 - 1"),
    ({"study": {"factors": {"seed": [0, 2**63]}}}, "study.factors.seed[1]: a seed must lie in"),
    ({"experiment": ".."}, "experiment: '..' is not one plain folder name"),
    ({"experiment": "a/b"}, "experiment: 'a/b' is not one plain folder name"),
    ({"experiment": ""}, "experiment: '' is not one plain folder name"),
    ({"experiment": "x" * 201}, "experiment: a name of 201 bytes is too long"),
    ({"data": {"classes": [0, 0]}}, "data.classes: list two or more distinct labels"),
    ({"data": {"classes": [3]}}, "data.classes: list two or more distinct labels"),
    ({"data": {"classes": []}}, "data.classes: list two or more distinct labels"),
    ({"data": {"classes": [0, 42]}}, "data.classes: digits has the labels 0 .. 9, not 42"),
    ({"data": {"source": "tfds", "name": "mnist:3.0.1", "classes": [1, 10]}},
     "data.classes: mnist has the labels 0 .. 9, not 10"),
    ({"train": {"steps": 10**23}}, "train.steps: at most 2147483647 steps"),
    ({"train": {"steps": 10**9, "batch_size": 10**4}}, "train.steps: 1000000000 steps of 10000 examples "
                                                       "could not finish in a year"),
    ({"model": {"builder": "my models.py"}}, "model.builder: 'my models.py' does not name a function"),
    ({"study": {"factors": {"model.bn_momentm": [0.9]}}},
     "unknown factor study.factors.model.bn_momentm; did you mean study.factors.model.bn_momentum?"),
    ({"study": {"factors": {"model.bn_momentum": ["high"]}}},
     "study.factors.model.bn_momentum[0]: expected a number, got 'high'"),
    ({"study": {"factors": {"model.bn_momentum": [1.5]}}}, "study.factors.model.bn_momentum[0]: must lie in [0, 1]"),
    ({"study": {"factors": {"data.classes": [[0, 1]]}}}, "data.classes holds a list"),
    ({"study": {"factors": {"train.learning_rate": [0.1], "learning_rate": [0.2]}}},
     "sets the same key as another factor"),
    ({"data": {"source": "tfds", "name": "mnist"}, "study": {"factors": {"data.name": ["a/b"]}}},
     "would put a '/' in a run folder's name"),
    # A mapping or a list is checked as its own alternative, whose message names the entry.
    ({"train": {"threshold": {"relative": 2}}}, "train.threshold.relative: must lie in [0, 1], got 2"),
    ({"data": {"classes": [0, "a"]}}, "data.classes[1]: expected an integer, got 'a'"),
    ({"train": {"threshold": [0.9]}}, "train.threshold: expected a number or a mapping of relative, absolute"),
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


def test_that_a_dotted_factor_takes_its_keys_type_and_a_short_names_alias_becomes_the_short_name():
    config = parse_config({"study": {"factors": {"model.bn_momentum": [0.9, 1], "train.learning_rate": 0.1,
                                                 "model": {"depth": [1, 2]}}}})
    assert config.study.factors == {"model.bn_momentum": (0.9, 1.0), "learning_rate": (0.1,),
                                    "depth": (1, 2)}
    assert [type(level) for level in config.study.factors["model.bn_momentum"]] == [float, float]


def test_that_overrides_set_dotted_factors_as_a_mapping_or_key_by_key():
    quickstart = str(CONFIGS / "quickstart.yaml")
    flow = load_config(quickstart, ["study.factors={bn: [before], model.bn_momentum: [0.9, 0.99]}"])
    by_key = load_config(quickstart, ["study.factors={bn: [before]}",
                                      "study.factors.model.bn_momentum=[0.9, 0.99]"])
    assert flow.study.factors == by_key.study.factors == {"bn": ("before",),
                                                          "model.bn_momentum": (0.9, 0.99)}


@pytest.mark.parametrize("content, message", [
    (b"train:\n  steps: 100\ntrain:\n  steps: 200\n", "the key 'train' is written twice"),
    (b"model:\n  width: 5\n  width: 6\n", "the key 'width' is written twice"),
    (b"train:\n  steps: 100 \xff\n", "is not UTF-8 text (byte 0xff at offset 20)"),
    (b"train: [\n", "is not valid YAML: expected the node content"),
    (b"- train\n", "the top level must map sections to keys"),
])
def test_that_a_config_file_that_is_not_a_mapping_of_sections_is_refused_in_one_line(
        tmp_path, content, message):
    path = tmp_path / "config.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as error:
        load_config(str(path), ["train.steps=100"])
    assert message in str(error.value) and "\n" not in str(error.value)


def test_that_a_config_path_that_is_not_a_regular_file_is_refused_without_waiting(tmp_path):
    os.mkfifo(tmp_path / "pipe.yaml")  # opening it for reading would wait for a writer
    with pytest.raises(ConfigError, match="pipe.yaml is not a regular file"):
        load_config(str(tmp_path / "pipe.yaml"))
    with pytest.raises(ConfigError, match=f"{tmp_path} is a folder"):
        load_config(str(tmp_path))


@pytest.mark.parametrize("override, message", [
    ("train.steps=[1,", "--set 'train.steps=[1,': the value is not valid YAML"),
    ("train=5", "train must be a section of keys and values"),
])
def test_that_an_override_that_does_not_parse_names_itself(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(str(CONFIGS / "quickstart.yaml"), [override])


# Runs in a fresh interpreter: each call must end before anything loads TensorFlow.
WITHOUT_TENSORFLOW = """
import sys
from tfbn.run import main
import tfbn.report
quickstart, folder = sys.argv[1:]
codes = [main(["--config", quickstart, "--set", "train.stepz=5"]),
         main(["--config", quickstart, "--set", "experiment=..", "--restart"]),
         main(["--config", quickstart, "--set", "model.width=50000000"]),
         main(["--config", folder])]
for command in (main, tfbn.report.main):
    try:
        command(["--help"])
    except SystemExit as exit:
        codes.append(exit.code)
print(codes, sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras")))
"""


def test_that_config_errors_and_help_are_answered_before_tensorflow_loads(tmp_path):
    result = subprocess.run([sys.executable, "-c", WITHOUT_TENSORFLOW, str(CONFIGS / "quickstart.yaml"),
                             str(tmp_path)], capture_output=True, text=True, cwd=tmp_path)
    assert result.stdout.splitlines()[-1] == "[2, 2, 2, 2, 0, 0] []", result.stderr
    errors = result.stderr.splitlines()
    assert len(errors) == 4 and all(line.startswith("tfbn: error: ") for line in errors)
    assert list(tmp_path.iterdir()) == []  # nothing written


@pytest.mark.parametrize("source, message", [
    ("def build(:\n", r"cannot import user_models_\w+ \(SyntaxError: .*\); fix the module so that it imports$"),
    ("raise RuntimeError('at import')\n",
     r"cannot import user_models_\w+ \(RuntimeError: at import\); fix the module so that it imports$"),
    ("def build(input_shape, num_classes, width_multiplier):\n    pass\n",
     r"the function requires width_multiplier, which tfbn does not pass; give it a default or take only "
     r"build_mlp's keywords \(input_shape, num_classes, hidden_units, "),
])
def test_that_a_builder_that_cannot_be_called_is_refused_in_one_line(tmp_path, monkeypatch, source, message):
    name = f"user_models_{tmp_path.name}"  # one module name a case: an imported module stays cached
    (tmp_path / f"{name}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match=rf"^model.builder '{name}:build': {message}"):
        load_builder(f"{name}:build")


def test_that_a_builder_with_defaults_or_build_mlps_keywords_loads(tmp_path, monkeypatch):
    (tmp_path / "user_models_ok.py").write_text("def build(input_shape, bn, depth_scale=1, **kwargs):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert load_builder("user_models_ok:build").__name__ == "build"
