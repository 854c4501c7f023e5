"""Fixtures of the study tests: a process without keras-tuner's role variables, the
subprocesses a test starts, and training replaced by an instant result."""

import pytest

import tfbn.sweep

from helpers import KERASTUNER_VARIABLES, fake_train_pack, instant_result


@pytest.fixture(autouse=True)
def standalone(monkeypatch):
    """Restores keras-tuner's role variables, which `set_role` writes to os.environ."""
    for name in KERASTUNER_VARIABLES:
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)


@pytest.fixture
def processes():
    """Subprocesses a test starts; those still running at its end are killed."""
    started = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.fixture
def trained(monkeypatch):
    """Replaces training by an instant result; lists each trained trial's config."""
    configs = []

    def train_one(config):
        configs.append(config)
        return instant_result(config)

    monkeypatch.setattr(tfbn.sweep, "train_pack", fake_train_pack(train_one))
    return configs
