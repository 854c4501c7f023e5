"""Bad inputs to ``python -m tfbn.run``: each must be answered in one line, before any work.

    python bench/bad_inputs.py [--only SUBSTRING]

Runs every case below as its own command in a fresh sandbox folder and checks
that it exits with status 2, prints exactly one line (``tfbn: error: ...``,
naming the key) on stderr and nothing on stdout, writes nothing in the sandbox
(``log.dir`` and its parent), and answers within 1 s. Cases that only the loaded
machine or data set can decide (devices, a tensorflow-datasets version, class
ratios, the user's model builder) are checked after TensorFlow starts; they get
the time TensorFlow takes to load, and are counted apart. Prints one line per
case and the counts; exits 1 if any case fails.
"""

import argparse
import os
import pathlib
import subprocess
import sys
import tempfile
import time

REPOSITORY = pathlib.Path(__file__).resolve().parent.parent
QUICKSTART = str(REPOSITORY / "configs" / "quickstart.yaml")
LIMIT_S = 1.0  # a config error, before TensorFlow
# TensorFlow's own start: 5-6 s on an idle machine, 15-40 s on 2 busy cores.
LIMIT_AFTER_TENSORFLOW_S = 60.0
HANG_S = 120.0


class Case:
    """One bad input: ``--set`` overrides or other arguments, a config text or a setup.

    Args:
        name: What is wrong.
        sets: ``--set`` values, applied to the quickstart config.
        key: A word the message must contain (the key it names).
        args: Further command-line arguments.
        config: A config file's bytes, or a setup ``f(sandbox) -> path`` of a config.
        prepare: ``f(sandbox)`` that makes the sandbox's state before the run.
        after_tensorflow: Only the loaded machine or data can decide it.
    """

    def __init__(self, name, sets=(), key="", args=(), config=None, prepare=None,
                 after_tensorflow=False):
        self.name, self.sets, self.key, self.args = name, sets, key, args
        self.config, self.prepare, self.after_tensorflow = config, prepare, after_tensorflow

    def command(self, sandbox):
        if callable(self.config):
            config = self.config(sandbox)
        elif self.config is not None:
            config = sandbox / "config.yaml"
            config.write_bytes(self.config)
        else:
            config = QUICKSTART
        sets = [f"log.dir={sandbox / 'logs'}", "train.steps=100", *self.sets]
        return [sys.executable, "-m", "tfbn.run", "--config", str(config), "--quiet", "--no-report",
                *(arg for value in sets for arg in ("--set", value)), *self.args]


def _folder(sandbox):
    (sandbox / "a_folder.yaml").mkdir()
    return sandbox / "a_folder.yaml"


def _fifo(sandbox):
    os.mkfifo(sandbox / "pipe.yaml")
    return sandbox / "pipe.yaml"


def _unreadable(sandbox):
    path = sandbox / "secret.yaml"
    path.write_text("train:\n  steps: 100\n")
    path.chmod(0)
    return path


def _results_folder(sandbox):
    (sandbox / "logs" / "quickstart" / "results.csv").mkdir(parents=True)


def _log_dir_file(sandbox):
    (sandbox / "logs").write_text("not a folder")


def _experiment_file(sandbox):
    (sandbox / "logs").mkdir()
    (sandbox / "logs" / "quickstart").write_text("not a folder")


def _outside(sandbox):
    (sandbox / "x").mkdir()
    (sandbox / "x" / "keep.txt").write_text("keep me")


