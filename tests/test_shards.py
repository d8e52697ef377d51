"""Several workers on one ablation grid (issue #26): claims (ablations/claims.py), `--shard k/n` workers
(ablations/shards.py) and the report's measured wall-clock of several workers.

The workers run the fake 2-arm table of tests/test_ablations.py with a stand-in for train_net.py (its
FakeTrainNet, slowed down and traced), as separate processes started at once on one results directory.
"""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from ablations.claims import claim_is_dead, claim_prefix, fs_now, list_claims, process_start, try_claim

TESTS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TESTS)


# ------------------------------------------------------------------------------------------------------------
# Claims
# ------------------------------------------------------------------------------------------------------------
def _foreign_claim(result_file, generation, *, pid, host=None, age_s=0.0, owner=None):
    """A claim file as another process wrote it."""
    from ablations.claims import host_identity

    me = host_identity()
    record = {"token": f"other{generation}", "owner": owner, **me, "pid": pid, "pid_start": process_start(pid),
              "claimed": "earlier"}
    if host:
        record.update(host=host, boot_id="another boot", pidns=1)
    path = claim_prefix(result_file) + str(generation)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(record, f)
    t = fs_now(os.path.dirname(path)) - age_s
    os.utime(path, (t, t))
    return path


def _dead_pid():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_a_claim_is_exclusive_until_released(tmp_path):
    run = str(tmp_path / "cpu" / "t" / "a" / "seed0.json")
    claim, holder = try_claim(run, info={"shard": "1/2"})
    assert claim is not None and holder is None
    assert claim.path == claim_prefix(run) + "0" and json.load(open(claim.path))["shard"] == "1/2"
    # the same process claiming again counts as live (it is the holder)
    again, holder = try_claim(run)
    assert again is None and f"pid {os.getpid()}" in holder
    claim.release()
    assert list_claims(run) == []
    claim2, _ = try_claim(run)
    assert claim2 is not None and claim2.path.endswith(".claim.0")
    claim2.release()


def test_dead_claims_are_taken_over_and_live_ones_are_not(tmp_path):
    run = str(tmp_path / "seed0.json")
    # this host, process gone: dead at once; the taker creates the next generation and removes the dead file
    dead = _foreign_claim(run, 0, pid=_dead_pid())
    claim, _ = try_claim(run)
    assert claim.path.endswith(".claim.1") and not os.path.exists(dead)
    claim.release()
    # this host, process alive (our parent): live
    _foreign_claim(run, 2, pid=os.getppid())
    assert try_claim(run)[0] is None
    os.unlink(claim_prefix(run) + "2")
    # another host: live while its heartbeat is fresh, dead once it is older than the timeout
    _foreign_claim(run, 3, pid=1, host="elsewhere", age_s=5)
    claim, holder = try_claim(run, timeout_s=60)
    assert claim is None and holder.startswith("elsewhere pid 1")
    _foreign_claim(run, 3, pid=1, host="elsewhere", age_s=120)
    claim, _ = try_claim(run, timeout_s=60)
    assert claim is not None and claim.path.endswith(".claim.4")
    # ...and the holder's heartbeat keeps its claim live for the others
    old = fs_now(str(tmp_path)) - 120
    os.utime(claim.path, (old, old))
    info = list_claims(run)[0]
    assert claim_is_dead(info, fs_now(str(tmp_path)), timeout_s=60, me={"host": "x", "boot_id": 0, "pidns": 0})
    with claim.kept_alive(period_s=0.05):
        time.sleep(0.3)
    assert not claim_is_dead(list_claims(run)[0], fs_now(str(tmp_path)), timeout_s=60,
                             me={"host": "x", "boot_id": 0, "pidns": 0})
    claim.release()
    # a scheduler task's own claim from before its requeue (same owner) is taken over at once
    _foreign_claim(run, 7, pid=os.getppid(), owner="submitit:12_3")
    assert try_claim(run, owner="submitit:12_4")[0] is None
    claim, _ = try_claim(run, owner="submitit:12_3")
    assert claim.path.endswith(".claim.8")
    claim.release()


