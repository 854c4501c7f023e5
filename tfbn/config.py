"""Typed, validated experiment configs read from YAML.

A config file has the sections of `Config`; every key equals a dataclass field
name, and every field has a default. Validation happens before any training:
unknown keys, wrong types, unknown choices and malformed class ratios raise
`ConfigError` with a message that names the key and the fix.

Example:

```python
config = tfbn.config.load_config("configs/quickstart.yaml", ["train.steps=500"])
```
"""

import dataclasses
import difflib
import importlib
import inspect
import math
import os
import re
import stat
import types
import typing
import warnings
from typing import Literal, Optional, Union

import yaml

from tfbn.errors import ConfigError

# Factor name -> (config section, field) that the factor's levels replace.
FACTORS = {
    "activation": ("model", "activation"),
    "bn": ("model", "bn"),
    "depth": ("model", "depth"),
    "width": ("model", "width"),
    "optimizer": ("train", "optimizer"),
    "learning_rate": ("train", "learning_rate"),
    "batch_size": ("train", "batch_size"),
    "seed": ("train", "seed"),
    "train_ratio": ("data", "train_ratio"),
    "test_ratio": ("data", "test_ratio"),
}

# Sections whose scalar keys a study may vary by their dotted path, e.g. model.bn_momentum.
FACTOR_SECTIONS = ("model", "train", "data")

# Seeds are 32-bit: NumPy's and TensorFlow's generators take 0 .. 2**32 - 1.
MAX_SEED = 2**32 - 1
# As many steps as a signed 32-bit counter holds: far beyond any study (the course
# project trains 40,000).
MAX_STEPS = 2**31 - 1
# Training examples (steps x batch size) a trial may go through: a year at 32,000
# examples a second, the rate of a step of batch 64 in 2 ms (tfbn.packing's single
# branch on 2 CPU cores).
MAX_EXAMPLES = 10**12
# The experiment folder's name, and the names tfbn derives from it (its lock file
# ``.<experiment>.lock``, a restarted run's ``<experiment>.<date>-<time>``), fit
# in a file name (255 bytes).
MAX_NAME_BYTES = 200
# Classes and features of the data sets whose sizes are known before they load:
# ``data.source`` digits, or tensorflow-datasets names.
KNOWN_DATA = {"digits": (10, 64), "mnist": (10, 784), "fashion_mnist": (10, 784),
              "kmnist": (10, 784)}

_RATIO = re.compile(r"^[1-9][0-9]*(:[1-9][0-9]*)+$")
_BUILDER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$")


def _check_ratio(value, key):
    if value is not None and not _RATIO.match(value):
        raise ConfigError(
            f"{key}: {value!r} is not a class ratio; write positive whole numbers "
            "separated by colons, one per selected class, e.g. '1:9' "
            "(quote it in YAML)"
        )


def _check_positive(value, key):
    if value is not None and value <= 0:
        raise ConfigError(f"{key}: must be positive, got {value!r}")


def _check_fraction(value, key):
    if not 0 <= value <= 1:
        raise ConfigError(f"{key}: must lie in [0, 1], got {value!r}")


def _check_interval(value, key):
    if len(value) != 2 or value[0] > value[1]:
        raise ConfigError(f"{key}: give [low, high] with low <= high, got {list(value)!r}")


def _check_initializer(value, key):
    if isinstance(value, float) and value <= 0:
        raise ConfigError(f"{key}: a std must be positive, got {value}; or choose course, glorot or he")


def _check_pack(value, key):
    if isinstance(value, int) and value < 1:
        raise ConfigError(f"{key}: give auto, off or a positive number of branches, got {value!r}")


def _check_seed(value, key):
    if not 0 <= value <= MAX_SEED:
        raise ConfigError(f"{key}: a seed must lie in 0 .. 2**32 - 1 ({MAX_SEED}), got {value}")


def _check_steps(value, key):
    _check_positive(value, key)
    if value > MAX_STEPS:
        raise ConfigError(f"{key}: at most {MAX_STEPS} steps, got {value}; train for fewer steps")


def _check_classes(value, key):
    if value is None:
        return
    if len(value) < 2 or len(set(value)) != len(value) or min(value) < 0:
        raise ConfigError(f"{key}: list two or more distinct labels, e.g. [0, 1], or null for "
                          f"all classes; got {list(value)}")


