import itertools
from collections import Counter

from tfbn.config import flatten, parse_config, to_dict
from tfbn.design import apply_factors, default_value, design_points, run_name

# Every factor, with two levels that differ from the defaults below.
TWO_LEVELS = {
    "activation": ["relu", "tanh"], "bn": ["none", "after"], "depth": [1, 3],
    "width": [10, 20], "optimizer": ["sgd", "adam"], "learning_rate": [0.1, 0.001],
    "batch_size": [16, 32], "seed": [1, 2], "train_ratio": ["1:1", "1:3"],
    "test_ratio": ["1:9", "1:19"],
}


def config(design="full_factorial", factors=None, **sections):
    return parse_config({"data": {"classes": [0, 1]}, **sections,
                         "study": {"design": design, "factors": factors}})


def test_that_a_full_factorial_is_every_combination_of_the_levels_in_product_order():
    factors = {"activation": ["relu", "tanh"], "bn": ["none", "before", "after"],
               "seed": [0, 1], "width": [50, 100]}
    points = design_points(config(factors=factors))
    assert len(points) == 2 * 3 * 2 * 2
    assert all(list(p) == ["activation", "bn", "seed", "width"] for p in points)
    # The order is the design's contract with a resumed run: first factor slowest.
    assert [tuple(p.values()) for p in points] == list(itertools.product(
        ["relu", "tanh"], ["none", "before", "after"], [0, 1], [50, 100]))


def test_that_a_full_factorial_over_all_ten_factors_has_one_point_per_combination():
    points = design_points(config(factors=TWO_LEVELS))
    assert len(points) == 2 ** 10
    assert len({tuple(p.items()) for p in points}) == 2 ** 10


def test_that_a_study_without_factors_is_one_trial_of_the_configs_bn_placement():
    assert design_points(config()) == [{"bn": "before"}]
    assert design_points(config(model={"bn": "after"})) == [{"bn": "after"}]
    assert design_points(config("one_at_a_time", model={"bn": "none"})) == [
        {"bn": "none", "seed": 0}]


def test_that_one_at_a_time_varies_each_factor_from_the_defaults_crossed_with_bn_and_seed():
    factors = {"activation": ["relu", "sigmoid", "tanh"], "width": [50, 100],
               "bn": ["none", "before"], "seed": [0, 1]}
    points = design_points(config("one_at_a_time", factors,
                                  model={"activation": "sigmoid", "width": 100}))
    # sigmoid and 100 are the defaults: those levels repeat the default point.
    bases = [("sigmoid", 100), ("relu", 100), ("tanh", 100), ("sigmoid", 50)]
    expected = [(act, width, bn, seed) for act, width in bases
                for bn in ("none", "before") for seed in (0, 1)]
    found = [(p["activation"], p["width"], p["bn"], p["seed"]) for p in points]
    assert Counter(found) == Counter(expected)
    assert len(found) == 16


def test_that_one_at_a_time_crosses_with_the_configs_own_bn_and_seed_when_not_factors():
    points = design_points(config("one_at_a_time", {"optimizer": ["sgd", "adam"]},
                                  model={"bn": "after"}, train={"seed": 7}))
    assert points == [{"optimizer": "sgd", "bn": "after", "seed": 7},
                      {"optimizer": "adam", "bn": "after", "seed": 7}]


def test_that_one_at_a_time_with_several_factors_changes_one_of_them_per_point():
    factors = {"optimizer": ["adam"], "batch_size": [4, 256], "learning_rate": [0.1],
               "bn": ["none", "before", "after"], "seed": [0, 1, 2]}
    points = design_points(config("one_at_a_time", factors))
    default = {"optimizer": "sgd", "batch_size": 64, "learning_rate": 0.01}
    changed = Counter(tuple(k for k in default if p[k] != default[k]) for p in points)
    assert changed == {(): 9, ("optimizer",): 9, ("batch_size",): 18, ("learning_rate",): 9}
    assert len({tuple(p.items()) for p in points}) == len(points) == 45


def test_that_run_names_read_as_short_factor_assignments():
    assert run_name({"bn": "before"}) == "bn=before"
    assert run_name({"activation": "relu", "bn": "none", "seed": 1}) == "act=relu,bn=none,seed=1"
    assert run_name({"test_ratio": "1:9", "learning_rate": 0.001, "batch_size": 16}) == (
        "test=1:9,lr=0.001,bs=16")


def test_that_run_names_are_unique_across_a_design_over_all_factors():
    names = [run_name(p) for p in design_points(config(factors=TWO_LEVELS))]
    assert len(set(names)) == len(names) == 2 ** 10
    assert not any("/" in name or " " in name for name in names)


def test_that_apply_factors_sets_exactly_the_fields_of_the_points_factors():
    base = config(train={"steps": 300})
    point = {"activation": "tanh", "bn": "after", "depth": 3, "width": 7, "optimizer": "adam",
             "learning_rate": 0.5, "batch_size": 16, "seed": 3, "train_ratio": "1:2",
             "test_ratio": "1:9"}
    trial = apply_factors(base, point)
    expected = {"model.activation": "tanh", "model.bn": "after", "model.depth": 3,
                "model.width": 7, "train.optimizer": "adam", "train.learning_rate": 0.5,
                "train.batch_size": 16, "train.seed": 3, "data.train_ratio": "1:2",
                "data.test_ratio": "1:9"}
    before, after = flatten(to_dict(base)), flatten(to_dict(trial))
    assert {key: after[key] for key in after if after[key] != before[key]} == expected
    assert to_dict(base) == to_dict(config(train={"steps": 300}))  # the config is untouched



def test_that_a_dotted_factor_is_labelled_by_its_key_and_sets_that_key():
    base = config(factors={"bn": ["before"], "model.bn_momentum": [0.9, 0.99],
                           "train.threshold": [0.5]})
    points = design_points(base)
    assert [run_name(p) for p in points] == [
        "bn=before,bn_momentum=0.9,threshold=0.5", "bn=before,bn_momentum=0.99,threshold=0.5"]
    trial = apply_factors(base, points[1])
    assert (trial.model.bn_momentum, trial.train.threshold) == (0.99, 0.5)
    assert default_value(base, "model.bn_momentum") == base.model.bn_momentum


def test_that_one_at_a_time_varies_a_dotted_factor_from_the_configs_own_value():
    base = config("one_at_a_time", {"bn": ["none", "before"], "model.bn_epsilon": [0.1]},
                  model={"bn_epsilon": 0.001})
    assert design_points(base) == [
        {"model.bn_epsilon": 0.001, "bn": "none", "seed": 0},
        {"model.bn_epsilon": 0.001, "bn": "before", "seed": 0},
        {"model.bn_epsilon": 0.1, "bn": "none", "seed": 0},
        {"model.bn_epsilon": 0.1, "bn": "before", "seed": 0}]