def test_a_claimer_that_listed_before_another_claimed_withdraws(tmp_path, monkeypatch):
    """The race the second listing closes: a worker lists no claim, another process claims (here: generation 1,
    live), then the first creates generation 0. It must see the other live claim and withdraw."""
    from ablations import claims

    run = str(tmp_path / "seed0.json")
    other = _foreign_claim(run, 1, pid=os.getppid())
    real = claims.list_claims
    calls = []

    def listing(path):  # the first listing predates the other's claim
        calls.append(path)
        return [] if len(calls) == 1 else real(path)

    monkeypatch.setattr(claims, "list_claims", listing)
    claim, holder = claims.try_claim(run)
    assert claim is None and f"pid {os.getppid()}" in holder
    assert len(calls) >= 2 and [c.path for c in real(run)] == [other]  # its generation 0 gone, the other's kept


_RACER = textwrap.dedent(r"""
    import os, sys, time
    sys.path.insert(0, sys.argv[1])
    from ablations.claims import try_claim
    root, me, n = sys.argv[2], sys.argv[3], int(sys.argv[4])
    while not os.path.exists(os.path.join(root, "go")):
        time.sleep(0.001)
    for rnd in range(3):  # several passes: runs released by others are claimable again
        for i in range(n):
            run = os.path.join(root, f"seed{i}.json")
            claim, _ = try_claim(run)
            if claim is None:
                continue
            if not os.path.exists(run):  # what a worker does: check the result after claiming
                fd = os.open(run, os.O_CREAT | os.O_EXCL | os.O_WRONLY)  # FileExistsError: a run done twice
                os.write(fd, me.encode())
                os.close(fd)
            claim.release()
""")


def test_racing_claimers_run_every_run_exactly_once(tmp_path):
    """4 processes race for 60 runs (a third with a dead claim to recover): each run is done exactly once."""
    n = 60
    for i in range(0, n, 3):
        _foreign_claim(str(tmp_path / f"seed{i}.json"), 0, pid=_dead_pid())
    procs = [subprocess.Popen([sys.executable, "-c", _RACER, REPO, str(tmp_path), str(w), str(n)],
                              stderr=subprocess.PIPE, text=True) for w in range(4)]
    time.sleep(1.0)  # all started and waiting
    (tmp_path / "go").write_text("")
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(errors)
    done = sorted(int(f.name[4:-5]) for f in tmp_path.glob("seed*.json"))
    assert done == list(range(n))
    assert not list(tmp_path.glob("*.claim.*")) and not list(tmp_path.glob(".clock-*"))
    winners = {(tmp_path / f"seed{i}.json").read_text() for i in range(n)}
    assert len(winners) > 1  # the runs were shared out, not all taken by one process


# ------------------------------------------------------------------------------------------------------------
# Shares
# ------------------------------------------------------------------------------------------------------------
def test_parse_shard_names_the_problem():
    from ablations.shards import parse_shard

    assert parse_shard("2/3") == (2, 3)
    for bad, message in (("0/2", "k must be in 1..n"), ("3/2", "k must be in 1..n"), ("1", "expected k/n"),
                         ("a/b", "expected k/n")):
        with pytest.raises(ValueError, match=message):
            parse_shard(bad)