def _check_name(value, key):
    if (not value or value.startswith(".") or "/" in value or "\\" in value
            or value != value.strip() or not value.isprintable()):
        raise ConfigError(f"{key}: {value!r} is not one plain folder name; give a name without "
                          "'/' that does not start with '.', e.g. --set experiment=my_study")
    if len(value.encode()) > MAX_NAME_BYTES:
        raise ConfigError(f"{key}: a name of {len(value.encode())} bytes is too long for a "
                          f"folder name; give at most {MAX_NAME_BYTES}")


def _check_builder(value, key):
    if value is not None and not _BUILDER.match(value):
        raise ConfigError(f"{key}: {value!r} does not name a function; write "
                          "package.module:function, e.g. my_models:build_cnn")


def _field(default, why, check=None):
    """A dataclass field with a one-line reason and an optional value check."""
    return dataclasses.field(default=default, metadata={"why": why, "check": check})


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Which data set to load and which part of it to keep."""

    source: Literal["digits", "tfds", "idx"] = _field(
        "digits", "digits is bundled with scikit-learn, so it works offline")
    name: Optional[str] = _field(None, "tensorflow-datasets name when source is tfds, e.g. mnist")
    data_dir: Optional[str] = _field(None, "tensorflow-datasets data directory (its default when null)")
    path: Optional[str] = _field(None, "directory of the four IDX files when source is idx")
    classes: Optional[tuple[int, ...]] = _field(
        None, "labels to keep, relabelled 0..k-1 in this order; null keeps all", _check_classes)
    max_train_per_class: Optional[int] = _field(None, "cap on training examples per class", _check_positive)
    max_test_per_class: Optional[int] = _field(None, "cap on test examples per class", _check_positive)
    train_ratio: Optional[str] = _field(None, "class ratio of the training split, e.g. '1:1'", _check_ratio)
    test_ratio: Optional[str] = _field(None, "class ratio of the test split, e.g. '1:9'", _check_ratio)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The MLP of `tfbn.build_mlp`; the paper uses depth 3, the course project 2."""

    depth: int = _field(2, "number of hidden layers (course project: 2)", _check_positive)
    width: int = _field(100, "units per hidden layer", _check_positive)
    activation: Literal["lrelu", "relu", "sigmoid", "softplus", "tanh", "linear"] = _field(
        "sigmoid", "the paper's saturating nonlinearity")
    bn: Literal["none", "before", "after", "renorm", "noisy"] = _field(
        "before", "the paper places BN before the activation; renorm: Batch Renormalization there; "
                  "noisy: BN there followed by a per-step shift of each unit's distribution")
    leaky_slope: float = _field(0.2, "negative slope of lrelu (course project: 0.2)")
    bn_momentum: float = _field(0.99, "momentum of BN's moving statistics (Keras's; the course project: 0.999)",
                                _check_fraction)
    bn_epsilon: float = _field(1e-3, "added to BN's variance (course project)", _check_positive)
    noise_shift: tuple[float, ...] = _field(
        (0.0, 1.0), "noisy BN: low and high of each unit's uniform shift, drawn every step",
        _check_interval)
    noise_scale: tuple[float, ...] = _field(
        (1.0, 2.0), "noisy BN: low and high of each unit's uniform scale, drawn every step",
        _check_interval)
    initializer: Union[Literal["course", "glorot", "he"], float] = _field(
        "course", "hidden kernels: the course project's truncated normal, std sqrt(2/fan_in); "
                  "glorot; he; or a truncated normal's std", _check_initializer)
    logits_initializer: Union[Literal["course", "glorot", "he"], float, None] = _field(
        None, "the logits layer's kernel, the same choices; null: as model.initializer",
        _check_initializer)
    bn_sync: bool = _field(True, "under several replicas, BN statistics over the global batch, "
                                 "not each replica's slice")
    builder: Optional[str] = _field(
        None, "package.module:function that builds the network instead of tfbn.build_mlp, "
              "called with the keywords of build_mlp it declares (see tfbn.training.build_model)",
        _check_builder)


def absolute_threshold(threshold):
    """The test accuracy ``train.threshold`` names; infinity (never reached) when it names only a relative one."""
    if isinstance(threshold, Threshold):
        return float("inf") if threshold.absolute is None else threshold.absolute
    return threshold


