"""tfbn.training: a trial's summary from its evaluations, and the step schedule."""

import math
import warnings

import keras
import pytest

from tfbn.config import TrainConfig, load_config
from tfbn.design import apply_factors
from tfbn.results import TrialResult
from tfbn.training import Target, build_optimizer, steps_per_execution, summarise, train_pack

from helpers import QUICKSTART


def evaluation(loss, accuracy, test_loss, batch_stats=None):
    logs = {"loss": loss, "val_accuracy": accuracy, "val_loss": test_loss}
    if batch_stats is not None:
        logs["val_accuracy_batch_stats"] = batch_stats
    return logs


def test_that_a_diverged_trial_keeps_its_last_finite_evaluation():
    history = [(100, evaluation(0.5, 0.80, 0.60, 0.79)), (200, evaluation(0.4, 0.92, 0.30, 0.91)),
               (300, evaluation(math.nan, 0.10, math.nan, 0.10))]
    assert summarise(history, steps=400, threshold=0.9, seconds=12.345) == TrialResult(
        status="diverged", steps_run=300, final_accuracy=0.92, best_accuracy=0.92,
        steps_to_threshold=200, final_loss=0.30, final_accuracy_batch_stats=0.91, seconds=12.35)


def test_that_a_trial_that_never_reaches_the_threshold_has_no_steps_to_it():
    history = [(100, evaluation(0.5, 0.70, 0.60)), (200, evaluation(0.4, 0.85, 0.40)),
               (300, evaluation(0.3, 0.83, 0.45))]
    result = summarise(history, steps=300, threshold=0.9, seconds=1.0)
    assert result.status == "ok" and result.steps_to_threshold is None
    assert (result.final_accuracy, result.best_accuracy, result.final_loss) == (0.83, 0.85, 0.45)
    assert result.final_accuracy_batch_stats is None  # no BN, no second evaluation mode


def test_that_a_trial_stopped_before_its_last_step_is_not_ok():
    # The loss stayed finite but training ended at step 200 of 300.
    history = [(100, evaluation(0.5, 0.95, 0.2)), (200, evaluation(0.4, 0.96, 0.1))]
    assert summarise(history, steps=300, threshold=0.9, seconds=1.0).status == "diverged"


@pytest.mark.parametrize("eval_every, chunk", [(50, 50), (100, 50), (30, 30), (75, 25), (7, 7), (97, 1)])
def test_that_a_chunk_of_steps_divides_the_evaluation_period(eval_every, chunk):
    assert steps_per_execution(eval_every) == chunk


def test_that_the_optimizer_is_plain_sgd_or_adam_at_the_configured_rate():
    sgd = build_optimizer(TrainConfig(optimizer="sgd", learning_rate=0.05))
    adam = build_optimizer(TrainConfig(optimizer="adam", learning_rate=0.002))
    assert isinstance(sgd, keras.optimizers.SGD) and sgd.momentum == 0
    assert float(sgd.learning_rate) == pytest.approx(0.05)
    assert isinstance(adam, keras.optimizers.Adam) and float(adam.learning_rate) == pytest.approx(0.002)


def test_that_a_diverging_branch_reaches_the_user_without_numpy_warnings(tmp_path):
    # At a learning rate of 1e36 the kernels grow past float32's square root at once.
    config = load_config(QUICKSTART, ["train.steps=100", "train.eval_every=50",
                                      "log.instruments=[weights]", "log.weights_every=50"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        packed = train_pack([[Target(apply_factors(config, {"learning_rate": rate}), str(tmp_path / str(rate)))]
                             for rate in (1e36, 0.01)])
    assert [result.status for [result] in packed] == ["diverged", "ok"]
    assert [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)] == []
