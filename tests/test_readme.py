"""The README's code runs as written: every ``python`` block in order in one namespace,
every ``sh`` block in a shell (training commands with fewer steps), both in a
temporary folder that holds the repository's configs. A block preceded by a
``<!-- not run: REASON -->`` line is left out."""

import dataclasses
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest
from sklearn.datasets import load_digits

REPOSITORY = pathlib.Path(__file__).parent.parent
README = REPOSITORY / "README.md"

# Shell commands the test leaves out, by how they start, and why.
NOT_RUN = {
    "python3 -m venv": "makes the virtual environment the tests already run in",
    ". .venv/bin/activate": "enters the virtual environment the tests already run in",
    "pip install": "installs into the environment the tests already run in",
    "pytest": "runs the test suite, this test included",
    "tensorboard": "starts a server that runs until it is stopped",
    "apt-get": "installs system packages",
}
# Appended to each `python -m tfbn.run` command: a few evaluations' worth of steps.
FEWER_STEPS = " --set train.steps=100 --set train.eval_every=50"

_FENCE = re.compile(r"^( *)```(\w*)\s*$")
_NOT_RUN_MARKER = re.compile(r"^\s*<!-- not run: (.*\S) -->\s*$")


@dataclasses.dataclass(frozen=True)
class Block:
    language: str
    line: int  # of the opening fence, 1-based
    code: str
    not_run: str  # the marker's reason; empty for a block that runs


def readme_blocks():
    """The fenced blocks of the README, dedented to their fence."""
    lines = README.read_text().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        fence = _FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        indent, language = fence.groups()
        end = next(j for j in range(i + 1, len(lines)) if lines[j] == f"{indent}```")
        marker = _NOT_RUN_MARKER.match(lines[i - 1]) if i else None
        code = "\n".join(line[len(indent):] for line in lines[i + 1:end]) + "\n"
        blocks.append(Block(language, i + 1, code, marker.group(1) if marker else ""))
        i = end + 1
    return blocks


def blocks_to_run(language):
    return [b for b in readme_blocks() if b.language == language and not b.not_run]


def shell_commands(code):
    """``code``'s commands to run, with fewer steps, and those left out with the reason."""
    run, left_out = [], []
    for line in code.replace("\\\n", " ").splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        for command in (c.strip() for c in line.split("&&")):
            reason = next((r for start, r in NOT_RUN.items() if command.startswith(start)), None)
            if reason:
                left_out.append((command, reason))
            else:
                run.append(command + FEWER_STEPS if "python -m tfbn.run" in command else command)
    return run, left_out


@pytest.fixture
def readme_folder(tmp_path, monkeypatch):
    """A working folder that holds the repository's configs, as a clone's root does."""
    (tmp_path / "configs").symlink_to(REPOSITORY / "configs")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_that_the_readme_has_blocks_to_run_and_every_left_out_one_says_why():
    blocks = readme_blocks()
    assert len(blocks_to_run("python")) >= 2 and len(blocks_to_run("sh")) >= 2
    assert all(b.not_run.strip() for b in blocks if b.not_run)
    for block in blocks_to_run("sh"):
        run, left_out = shell_commands(block.code)
        assert run or left_out, f"README.md:{block.line} has no command"


@pytest.mark.parametrize("block", blocks_to_run("sh"), ids=lambda b: f"README.md:{b.line}")
def test_that_a_shell_block_runs(block, readme_folder):
    commands, _ = shell_commands(block.code)
    if not commands:
        pytest.skip(f"every command is left out: {shell_commands(block.code)[1]}")
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    result = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", "\n".join(commands)],
                            cwd=readme_folder, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"README.md:{block.line}\n{result.stdout}\n{result.stderr}"


def test_that_the_python_blocks_run_in_order(readme_folder):
    namespace = {"__name__": "__readme__"}
    for block in blocks_to_run("python"):
        exec(compile(block.code, f"README.md:{block.line}", "exec"), namespace)


def test_that_the_own_code_example_as_written_learns_the_digits(readme_folder):
    import keras

    block = next(b for b in blocks_to_run("python") if "tfbn.build_mlp(" in b.code)
    namespace = {"__name__": "__readme__"}
    exec(compile(block.code, f"README.md:{block.line}", "exec"), namespace)
    model = namespace["model"]
    digits = load_digits()
    x = np.zeros((len(digits.data), model.input_shape[1]), "float32")
    x[:, :digits.data.shape[1]] = digits.data / 16  # zero-padded to the model's input width
    keras.utils.set_random_seed(0)
    model.fit(x[:1500], digits.target[:1500], epochs=15, verbose=0)
    predicted = np.argmax(model.predict(x[1500:], verbose=0), axis=1)
    assert np.mean(predicted == digits.target[1500:]) > 0.5