def _check_threshold(value, key):
    if value is not None and not isinstance(value, Threshold):
        _check_fraction(value, key)


def _check_period(value, key):
    if value != "auto":
        _check_positive(value, key)


@dataclasses.dataclass(frozen=True)
class Threshold:
    """``train.threshold`` as a mapping: a fraction of the best final accuracy of the
    trial's group (the arms with its seed and other factors), beside or instead of an
    absolute accuracy."""

    relative: float = _field(0.98, "fraction of the best final test accuracy any arm of the group reached",
                             _check_fraction)
    absolute: Optional[float] = _field(None, "test accuracy, as a plain number gives it; null: none",
                                       _check_threshold)

    def __str__(self):
        return f"relative {self.relative:g}" + ("" if self.absolute is None else f", absolute {self.absolute:g}")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Step-based training; test metrics use BN's moving statistics."""

    steps: int = _field(40000, "training steps (course project: 40,000)", _check_steps)
    eval_every: int = _field(50, "steps between test evaluations (course project: 50)", _check_positive)
    batch_size: int = _field(64, "examples per training step (course project: 64)", _check_positive)
    optimizer: Literal["sgd", "adam"] = _field("sgd", "the course project's default")
    learning_rate: float = _field(0.01, "course project: SGD at 0.01", _check_positive)
    seed: int = _field(0, "seeds the kernels and the order of the training batches (0 .. 2**32 - 1)",
                       _check_seed)
    threshold: Union[float, Threshold] = _field(
        0.9, "test accuracy that 'steps to threshold' waits for, or {relative: f, absolute: a}",
        _check_threshold)
    eval_batch_size: int = _field(
        1000, "examples per evaluation batch: the batches BN normalizes by in the batch-statistics mode",
        _check_positive)
    pack: Union[Literal["auto", "off"], int] = _field(
        "auto", "trials trained together as branches of one model: auto, off or a maximum",
        _check_pack)


@dataclasses.dataclass(frozen=True)
class LogConfig:
    """Where run output goes."""

    dir: str = _field("logs", "root of all experiments' TensorBoard runs and results")
    instruments: tuple[Literal["weights", "gradients", "jacobian", "percentiles", "ics",
                               "landscape"], ...] = _field(
        ("weights", "gradients", "jacobian", "percentiles"),
        "TensorBoard instruments to record (ics and landscape on request)")
    weights_every: int = _field(500, "steps between weight histograms and norms", _check_positive)
    gradients_every: int = _field(100, "steps between gradient norms and histograms", _check_positive)
    jacobian_every: Union[Literal["auto"], int] = _field(
        "auto", "steps between Jacobian spectra of the probe set; auto: a tenth of train.steps, "
        "so that a run has 10 after step 0", _check_period)
    percentiles_every: int = _field(500, "steps between activation percentiles of the probe set",
                                    _check_positive)
    ics_every: int = _field(2000, "steps between internal covariate shift measurements",
                            _check_positive)
    landscape_every: int = _field(5000, "steps between loss-landscape smoothness probes",
                                  _check_positive)
    probe_size: int = _field(250, "test examples in the fixed probe set (jacobian, percentiles)",
                             _check_positive)
    jacobian_mode: Literal["inference", "batch"] = _field(
        "inference", "BN with moving statistics, or the probe batch's own statistics held constant")


@dataclasses.dataclass(frozen=True)
class DistributeConfig:
    """Devices: one trial across replicas, or several trials side by side."""

    strategy: Literal["auto", "mirrored", "none"] = _field(
        "auto", "auto: MirroredStrategy over all GPUs when there are two or more")
    devices: Optional[tuple[str, ...]] = _field(None, "devices of strategy mirrored; null: all")
    parallel_trials: int = _field(1, "packs trained at once, one worker process per GPU (per share of the CPU cores without one)",
                                  _check_positive)
    worker_timeout: float = _field(
        60.0, "seconds without word from a worker after which the chief proposes its pack to "
        "another worker, and a worker gives up on a silent chief (at most 60); workers send a "
        "heartbeat every quarter of it from a thread of their own, so it need not cover a pack's "
        "length", _check_positive)