CASES = [
    # Inputs that once gave tracebacks, hangs or silently wrong studies.
    Case("non-finite initializer", ["model.initializer=.nan"], "model.initializer"),
    Case("non-finite leaky slope", ["model.leaky_slope=.nan"], "model.leaky_slope"),
    Case("NaN learning rate", ["train.learning_rate=.nan"], "train.learning_rate"),
    Case("infinite learning rate", ["train.learning_rate=.inf"], "train.learning_rate"),
    Case("negative seed", ["train.seed=-1"], "train.seed"),
    Case("seed above 2^63", ["train.seed=9223372036854775808"], "train.seed"),
    Case("experiment ..", ["experiment=.."], "experiment"),
    Case("experiment ./../x with --restart", ["experiment=./../x"], "experiment",
         args=["--restart"], prepare=_outside),
    Case("empty experiment", ["experiment="], "experiment"),
    Case("empty experiment with --restart", ["experiment="], "experiment", args=["--restart"]),
    Case("experiment a/b", ["experiment=a/b"], "experiment"),
    Case("300-character experiment", ["experiment=" + "x" * 300], "experiment"),
    Case("repeated class", ["data.classes=[0,0]"], "data.classes"),
    Case("one class", ["data.classes=[3]"], "data.classes"),
    Case("no classes", ["data.classes=[]"], "data.classes"),
    Case("class 42 of the digits", ["data.classes=[0,42]"], "data.classes"),
    Case("class list [42]", ["data.classes=[42]"], "data.classes"),
    Case("duplicate train section", config=b"train:\n  steps: 100\ntrain:\n  steps: 200\n", key="train"),
    Case("config is a folder", config=_folder, key="folder"),
    Case("config is a named pipe", config=_fifo, key="regular file"),
    Case("config is not UTF-8", config=b"train:\n  steps: 100 \xff\xfe\n", key="UTF-8"),
    Case("scalar config with --set", config=b"5\n", key="top level"),
    Case("--set value that does not parse", ["train.steps=[1,"], "train.steps"),
    Case("step count beyond reach", ["train.steps=100000000000000000000000"], "train.steps"),
    Case("mirrored strategy without devices", ["distribute.strategy=mirrored"],
         "distribute.strategy", after_tensorflow=True),
    Case("a GPU that is not there", ["distribute.strategy=mirrored", "distribute.devices=[/gpu:5]"],
         "distribute.devices", after_tensorflow=True),
    Case("a network too wide for memory", ["model.width=50000000"], "model.width"),
    Case("results.csv is a folder", key="results.csv", prepare=_results_folder),
    Case("tensorflow-datasets version that does not exist",
         ["data.source=tfds", "data.name=mnist:9.9.9", "data.data_dir=/nonexistent/tfds"],
         "data.name", after_tensorflow=True),
    Case("test ratio beyond the data", ["data.classes=[0,1]", "data.test_ratio=1:999"],
         "data.test_ratio", after_tensorflow=True),
    Case("config that does not exist", config=lambda sandbox: sandbox / "nope.yaml", key="not found"),
    Case("misspelt key", ["train.stepz=5"], "train.steps"),
    # More of the same kinds.
    Case("batch size 0", ["train.batch_size=0"], "train.batch_size"),
    Case("batch size true", ["train.batch_size=true"], "train.batch_size"),
    Case("eval_every 0", ["train.eval_every=0"], "train.eval_every"),
    Case("steps not a multiple of eval_every", ["train.steps=120"], "train.eval_every"),
    Case("unknown optimizer", ["train.optimizer=rmsprop"], "train.optimizer"),
    Case("unknown activation", ["model.activation=swish"], "model.activation"),
    Case("unknown BN placement", ["model.bn=sideways"], "model.bn"),
    Case("momentum above 1", ["model.bn_momentum=1.5"], "model.bn_momentum"),
    Case("NaN momentum", ["model.bn_momentum=.nan"], "model.bn_momentum"),
    Case("negative epsilon", ["model.bn_epsilon=-1"], "model.bn_epsilon"),
    Case("noise interval reversed", ["model.noise_shift=[1,0]"], "model.noise_shift"),
    Case("NaN in the noise interval", ["model.noise_scale=[1,.nan]"], "model.noise_scale"),
    Case("negative initializer std", ["model.initializer=-0.1"], "model.initializer"),
    Case("infinite initializer std", ["model.initializer=.inf"], "model.initializer"),
    Case("depth 0", ["model.depth=0"], "model.depth"),
    Case("negative width", ["model.width=-5"], "model.width"),
    Case("fractional width", ["model.width=1.5"], "model.width"),
    Case("deep wide network beyond memory", ["model.width=200000", "model.depth=50"], "model.width"),
    Case("pack of 0 branches", ["train.pack=0"], "train.pack"),
    Case("unknown data source", ["data.source=imagenet"], "data.source"),
    Case("tfds without a name", ["data.source=tfds"], "data.name"),
    Case("idx without a path", ["data.source=idx"], "data.path"),
    Case("ratio without classes", ["data.test_ratio=1:9"], "data.test_ratio"),
    Case("ratio that is not one", ["data.classes=[0,1]", "data.test_ratio=1-9"], "data.test_ratio"),
    Case("negative class", ["data.classes=[-1,2]"], "data.classes"),
    Case("class listed twice among three", ["data.classes=[0,1,1]"], "data.classes"),
    Case("cap of 0 examples", ["data.max_train_per_class=0"], "data.max_train_per_class"),
    Case("unknown instrument", ["log.instruments=[telepathy]"], "log.instruments"),
    Case("weights every 0 steps", ["log.weights_every=0"], "log.weights_every"),
    Case("negative probe size", ["log.probe_size=-1"], "log.probe_size"),
    Case("unknown Jacobian mode", ["log.jacobian_mode=exact"], "log.jacobian_mode"),
    Case("0 parallel trials", ["distribute.parallel_trials=0"], "distribute.parallel_trials"),
    Case("more workers than the machine", ["distribute.parallel_trials=1000"],
         "distribute.parallel_trials", after_tensorflow=True),
    Case("unknown strategy", ["distribute.strategy=tpu"], "distribute.strategy"),
    Case("device that is no device", ["distribute.strategy=mirrored", "distribute.devices=[/toaster:0]"],
         "distribute.devices", after_tensorflow=True),
    Case("unknown design", ["study.design=random"], "study.design"),
    Case("misspelt factor", ["study.factors.activaton=[relu]"], "study.factors.activation"),
    Case("bad factor level", ["study.factors.bn=[before,sideways]"], "study.factors.bn"),
    Case("repeated factor level", ["study.factors.seed=[0,0]"], "study.factors.seed"),
    Case("negative seed as a level", ["study.factors.seed=[-1]"], "study.factors.seed"),
    Case("NaN as a dotted factor's level", ["study.factors.model.bn_momentum=[.nan]"], "bn_momentum"),
    Case("list-valued key as a factor", ["study.factors.data.classes=[[0,1]]"], "data.classes"),
    Case("misspelt dotted factor", ["study.factors.model.bn_momentm=[0.9]"], "model.bn_momentum"),
    Case("one key as two factors", ["study.factors={bn: [none], model.bn: [before]}"], "bn"),
    Case("a level with a slash", ["data.source=tfds", "study.factors.data.name=[a/b]"], "data.name"),
    Case("factors as a list", ["study.factors=[bn]"], "study.factors"),
    Case("builder that names no function", ["model.builder=not a function"], "model.builder"),
    Case("builder whose module is missing", ["model.builder=no_such_module_xyz:build"],
         "model.builder", after_tensorflow=True),
    Case("builder whose function is missing", ["model.builder=json:no_such_function"],
         "model.builder", after_tensorflow=True),
    Case("--set without =", ["train.steps"], "key.path=value"),
    Case("--set of a section to a number", ["train=5"], "train"),
    Case("--set under a value", ["train.steps.x=1"], "steps"),
    Case("unknown section", ["trian.steps=5"], "train"),
    Case("YAML syntax error", config=b"train: [\n", key="YAML"),
    Case("tab-indented YAML", config=b"train:\n\tsteps: 100\n", key="YAML"),
    Case("duplicate key inside a section", config=b"model:\n  width: 5\n  width: 6\n", key="width"),
    Case("hidden experiment name", ["experiment=.hidden"], "experiment"),
    Case("experiment name with spaces around", ["experiment=' spaced '"], "experiment"),
    Case("quoted empty experiment", ["experiment=''"], "experiment"),
    Case("experiment name with a tab", ["experiment=a\tb"], "experiment"),
    Case("log.dir is a file", key="log.dir", prepare=_log_dir_file),
    Case("log.dir under a file", ["log.dir=logs/runs"], key="log.dir", prepare=_log_dir_file),
    Case("experiment folder is a file", key="experiment", prepare=_experiment_file),
    Case("steps above 2^31", ["train.steps=3000000000", "train.eval_every=1000"], "train.steps"),
    Case("examples beyond a year", ["train.steps=1000000000", "train.batch_size=10000"], "train.steps"),
    Case("seed above 2^32 - 1", ["train.seed=4294967296"], "train.seed"),
    Case("--oracle without --role", key="--role", args=["--oracle", "127.0.0.1:1"]),
    Case("--one-pack without --role worker", key="--one-pack", args=["--one-pack"]),
    Case("worker with a bad oracle address", key="--oracle", args=["--role", "worker", "--oracle", "nohost"]),
    Case("depth true", ["model.depth=true"], "model.depth"),
    Case("empty config with steps 0", ["train.steps=0"], "train.steps", config=b""),
]
if os.geteuid() != 0:  # root reads any file
    CASES.append(Case("config that cannot be read", config=_unreadable, key="cannot be read"))