def test_shares_of_the_missing_units_are_disjoint_and_cover_them(tmp_path):
    from ablations.records import result_path
    from ablations.shards import Unit, share

    units = [Unit([("t", f"arm{i % 4}", i // 4)], "cpu", str(tmp_path)) for i in range(11)]
    for u in units[1:4]:  # finished ones are in no share
        path = result_path("t", "cpu", u.key[1], u.key[2], str(tmp_path))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        open(path, "w").write("{}")
    shares = [share(units, k, 3) for k in (1, 2, 3)]
    flat = [u.key for s in shares for u in s]
    assert sorted(flat) == sorted(u.key for u in units[:1] + units[4:]) and len(set(flat)) == len(flat)
    assert [len(s) for s in shares] == [3, 3, 2]
    assert [u.key for u in shares[0]] == [units[i].key for i in (0, 6, 9)]  # every 3rd of the missing, from the 1st


# ------------------------------------------------------------------------------------------------------------
# --shard workers: separate processes on one results directory
# ------------------------------------------------------------------------------------------------------------
def write_fake_table(tmp_path):
    """The configs of tests/test_ablations.py's fake table (arms a = RoIPool, b = RoIAlign on tiny data); returns
    the roots for the harness."""
    from ablations.paths import arm_config_path
    from test_ablations import TINY_DATA

    for arm, src in (("a", "roipool"), ("b", "roialign_avg")):
        d = tmp_path / "configs" / "cpu" / "fake"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{arm}.yaml").write_text(
            f'_BASE_: "{arm_config_path("2c", "cpu", src)}"\n'
            f'DATASETS:\n  TRAIN: {TINY_DATA[1]}\n  TEST: {TINY_DATA[3]}\n'
            f'  SHAPES:\n    ROOT: "{tmp_path / "data"}"\n')
    return dict(configs_root=str(tmp_path / "configs"), results_root=str(tmp_path / "results"),
                output_root=str(tmp_path / "output"), docs_dir=str(tmp_path / "docs"))


def fake_table():
    """tests/test_ablations.py's fake table (its `fake_table` fixture adds it to TABLES for one test)."""
    from ablations.tables import AblationTable, Arm

    return AblationTable(
        key="fake", title="fake 2c", paper_table="2c",
        arms={"cpu": [Arm("a", "RoIPool", "RoIPool (max)"), Arm("b", "RoIAlign", "RoIAlign (avg)")]},
        baseline={"cpu": "a"}, ablated_keys={"cpu": ("MODEL.ROI_EXTRACTOR.",)}, plot_iou=True,
        notes={"cpu": "A fake table for the tests."})


class TracedFake:
    """FakeTrainNet (tests/test_ablations.py) that takes `delay` seconds and appends "start|end <arm> <seed> <pid>"
    to `trace`; for `hang` = (arm, seed) it writes a checkpoint pointer and never ends (to be killed)."""

    def __init__(self, trace, delay=0.5, hang=None):
        self.trace, self.delay, self.hang = trace, delay, tuple(hang) if hang else None

    def _note(self, what, arm, seed):
        with open(self.trace, "a") as f:
            f.write(f"{what} {arm} {seed} {os.getpid()}\n")

    def __call__(self, argv, log_path):
        from test_ablations import FakeTrainNet, _opt

        out, seed = _opt(argv, "OUTPUT_DIR"), int(_opt(argv, "SEED"))
        arm = os.path.basename(os.path.dirname(out))
        self._note("start", arm, seed)
        if self.hang == (arm, seed) and not os.path.exists(os.path.join(out, "last_checkpoint")):
            os.makedirs(out, exist_ok=True)
            open(os.path.join(out, "last_checkpoint"), "w").write("model_0000001.pth")
            time.sleep(600)
        time.sleep(self.delay)
        rc = FakeTrainNet()(argv, log_path)
        self._note("end", arm, seed)
        return rc


_WORKER = textwrap.dedent(r"""
    import json, sys
    spec = json.loads(sys.argv[1])
    from ablations.cli import add_ablation_arguments, run_ablation_from_args
    from ablations.tables import TABLES
    from detectron2.engine import default_argument_parser
    from test_shards import TracedFake, fake_table

    TABLES["fake"] = fake_table()
    args = add_ablation_arguments(default_argument_parser()).parse_args(spec["argv"])
    sys.exit(run_ablation_from_args(args, runner=TracedFake(spec["trace"], hang=spec.get("hang"))))
""")


def _start_worker(roots, trace, shard, hang=None):
    """A worker process; its output goes to <trace>.<k>.log (read with `_output`)."""
    argv = ["--ablation", "fake", "--seeds", "0", "1", "--shard", shard, "--shard-poll", "0.3",
            "--results-dir", roots["results_root"], "--ablation-output", roots["output_root"],
            "--docs-dir", roots["docs_dir"], "--ablation-configs", roots["configs_root"]]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([REPO, TESTS]), "PYTHONUNBUFFERED": "1"}
    with open(f"{trace}.{shard[0]}.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-c", _WORKER, json.dumps({"argv": argv, "trace": trace,
                                                                            "hang": hang})],
                                cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    proc.log = log.name
    return proc


def _output(worker):
    return open(worker.log).read()


def _wait_for(condition, what, worker, timeout=240):
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline and worker.poll() is None, f"waiting for {what}:\n{_output(worker)[-3000:]}"
        time.sleep(0.2)


def _trace(path):
    return [line.split() for line in open(path).read().splitlines()] if os.path.exists(path) else []


def _results(roots):
    from ablations.records import load_results

    return load_results(roots["results_root"]).get("cpu", {}).get("fake", {})


def test_two_shard_workers_started_at_once_do_every_run_exactly_once(tmp_path):
    roots, trace = write_fake_table(tmp_path), str(tmp_path / "trace")
    workers = [_start_worker(roots, trace, f"{k}/2") for k in (1, 2)]
    for w in workers:
        w.wait(timeout=300)
    assert all(w.returncode == 0 for w in workers), "\n".join(_output(w)[-3000:] for w in workers)
    ends = sorted((arm, seed) for what, arm, seed, _ in _trace(trace) if what == "end")
    assert ends == [("a", "0"), ("a", "1"), ("b", "0"), ("b", "1")]  # each run trained once
    results = _results(roots)
    assert {(arm, s) for arm, recs in results.items() for s in recs} == {("a", 0), ("a", 1), ("b", 0), ("b", 1)}
    for recs in results.values():
        for rec in recs.values():
            assert rec["worker"]["kind"] == "shard" and rec["worker"]["shard"] in ("1/2", "2/2")
            assert rec["finished_unix"] > rec["started_unix"] and "--shard" in rec["suite_command"]
    assert not list((tmp_path / "results").rglob("*.claim.*"))
    # each worker rebuilt the report at its end; the last one's has every run and the measured wall-clock
    report = (tmp_path / "docs" / "ablations.md").read_text()
    assert "Measured with `--shard k/2` workers: 4 of these runs took" in report
    assert "Caveat: all of them ran on one machine" in report


def test_a_killed_workers_claim_is_recovered_by_the_other(tmp_path):
    """Worker 1 is killed (SIGKILL) in the middle of its first run, a/0, while worker 2, done with its share and
    a/1, waits on worker 1's claim: the claim stays behind, worker 2 finds it dead and runs a/0 (resuming its
    checkpoint)."""
    roots, trace = write_fake_table(tmp_path), str(tmp_path / "trace")
    w1 = _start_worker(roots, trace, "1/2", hang=("a", 0))
    w2 = _start_worker(roots, trace, "2/2")
    _wait_for(lambda: "waiting for 1 unit(s) other workers hold" in _output(w2), "worker 2 to wait", w2)
    assert [t[:3] for t in _trace(trace) if t[0] == "start" and t[3] == str(w1.pid)] == [["start", "a", "0"]]
    claims = list((tmp_path / "results" / "cpu" / "fake" / "a").glob("seed0.claim.*"))
    assert [c.name for c in claims] == ["seed0.claim.0"] and json.load(open(claims[0]))["pid"] == w1.pid
    w1.send_signal(signal.SIGKILL)
    w1.wait(timeout=60)
    w2.wait(timeout=300)
    out2 = _output(w2)
    assert w2.returncode == 0, out2[-3000:]
    runs = _trace(trace)
    a0 = [(what, pid) for what, arm, seed, pid in runs if (arm, seed) == ("a", "0")]
    assert a0 == [("start", str(w1.pid)), ("start", str(w2.pid)), ("end", str(w2.pid))], runs
    assert sorted((arm, seed) for what, arm, seed, _ in runs if what == "end") == [
        ("a", "0"), ("a", "1"), ("b", "0"), ("b", "1")]
    rec = _results(roots)["a"][0]
    assert rec["worker"]["shard"] == "2/2" and rec["resumed"] is True
    assert "ablation summary: 4 done" in out2  # b/0, b/1, then a/1 and a/0 of worker 1's share
    assert not list((tmp_path / "results").rglob("*.claim.*"))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_killed_runner_takes_its_training_subprocess_with_it(tmp_path):
    """The runner's subprocess (train_net.py; here a sleeper) ends when the runner is killed with SIGKILL, so a
    dead worker leaves no training that would hold the run's OUTPUT_DIR."""
    from ablations.claims import process_alive

    pid_file = tmp_path / "child.pid"
    child = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(120)"
    runner = subprocess.Popen([sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); "
                               "from ablations.runner import run_command; "
                               "run_command([sys.executable, '-c', sys.argv[2]], sys.argv[3])",
                               REPO, child, str(tmp_path / "log.txt")])
    deadline = time.time() + 60
    while not (pid_file.exists() and pid_file.read_text()):
        assert time.time() < deadline and runner.poll() is None
        time.sleep(0.1)
    child_pid = int(pid_file.read_text())
    assert process_alive(child_pid)
    runner.kill()
    runner.wait()
    deadline = time.time() + 20
    while process_alive(child_pid):  # an orphan is reaped by init once it exits
        assert time.time() < deadline, "the training subprocess outlived its runner"
        time.sleep(0.1)


# ------------------------------------------------------------------------------------------------------------
# The report: measured wall-clock of several workers
# ------------------------------------------------------------------------------------------------------------
def test_report_states_the_measured_wall_clock_of_several_workers():
    from ablations.suite_time import parallel_measurements, parallel_time_sentences, union_seconds

    assert union_seconds([(0, 10), (5, 15), (20, 30)]) == 25 and union_seconds([(0, 10), (2, 3)]) == 10
    assert "not measured yet" in parallel_time_sentences([(("t", "a"), {"wall_s": 60.0})], 1.0)

    def rec(host, pid, start, end):
        return {"wall_s": end - start, "started_unix": start, "finished_unix": end,
                "worker": {"kind": "shard", "n": 2, "shard": "1/2", "host": host, "pid": pid}}

    # the whole suite by two workers on two machines, two runs each of one hour; a day's pause is not counted
    day = 86400
    runs = [(("t", "a"), rec("m1", 1, 0, 3600)), (("t", "b"), rec("m2", 2, 0, 3600)),
            (("t", "a"), rec("m1", 1, day, day + 3600)), (("t", "b"), rec("m2", 2, day, day + 3600))]
    (g,) = parallel_measurements(runs)
    assert (g["runs"], g["wall_clock_s"], g["serial_s"], g["solo_s"], g["workers"], g["hosts"]) == (
        4, 7200, 14400, None, 2, ["m1", "m2"])
    text = parallel_time_sentences(runs, 240.0)
    assert "4 of these runs took 2.0 h of wall-clock" in text and "The whole suite took 2.0 h that way" in text
    assert "never ran alone: t/a, t/b" in text and "Caveat" not in text and "projected" not in text
    # part of the suite by two workers on one machine: the speed-up is over the same arms' runs alone (a resumed
    # run's partial wall time is not one), the whole suite at that speed-up is labelled projected, and the caveat
    alone = [(("t", "a"), {"wall_s": 1800.0}), (("t", "a"), {"wall_s": 2400.0}),
             (("t", "a"), {"wall_s": 60.0, "resumed": True}), (("t", "b"), {"wall_s": 3000.0})]
    shared = [(("t", "a"), rec("vm", 1, 0, 3000)), (("t", "b"), rec("vm", 2, 0, 4200))]
    (g,) = parallel_measurements(alone + shared)
    assert (g["wall_clock_s"], g["serial_s"], g["solo_s"], g["workers"]) == (4200, 7200, 2100 + 3000, 2)
    # workers are counted as runs in flight at once: a worker's next invocation (a new process) is not another
    assert parallel_measurements(shared + [(("t", "a"), rec("vm", 3, 4200, 5000))])[0]["workers"] == 2
    text = parallel_time_sentences(alone + shared, 600.0, n_missing=3)
    assert "2 of these runs took 1.2 h of wall-clock" in text and "1.4 h one run at a time" in text
    assert "a speed-up of 1.21, each run taking 1.41x its arm's time alone" in text
    assert "the whole suite (10.0 h one run at a time, its missing runs included) would take about 8.2 h " \
           "(projected, not measured)" in text
    assert "Caveat: all of them ran on one machine (vm)" in text


def test_the_suite_line_counts_missing_runs_at_their_arms_time_alone():
    from types import SimpleNamespace

    from ablations.suite_time import suite_time_line

    table = SimpleNamespace(key="t", arms_for=lambda scale: [SimpleNamespace(name="a"), SimpleNamespace(name="b")])
    shard = {"started_unix": 0, "finished_unix": 5400, "wall_s": 5400.0, "seed": 1,
             "worker": {"kind": "shard", "n": 2, "host": "vm", "pid": 1}}
    have = {"t": {"a": {0: {"wall_s": 1800.0}, 1: shard}, "b": {0: {"wall_s": 3600.0}}}}
    line = suite_time_line("cpu", [table], have)
    # missing: a seed 2 at a's 30 min alone (not the shard run's 90), b seeds 1 and 2 at 60 min each
    assert "3 trained arm+seed runs, 3.0 h" in line and "3 arm+seed runs, about 2.5 h more" in line
    # the whole suite one at a time: 30 + 30 (the shard run at its arm's time alone) + 60 + 150 = 4.5 h
    assert "the whole suite (4.5 h one run at a time" in line and "speed-up of 0.33" in line