@dataclasses.dataclass(frozen=True)
class StudyConfig:
    """The factors that vary across trials and the design that combines them."""

    design: Literal["full_factorial", "one_at_a_time"] = _field(
        "full_factorial", "every combination of the factor levels")
    factors: Optional[dict] = _field(
        None, "factor -> list of levels: a name in tfbn.config.FACTORS or a scalar key of "
              "model, train or data by its dotted path (model.bn_momentum); null: one trial")


@dataclasses.dataclass(frozen=True)
class Config:
    """A whole experiment."""

    experiment: str = _field("default", "names the folder <log.dir>/<experiment>", _check_name)
    data: DataConfig = _field(DataConfig(), "the data set")
    model: ModelConfig = _field(ModelConfig(), "the network")
    train: TrainConfig = _field(TrainConfig(), "the optimisation")
    log: LogConfig = _field(LogConfig(), "the output")
    distribute: DistributeConfig = _field(DistributeConfig(), "the devices")
    study: StudyConfig = _field(StudyConfig(), "the factors")


class _Loader(yaml.SafeLoader):
    """`yaml.SafeLoader` without three YAML 1.1 surprises.

    YAML 1.1 reads `1:9` as the base-60 integer 69, `1e-3` as a string and
    `off` as false; class ratios, learning rates and ``train.pack: off`` are
    written exactly like that. As in YAML 1.2, only true and false are booleans.
    A key written twice in one mapping is an error, not the last one silently.
    """

    def construct_mapping(self, node, deep=False):
        seen = []  # a list: keys may be unhashable, which the base class reports
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"the key {key!r} is written twice; YAML would keep only the "
                                "last, so write each key once", key_node.start_mark)
            seen.append(key)
        return super().construct_mapping(node, deep)


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers
            if tag not in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float",
                           "tag:yaml.org,2002:bool")]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:int",
    re.compile(r"^(?:[-+]?0b[0-1_]+|[-+]?0x[0-9a-fA-F_]+|[-+]?(?:0|[1-9][0-9_]*))$"),
    list("-+0123456789"))
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?"
               r"|[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)"
               r"|\.[0-9_]+(?:[eE][-+]?[0-9]+)?"
               r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."))


def parse_yaml(text):
    """Parses YAML text safely, reading `1:9` as a string and `1e-3` as a float."""
    return yaml.load(text, Loader=_Loader)