def snapshot(folder):
    """Every path under ``folder`` with its kind, size and modification time."""
    return {str(p): (p.is_dir(), p.lstat().st_size, p.lstat().st_mtime_ns)
            for p in [folder, *folder.rglob("*")]}


def run_case(case, root):
    sandbox = pathlib.Path(tempfile.mkdtemp(dir=root))
    if case.prepare:
        case.prepare(sandbox)
    command = case.command(sandbox)
    before = snapshot(sandbox)
    start = time.monotonic()
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=HANG_S, cwd=sandbox)
    except subprocess.TimeoutExpired:
        return False, HANG_S, f"no answer in {HANG_S:.0f} s"
    seconds = time.monotonic() - start
    lines = result.stderr.splitlines()
    limit = LIMIT_AFTER_TENSORFLOW_S if case.after_tensorflow else LIMIT_S
    problems = [problem for problem, bad in [
        (f"exit status {result.returncode}", result.returncode != 2),
        (f"{len(lines)} lines on stderr", len(lines) != 1),
        ("stdout not empty", result.stdout != ""),
        ("no 'tfbn: error:'", not result.stderr.startswith("tfbn: error: ")),
        (f"message does not name {case.key!r}", case.key not in result.stderr),
        ("wrote into the sandbox", snapshot(sandbox) != before),
        (f"took {seconds:.2f} s", seconds > limit),
    ] if bad]
    shown = lines[-1] if lines else result.stdout[-200:]
    return not problems, seconds, "; ".join(problems) + (" -- " if problems else "") + shown


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", default="", help="run the cases whose name contains this")
    args = parser.parse_args()
    cases = [case for case in CASES if args.only in case.name]
    environment_note = "" if os.geteuid() != 0 else " (as root: the unreadable-config case is skipped)"
    passed = {False: 0, True: 0}
    slowest = {False: 0.0, True: 0.0}
    with tempfile.TemporaryDirectory() as root:
        for case in cases:
            ok, seconds, detail = run_case(case, root)
            passed[case.after_tensorflow] += ok
            slowest[case.after_tensorflow] = max(slowest[case.after_tensorflow], seconds)
            print(f"{'ok  ' if ok else 'FAIL'} {seconds:5.2f} s  {case.name}: {detail}", flush=True)
    before = sum(not case.after_tensorflow for case in cases)
    after = len(cases) - before
    print(f"\nbefore TensorFlow: {passed[False]}/{before} answered in one line, exit 2, nothing "
          f"written, under {LIMIT_S:.0f} s (slowest {slowest[False]:.2f} s)")
    print(f"after TensorFlow loads (devices, data, builders): {passed[True]}/{after} answered in "
          f"one line, exit 2, nothing written (slowest {slowest[True]:.2f} s){environment_note}")
    return 0 if sum(passed.values()) == len(cases) else 1


if __name__ == "__main__":
    sys.exit(main())
