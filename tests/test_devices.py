"""A trial across replicas: MirroredStrategy over two logical CPU devices."""

import subprocess
import sys

import pytest

from tfbn.run import main

from helpers import FLAGS, WAIT_S, read_rows, set_args


# Devices.

# Splits the CPU into two logical devices, which must happen before TensorFlow starts.
ON_TWO_CPUS = """
import sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from tfbn.run import main
sys.exit(main(sys.argv[1:]))
"""
MIRRORED = ("distribute.strategy=mirrored", "distribute.devices=[/cpu:0,/cpu:1]")


def run_on_two_cpus(tmp_path, *overrides):
    return subprocess.run([sys.executable, "-c", ON_TWO_CPUS, *FLAGS,
                           *set_args(tmp_path, *MIRRORED, *overrides)],
                          capture_output=True, text=True, timeout=WAIT_S)


def test_that_a_batch_two_replicas_cannot_share_is_refused_before_training(tmp_path):
    result = run_on_two_cpus(tmp_path, "train.batch_size=3")
    assert result.returncode == 2
    [message] = [line for line in result.stderr.splitlines() if line.startswith("tfbn: error:")]
    assert message.startswith("tfbn: error: batch size 3 ") and " 2 replicas" in message
    assert not (tmp_path / "quickstart").exists()


def test_that_a_batch_two_replicas_can_share_trains_with_mirrored_strategy(tmp_path):
    result = run_on_two_cpus(tmp_path, "study.factors.bn=[before]", "train.batch_size=4")
    rows = read_rows(tmp_path / "quickstart")
    assert [(row["status"], row["steps_run"]) for row in rows] == [("ok", "100")], rows
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.parametrize("overrides, message", [
    (["distribute.strategy=mirrored"], "distribute.strategy: mirrored needs two or more devices, "
                                       "and this machine has 0 GPUs"),
    (["distribute.strategy=mirrored", "distribute.devices=[/cpu:0]"],
     "distribute.strategy: mirrored needs two or more devices, and distribute.devices lists 1"),
    (["distribute.devices=[/gpu:5]"], "distribute.devices: this machine has no /gpu:5 (it has /cpu:0)"),
    (["distribute.devices=[/cpu:0, /cpu:0]"], "distribute.devices: ['/cpu:0', '/cpu:0'] names a device twice"),
    (["distribute.parallel_trials=1000"], "distribute.parallel_trials: 1000 workers, but this machine has"),
])
def test_that_devices_this_machine_lacks_are_refused_before_any_work(tmp_path, capsys, overrides, message):
    assert main([*FLAGS, *set_args(tmp_path, *overrides)]) == 2
    assert capsys.readouterr().err.startswith(f"tfbn: error: {message}")
    assert not (tmp_path / "quickstart").exists()