def load_config(path, overrides=()):
    """Reads, overrides and validates a config file.

    Args:
        path: A YAML file whose top level maps section names to sections.
        overrides: Strings ``key.path=value``; the value is read as YAML.

    Returns:
        A validated `Config`.

    Raises:
        ConfigError: naming the bad key or value and the fix.
    """
    try:
        raw = parse_yaml(_read_text(path))
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {_yaml_problem(e)}; fix the file") from None
    raw = raw if raw is not None else {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must map sections to keys (e.g. 'train:' "
                          f"with 'steps: 500' under it), got {type(raw).__name__} {raw!r:.40}")
    for override in overrides:
        _apply_override(raw, override)
    return parse_config(raw)


def _read_text(path):
    """A config file's text. Opened without blocking, so that a named pipe is refused, not waited on."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found; pass an existing YAML file to --config") from None
    except OSError as e:
        raise ConfigError(f"config file {path} cannot be read ({e.strerror}); pass a YAML file "
                          "you can read to --config") from None
    mode = os.fstat(descriptor).st_mode
    if not stat.S_ISREG(mode):
        os.close(descriptor)
        kind = "a folder" if stat.S_ISDIR(mode) else "not a regular file (a pipe or a device)"
        raise ConfigError(f"config file {path} is {kind}; pass a YAML file to --config")
    with os.fdopen(descriptor, "rb") as f:
        data = f.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte 0x{data[e.start]:02x} at "
                          f"offset {e.start}); save it as UTF-8") from None


def _yaml_problem(error):
    """A YAML error in one line: what is wrong and where."""
    problem = getattr(error, "problem", None) or str(error)
    mark = getattr(error, "problem_mark", None)
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
    return " ".join(f"{problem}{where}".split())


def _apply_override(raw, override):
    key, sep, value = override.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {override!r}: write key.path=value, e.g. train.steps=500")
    *parents, leaf = key.strip().split(".")
    node = raw
    for part in parents:
        if node.get(part) is None:  # absent, or an empty section ('train:' alone)
            node[part] = {}
        node = node[part]
        if not isinstance(node, dict):
            raise ConfigError(f"--set {override!r}: {part} is not a section")
    try:
        node[leaf] = parse_yaml(value)
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {override!r}: the value is not valid YAML: {_yaml_problem(e)}; "
                          "write it as in a config file, e.g. train.steps=500 or "
                          "'data.classes=[0, 1]'") from None


def parse_config(raw):
    """Validates a nested dict (as read from YAML) into a `Config`."""
    config = _build(Config, _moved_keys(raw), "")
    _check_consistency(config)
    if config.log.jacobian_every == "auto":
        every = max(1, config.train.steps // 10)
        config = dataclasses.replace(config, log=dataclasses.replace(config.log, jacobian_every=every))
    return config


def _moved_keys(raw):
    """Reads keys of earlier versions at their new place, with a deprecation message."""
    distribute = raw.get("distribute") if isinstance(raw, dict) else None
    if not isinstance(distribute, dict) or "bn_sync" not in distribute:
        return raw
    model = raw.get("model") or {}
    if not isinstance(model, dict):
        return raw  # _build names the bad section
    if "bn_sync" in model and model["bn_sync"] != distribute["bn_sync"]:
        raise ConfigError("distribute.bn_sync and model.bn_sync disagree; keep model.bn_sync only")
    warnings.warn("distribute.bn_sync is now model.bn_sync (it changes the model); "
                  "write it there, the old key will go", FutureWarning, stacklevel=3)
    distribute = {k: v for k, v in distribute.items() if k != "bn_sync"}
    return {**raw, "distribute": distribute, "model": {**model, "bn_sync": raw["distribute"]["bn_sync"]}}


def to_dict(config):
    """Returns a config as plain nested dicts and lists, ready for YAML."""
    def plain(value):
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value
    return plain(dataclasses.asdict(config))


def flatten(tree, prefix=""):
    """``{"train": {"steps": 5}}`` -> ``{"train.steps": 5}``; factors stay one value."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict) and key != "factors":
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def dump_config(config):
    """Returns a config as YAML text that `load_config` reads back unchanged."""
    return yaml.safe_dump(to_dict(config), sort_keys=False)


def _build(cls, raw, prefix):
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'the config'} must be a section of keys and "
                          f"values (e.g. 'train: {{steps: 500}}'), got {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            raise ConfigError(_unknown_key_message(prefix + str(key), key, fields))
    values = {}
    for name, field in fields.items():
        if name not in raw:
            continue
        key = prefix + name
        values[name] = coerce_value(raw[name], field, key)
    return cls(**values)


def coerce_value(value, field, key):
    """Converts a YAML value to a dataclass field's type, or raises `ConfigError`."""
    if field.name == "factors":
        return _parse_factors(value, key)
    value = _coerce(value, field.type, key)
    check = field.metadata.get("check")
    if check:
        check(value, key)
    return value


def _coerce(value, tp, key):
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key}: {value} is not a finite number; give a finite value")
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key + ".")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        alternatives = [a for a in args if a is not type(None)]
        shaped = [a for a in alternatives if _same_shape(value, a)]
        if len(shaped) == 1:  # a mapping or a list: its own alternative's error names the entry
            return _coerce(value, shaped[0], key)
        for alternative in alternatives:
            try:
                return _coerce(value, alternative, key)
            except ConfigError:
                pass
        raise ConfigError(f"{key}: expected {' or '.join(map(_choice_name, alternatives))}, "
                          f"got {value!r}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not a valid choice; choose one of: "
                              + ", ".join(map(str, args)))
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            value = [value]
        return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    # bool is a subclass of int, but `true` is no batch size.
    if isinstance(value, tp) and (tp is bool or not isinstance(value, bool)):
        return value
    raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r} "
                      f"({_type_name(type(value))})")


