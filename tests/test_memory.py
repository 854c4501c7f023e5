"""A process's memory depends on the largest pack it trained, not on how many came before."""

import gc
import logging

import psutil

from tfbn.config import load_config
from tfbn.design import apply_factors, run_name
from tfbn.training import Target, train_pack

from helpers import QUICKSTART

PACKS = 20
# When each pack compiled a model of its own, every pack left about 45 MB behind
# (XLA's programs): 850 MB from the second pack to the twentieth. Packs of one shape
# now share one compiled model, and the 18 packs after the second added 6 MB in all.
BOUND_MB = 40


class Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_that_a_process_training_twenty_packs_ends_near_its_memory_after_the_second(tmp_path):
    # TensorFlow's warning that a function traced again and again (each pack's
    # evaluation did) does not reach the user either.
    records = Records()
    config = load_config(QUICKSTART, ["train.steps=50", "train.eval_every=50", "log.instruments=[]"])
    process = psutil.Process()
    resident = []
    logging.getLogger("tensorflow").addHandler(records)
    try:
        for seed in range(PACKS):
            points = [{"bn": bn, "seed": seed} for bn in ("none", "before", "after")]
            packed = train_pack([[Target(apply_factors(config, p), str(tmp_path / str(seed) / run_name(p)))]
                                 for p in points])
            assert [result.status for [result] in packed] == ["ok"] * 3
            gc.collect()
            resident.append(process.memory_info().rss / 2**20)
    finally:
        logging.getLogger("tensorflow").removeHandler(records)
    assert resident[-1] - resident[1] < BOUND_MB, [round(mb) for mb in resident]
    assert not [message for message in records.messages if "retracing" in message]
