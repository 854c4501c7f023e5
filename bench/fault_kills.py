"""Aimed kill -9s at a study's writes, and whether the same command then finishes it.

Each attempt starts a small quickstart study (3 trials of their own, no packing)
with a hook (a ``sitecustomize`` on PYTHONPATH) that sends SIGKILL to the study's
process at one chosen moment: while keras-tuner's oracle file or a trial file is
written, right after a trial is created (its file says RUNNING, the oracle has
not saved it), just before or right after a row is appended, or halfway through
writing a row. Then the same command runs again, without the hook, and the
attempt counts what it left: an experiment the command could not finish, design
points without a row or with several, results other than an uninterrupted run's.

    python bench/fault_kills.py --attempts 50 [--steps 200] [--seed 0]

Prints one line per attempt and the totals.
"""

import argparse
import collections
import csv
import os
import pathlib
import random
import shutil
import subprocess
import sys
import tempfile
import textwrap

ROOT = pathlib.Path(__file__).resolve().parent.parent
RUNS = ("bn=none", "bn=before", "bn=after")
# Where the hook kills, and how many such moments an uninterrupted study of 3 trials has
# (keras-tuner saves the oracle 3 times a trial and its file 3 times, twice saying RUNNING).
TARGETS = {"oracle write": 9, "trial file write": 9, "trial created": 6, "before row": 3,
           "after row": 3, "torn row": 3}

HOOK = textwrap.dedent('''
    """Sends SIGKILL to this process at the FAULT_AT-th moment of kind FAULT_TARGET."""
    import json
    import os
    import signal

    import keras_tuner.src.utils as kt_utils
    import tfbn.results

    target, at = os.environ["FAULT_TARGET"], int(os.environ["FAULT_AT"])
    seen = [0]


    def due(kind):
        if kind != target:
            return False
        seen[0] += 1
        return seen[0] == at


    def kill():
        os.kill(os.getpid(), signal.SIGKILL)


    def save_json(path, obj, save=kt_utils.save_json):
        if path.endswith("trial.json") and due("trial file write"):
            text = json.dumps(obj)
            with open(path, "w") as f:  # keras-tuner's own way: in place
                f.write(text[:len(text) // 2])
            kill()
        result = save(path, obj)
        if path.endswith("trial.json") and obj.get("status") == "RUNNING" and due("trial created"):
            kill()
        return result


    def write_atomically(path, text, write=tfbn.results.write_atomically):
        if str(path).endswith("oracle.json") and due("oracle write"):
            with open(path, "w") as f:  # as if it were written in place
                f.write(text[:len(text) // 2])
            kill()
        return write(path, text)


    def append_row(path, row, columns, append=tfbn.results.append_row):
        if due("before row"):
            kill()
        if target == "torn row" and due("torn row"):
            line = tfbn.results._csv_line([row.get(c) for c in columns])
            append(path, row, columns)  # the header, if new, as written
            with open(path, "rb+") as f:  # then the row cut in half
                f.seek(-len(line.encode()), os.SEEK_END)
                f.truncate(f.tell() + len(line.encode()) // 2)
            kill()
        append(path, row, columns)
        if due("after row"):
            kill()


    kt_utils.save_json = save_json
    tfbn.results.write_atomically = write_atomically
    tfbn.results.append_row = append_row
''')


def command(log_dir, steps):
    overrides = [f"log.dir={log_dir}", f"train.steps={steps}", "train.eval_every=50",
                 "log.instruments=[]", "train.pack=off", "study.factors.bn=[none, before, after]"]
    return [sys.executable, "-m", "tfbn.run", "--config", str(ROOT / "configs" / "quickstart.yaml"),
            "--quiet", "--no-report", *(arg for o in overrides for arg in ("--set", o))]


def outcome(experiment):
    """Each run's rows (status, steps and accuracies) as results.csv holds them."""
    path = experiment / "results.csv"
    if not path.exists():
        return {}
    rows = collections.defaultdict(list)
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            rows[row["run"]].append((row["status"], row["steps_run"], row["final_accuracy"],
                                     row["best_accuracy"], row["final_loss"]))
    return dict(rows)


def run(args, env=None):
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--attempts", type=int, default=50)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    work = pathlib.Path(tempfile.mkdtemp(prefix="fault_kills."))
    (work / "hook").mkdir()
    (work / "hook" / "sitecustomize.py").write_text(HOOK)

    reference = run(command(work / "reference", args.steps))
    assert reference.returncode == 0, reference.stderr[-2000:]
    expected = outcome(work / "reference" / "quickstart")
    assert sorted(expected) == sorted(RUNS) and all(len(v) == 1 for v in expected.values())

    totals = collections.Counter()
    for attempt in range(args.attempts):
        target = rng.choice(sorted(TARGETS))
        at = rng.randint(1, TARGETS[target])
        log_dir = work / f"attempt{attempt}"
        killed = run(command(log_dir, args.steps), env={
            **os.environ, "PYTHONPATH": str(work / "hook"), "FAULT_TARGET": target,
            "FAULT_AT": str(at)})
        again = run(command(log_dir, args.steps))
        found = outcome(log_dir / "quickstart")
        lost = [r for r in RUNS if r not in found]
        repeated = [r for r in RUNS if len(found.get(r, [])) > 1]
        differ = [r for r in RUNS if r in found and found[r][-1] != expected[r][0]]
        unfinished = again.returncode != 0
        totals.update(attempts=1, killed=killed.returncode == -9, unfinished=unfinished,
                      lost=len(lost), repeated=len(repeated), differ=len(differ))
        print(f"{attempt:3d} {target:16s} #{at}: first exit {killed.returncode}, again exit "
              f"{again.returncode}; lost {lost or '-'}, repeated {repeated or '-'}, "
              f"differ {differ or '-'}", flush=True)
        if unfinished:
            print("    " + again.stderr.strip().splitlines()[-1], flush=True)
        shutil.rmtree(log_dir, ignore_errors=True)
    print(f"\n{totals['attempts']} attempts, {totals['killed']} killed: {totals['unfinished']} "
          f"experiments the same command could not finish, {totals['lost']} points lost, "
          f"{totals['repeated']} recorded twice, {totals['differ']} with other results than "
          "an uninterrupted run")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