def _parse_factors(raw, key):
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ConfigError(f"{key} must map factor names to lists of levels, e.g. bn: [none, before]")
    factors = {}
    for name, levels in _dotted(raw):
        canonical = factor_name(name, f"{key}.{name}")
        if canonical in factors:
            raise ConfigError(f"{key}: {name} sets the same key as another factor "
                              f"({canonical}); keep one of them")
        levels = levels if isinstance(levels, list) else [levels]
        section, field_name = factor_field(canonical)
        field = _section_fields(section)[field_name]
        parsed = tuple(coerce_value(v, field, f"{key}.{name}[{i}]") for i, v in enumerate(levels))
        if not parsed or len(set(parsed)) != len(parsed):
            raise ConfigError(f"{key}.{name}: give one or more distinct levels, got {levels!r}")
        for i, level in enumerate(parsed):
            if "/" in str(level):  # a level is part of its run's folder name
                raise ConfigError(f"{key}.{name}[{i}]: {level!r} would put a '/' in a run "
                                  "folder's name; vary a key whose values have none")
        factors[canonical] = parsed
    return factors


def _dotted(raw):
    """``{model: {bn_momentum: [...]}}`` (as ``--set study.factors.model.bn_momentum=`` writes
    it) as ``model.bn_momentum``; other entries as they are."""
    for name, levels in raw.items():
        if name in FACTOR_SECTIONS and isinstance(levels, dict):
            yield from ((f"{name}.{field}", value) for field, value in levels.items())
        else:
            yield name, levels


def factor_name(name, key="study.factors"):
    """The name a study uses for a factor: a name of `FACTORS`, or a dotted key.

    ``model.bn_momentum`` stays as it is; ``train.learning_rate``, which
    `FACTORS` names already, becomes ``learning_rate``.

    Raises:
        ConfigError: the name is neither, or names a key that holds a list.
    """
    if name in FACTORS:
        return name
    aliases = {f"{section}.{field}": short for short, (section, field) in FACTORS.items()}
    if name in aliases:
        return aliases[name]
    section, _, field_name = str(name).partition(".")
    field = _section_fields(section).get(field_name) if section in FACTOR_SECTIONS else None
    if field is None:
        keys = [*FACTORS, *(f"{s}.{f}" for s in FACTOR_SECTIONS for f in _section_fields(s))]
        close = difflib.get_close_matches(str(name), keys, n=1)
        hint = f"; did you mean {key[: -len(str(name))]}{close[0]}?" if close else ""
        raise ConfigError(f"unknown factor {key}{hint} (factors: {', '.join(FACTORS)}, or a key "
                          f"of {', '.join(FACTOR_SECTIONS)} by its dotted path, e.g. model.bn_momentum)")
    if any(typing.get_origin(tp) is tuple for tp in (field.type, *typing.get_args(field.type))):
        raise ConfigError(f"{key}: {name} holds a list, and a factor's levels must be single "
                          "values; vary a key with one value")
    return f"{section}.{field_name}"


def factor_field(name):
    """The ``(section, field)`` of the config that a factor's levels replace."""
    return FACTORS.get(name) or tuple(name.split("."))


def load_builder(spec):
    """The function a ``model.builder`` value names, e.g. ``my_models:build_cnn``.

    Imports the module, which may import TensorFlow.

    Raises:
        ConfigError: the module cannot be imported, or holds nothing callable by that name.
    """
    module_name, _, function_name = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # the user's module may fail in any way; say how, in one line
        cause = " ".join(f"{type(error).__name__}: {error}".split())
        missing = isinstance(error, ModuleNotFoundError) and module_name.startswith(str(error.name))
        fix = ("run from the folder that holds it or add that folder to PYTHONPATH" if missing
               else "fix the module so that it imports")
        raise ConfigError(f"model.builder {spec!r}: cannot import {module_name} ({cause}); {fix}") from None
    builder = getattr(module, function_name, None)
    if not callable(builder):
        raise ConfigError(f"model.builder {spec!r}: {module_name} has no function {function_name}; "
                          f"name a function defined in {module.__file__}")
    _check_builder_parameters(spec, builder)
    return builder


def _check_builder_parameters(spec, builder):
    """Refuses a builder that requires an argument tfbn does not pass (it passes build_mlp's keywords)."""
    from tfbn.models import build_mlp  # imports TensorFlow, which the builder's trials load anyway

    given = inspect.signature(build_mlp).parameters
    try:
        parameters = inspect.signature(builder).parameters.values()
    except (TypeError, ValueError):  # no signature to read (some built-ins): its call will say
        return
    required = [p.name for p in parameters if p.default is p.empty and p.name not in given
                and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if required:
        raise ConfigError(f"model.builder {spec!r}: the function requires {', '.join(required)}, which tfbn "
                          f"does not pass; give {'it a default' if len(required) == 1 else 'them defaults'} "
                          f"or take only build_mlp's keywords ({', '.join(given)})")


def _section_fields(section):
    """A section's fields by name, e.g. ``_section_fields("model")["bn_momentum"]``."""
    section_cls = {f.name: f.type for f in dataclasses.fields(Config)}[section]
    return {f.name: f for f in dataclasses.fields(section_cls)}


def _same_shape(value, tp):
    """Whether ``value`` is a mapping and ``tp`` a section, or a list and ``tp`` a tuple."""
    if isinstance(value, dict):
        return dataclasses.is_dataclass(tp)
    return isinstance(value, (list, tuple)) and typing.get_origin(tp) is tuple


def _choice_name(tp):
    if typing.get_origin(tp) is Literal:
        return ", ".join(map(str, typing.get_args(tp)))
    if dataclasses.is_dataclass(tp):
        return f"a mapping of {', '.join(f.name for f in dataclasses.fields(tp))}"
    return _type_name(tp)


def _type_name(tp):
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false",
            type(None): "null", list: "a list", dict: "a mapping"}.get(tp, tp.__name__)


def _unknown_key_message(key, name, fields):
    close = difflib.get_close_matches(str(name), fields, n=1)
    hint = f"; did you mean {key[: -len(str(name))]}{close[0]}?" if close else ""
    return f"unknown key {key}{hint} (valid keys here: {', '.join(fields)})"


def _check_consistency(config):
    data = config.data
    if data.source == "tfds" and None in _values(config, "data", "name"):
        raise ConfigError("data.name: source tfds needs a data set name, e.g. mnist")
    if data.source == "idx" and None in _values(config, "data", "path"):
        raise ConfigError("data.path: source idx needs the directory of the IDX files")
    _check_known_classes(config)
    for key in ("train_ratio", "test_ratio"):
        for value in _values(config, "data", key) - {None}:
            parts = value.count(":") + 1
            if not data.classes or parts != len(data.classes):
                raise ConfigError(
                    f"data.{key}: ratio {value!r} has {parts} parts but data.classes is "
                    f"{list(data.classes) if data.classes else 'not set'}; list one class per part, "
                    "e.g. classes: [0, 1] with ratio '1:9'")
    if config.study.design == "one_at_a_time":
        for name in config.study.factors or {}:
            section, field = factor_field(name)
            if getattr(getattr(config, section), field) is None:
                raise ConfigError(
                    f"study.factors.{name}: a one_at_a_time design varies each factor from "
                    f"the config's own value, but {section}.{field} is not set; set it to "
                    "the default level, e.g. '1:1'")
    for steps in _values(config, "train", "steps"):
        for every in _values(config, "train", "eval_every"):
            if steps % every:
                raise ConfigError(f"train.steps ({steps}) must be a multiple of train.eval_every "
                                  f"({every}) so that the last step is evaluated")
        for batch in _values(config, "train", "batch_size"):
            if steps * batch > MAX_EXAMPLES:
                raise ConfigError(
                    f"train.steps: {steps} steps of {batch} examples could not finish in a year "
                    f"(tfbn allows {MAX_EXAMPLES:.0e} examples a trial); give at most "
                    f"{MAX_EXAMPLES // batch} steps at batch size {batch}")


def _values(config, section, field):
    """The values a key takes in a study: the config's own and its factor's levels."""
    own = getattr(getattr(config, section), field)
    levels = [levels for name, levels in (config.study.factors or {}).items()
              if factor_field(name) == (section, field)]
    return {own, *(levels[0] if levels else ())}


def _check_known_classes(config):
    """Refuses labels outside a data set whose classes are known before it loads."""
    classes = config.data.classes
    if not classes:
        return
    for source in _values(config, "data", "source"):
        for name in _values(config, "data", "name"):
            data_set = source if source == "digits" else (name or "").partition(":")[0]
            count = KNOWN_DATA.get(data_set, (None,))[0] if source != "idx" else None
            if count is not None and max(classes) >= count:
                raise ConfigError(
                    f"data.classes: {data_set} has the labels 0 .. {count - 1}, not "
                    f"{max(classes)}; list labels in that range, e.g. [0, 1]")
