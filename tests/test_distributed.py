"""Training under torchrun with gloo on the CPU: 2 processes, loopback addresses only.

The slow tests read two jobs on tiny data, one thread per process: two
single-process launches of ``python -m torch.distributed.run`` meeting as two
"nodes" (the API, the command line, the estimator, sharded Parquet, then a
rank that raises), and two processes forked from this one with torchrun's
environment, whose rank 1 hangs. Starting the processes costs far more than
their training, so each job runs once and serves several tests. The other
tests check the sharding and coordination helpers in this process, where no
job is running.
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from torchclf import accel, distributed
from torchclf.data import shards

HERE = Path(__file__).parent
SCRIPT = HERE / "distributed_script.py"
sys.path.insert(0, str(HERE))
import distributed_script as script  # noqa: E402
from forked import Forked  # noqa: E402

LAUNCH_TIMEOUT_S = 150


def free_port() -> int:
    """A loopback port that is free now, drawn from below the kernel's ephemeral range.

    torchrun binds it a few seconds later. A port that the kernel handed out for
    ``bind(0)`` may meanwhile go to any socket on the machine that asks for one
    (the other pytest worker's servers and connections, torchrun's own workers);
    a port below the ephemeral range goes only to a process that names it.
    """
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    draw = random.Random()  # from the system's entropy: two workers draw different ports
    for _ in range(200):
        port = draw.randrange(max(1024, low - 12000), low)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:  # taken
                continue
            return port
    raise RuntimeError(f"no free port below {low}")


def launch_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo", MPLBACKEND="Agg",
               PYTHONWARNINGS="ignore")
    env.update(extra)
    return env


def failure(text: str) -> str:
    """What a failed launch said: its lines naming an error (the workers' come first), then its last 2000 characters."""
    errors = [line for line in text.splitlines() if "Error" in line]
    return "\n".join(errors[:20]) + "\n...\n" + text[-2000:]


def weights(state: dict) -> dict[str, np.ndarray]:
    return {k: np.asarray(v, dtype=np.float32) for k, v in state.items()}


def no_partial_folders(parent: Path, name: str) -> bool:
    return not any(p.name.startswith(f".{name}.") for p in parent.iterdir())


# ----- helpers, in this process (no job) --------------------------------------
def test_strided_share_gives_equal_disjoint_shares_that_form_the_global_batches():
    order = torch.randperm(103, generator=torch.Generator().manual_seed(0))
    world, local_batch = 3, 4
    shares = [distributed.strided_share(order, r, world) for r in range(world)]
    assert {len(s) for s in shares} == {103 // world}
    together = torch.cat(shares)
    assert len(set(together.tolist())) == len(together) == 102
    # Local batch k of every rank together is batch k of one process with batch world * local_batch.
    single = torch.split(order[:102], world * local_batch)
    per_rank = [torch.split(s, local_batch) for s in shares]
    assert len(single) == len(per_rank[0])
    for k, batch in enumerate(single):
        assert sorted(torch.cat([p[k] for p in per_rank]).tolist()) == sorted(batch.tolist())


def test_strided_share_refuses_fewer_rows_than_ranks():
    with pytest.raises(distributed.TorchclfError, match="fewer processes"):
        distributed.strided_share(torch.arange(1), 0, 2)


@pytest.mark.parametrize("requested, cores, local, expected", [
    (None, 2, 2, 1), (None, 16, 4, 4), (None, 2, 4, 1), (8, 16, 4, 4), (2, 16, 4, 2), (None, 7, 2, 3),
])
def test_thread_count_divides_cores_between_local_ranks(requested, cores, local, expected):
    assert accel.thread_count(requested, cores, local) == expected


def test_launch_from_env():
    assert distributed.launch_from_env({}) is None
    assert distributed.launch_from_env({"RANK": "0", "WORLD_SIZE": "1"}) is None
    launch = distributed.launch_from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"})
    assert launch == distributed.Launch(rank=3, world_size=4, local_rank=1, local_world_size=2)
    with pytest.raises(distributed.TorchclfError, match="not integers"):
        distributed.launch_from_env({"RANK": "x", "WORLD_SIZE": "2"})
    with pytest.raises(distributed.TorchclfError, match="inconsistent"):
        distributed.launch_from_env({"RANK": "2", "WORLD_SIZE": "2"})


def test_timeout_from_env(monkeypatch):
    monkeypatch.setenv(distributed.TIMEOUT_ENV, "12.5")
    assert distributed.timeout().total_seconds() == 12.5
    monkeypatch.setenv(distributed.TIMEOUT_ENV, "soon")
    with pytest.raises(distributed.TorchclfError, match="TORCHCLF_DIST_TIMEOUT"):
        distributed.timeout()


def test_a_failed_collective_becomes_one_line_naming_the_timeout():
    with pytest.raises(distributed.TorchclfError, match=r"rank 0: summing across ranks failed \(Connection closed "
                                                        r"by peer\); .*TORCHCLF_DIST_TIMEOUT="):
        with distributed._collective("summing across ranks"):
            raise RuntimeError("Connection closed by peer\nsecond line")


def test_outside_a_job_everything_is_local(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert distributed.setup() is False
    assert (distributed.world_size(), distributed.rank(), distributed.is_main()) == (1, 0, True)
    assert distributed.sum_across_ranks(torch.tensor(1.5), torch.tensor(3), 4) == [1.5, 3.0, 4.0]
    order = torch.arange(10)
    assert distributed.shard_permutation(order) is order
    assert distributed.shard_range(10) == slice(None)
    model = torch.nn.Linear(2, 1)
    assert distributed.wrap(model) is model
    assert distributed.any_rank(True) and not distributed.any_rank(False)


def write_row_groups(path: Path, sizes: list[int], seed: int = 0):
    """A Parquet file with the given row-group sizes; class "c" only in groups 1 and 2."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    frames = []
    for g, n in enumerate(sizes):
        x1, x2 = rng.normal(size=n), rng.normal(size=n)
        label = np.where(x1 > 0, "a", "b").astype(object)
        if g in (1, 2):
            label[x2 > 0.5] = "c"
        frames.append(pd.DataFrame({"x1": x1, "x2": x2, "group": g, "label": label}))
    with pq.ParquetWriter(path, pa.Schema.from_pandas(frames[0], preserve_index=False)) as writer:
        for frame in frames:
            writer.write_table(pa.Table.from_pandas(frame, preserve_index=False))
    return pd.concat(frames, ignore_index=True)


def test_assign_parts_balances_rows_and_covers_each_part_once():
    sizes = [60, 50, 50, 40, 7]
    owned = shards.assign_parts(sizes, 2)
    assert sorted(i for part in owned for i in part) == list(range(len(sizes)))
    loads = [sum(sizes[i] for i in part) for part in owned]
    assert max(loads) - min(loads) <= max(sizes)
    assert shards.assign_parts(sizes, 2) == owned  # the same on every rank


def test_read_parquet_part_reads_disjoint_row_groups_that_cover_the_file(tmp_path):
    whole = write_row_groups(tmp_path / "t.parquet", [60, 50, 50, 40])
    parts = [shards.read_parquet_part(tmp_path / "t.parquet", r, 2) for r in range(2)]
    assert sorted(parts[0]["group"].unique()) == [0, 3] and sorted(parts[1]["group"].unique()) == [1, 2]
    both = pd_concat(parts).sort_values(["group", "x1"]).reset_index(drop=True)
    assert both.equals(whole.sort_values(["group", "x1"]).reset_index(drop=True))
    with pytest.raises(shards.TorchclfError, match="fewer processes"):
        shards.read_parquet_part(tmp_path / "t.parquet", 0, 5)


def test_a_folder_of_parquet_files_is_split_by_file(tmp_path):
    for i, n in enumerate([30, 30, 30]):
        write_row_groups(tmp_path / f"part-{i}.parquet", [n], seed=i)
    parts = [shards.read_parquet_part(tmp_path, r, 3) for r in range(3)]
    assert [len(p) for p in parts] == [30, 30, 30]
    assert len(pd_concat(parts).drop_duplicates()) == 90


def test_sharded_reading_is_opt_in_under_torchrun(tmp_path):
    write_row_groups(tmp_path / "t.parquet", [10, 10])
    job = {"RANK": "1", "WORLD_SIZE": "2"}
    assert shards.rank_and_world(job) is None
    assert shards.rank_and_world({**job, shards.SHARD_ENV: "1"}) == (1, 2)
    assert shards.rank_and_world({"RANK": "0", "WORLD_SIZE": "1", shards.SHARD_ENV: "1"}) is None
    assert shards.reads_part(str(tmp_path / "t.parquet"), {**job, shards.SHARD_ENV: "1"})
    assert not shards.reads_part("circles", {**job, shards.SHARD_ENV: "1"})
    assert len(shards.read_rank_part(tmp_path / "t.parquet", {**job, shards.SHARD_ENV: "1"})) == 10


def pd_concat(frames):
    import pandas as pd

    return pd.concat(frames, ignore_index=True)


# ----- real jobs -----------------------------------------------------------------
def two_launches(args: list[str], logs_to: Path) -> tuple[list[int], list[str], float]:
    """Two torchrun launches of one process each (two "nodes" on this machine) meeting at a c10d rendezvous
    on 127.0.0.1; returns their exit statuses, their outputs and the time (``time.time()``) both had ended."""
    port = free_port()
    # The first launch hosts the rendezvous store, the second connects to it (retrying until it is up):
    # left to guess, both would try to host it on the same port at once.
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1",
           "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", f"--rdzv-id=two-nodes-{port}",
           "--local-addr=127.0.0.1"]
    # Output to files, not pipes: waiting on one launch must not leave the other blocked on a full pipe.
    logs = [logs_to / f"launch{i}.log" for i in range(2)]
    nodes = []
    try:
        for host, log in zip((1, 0), logs):
            with open(log, "w") as fh:
                nodes.append(subprocess.Popen([*cmd, f"--rdzv-conf=is_host={host}", *args], stdout=fh,
                                              stderr=subprocess.STDOUT, text=True, env=launch_env()))
        deadline = time.monotonic() + LAUNCH_TIMEOUT_S
        for node in nodes:
            node.wait(timeout=max(1.0, deadline - time.monotonic()))
        ended = time.time()
    finally:
        for node in nodes:
            if node.poll() is None:
                node.kill()
                node.wait()
    return [node.returncode for node in nodes], [log.read_text() for log in logs], ended


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """The user script on two single-process launches ("two nodes" on this machine), local batch 8.

    Each rank trains through the API and dumps its weights (and more, see distributed_script.py), runs the
    command line with the same settings into one run folder, and then trains once more, a run in which rank 1
    raises in epoch 2: the job ends there, with a non-zero status. One launch of two processes serves every
    test that only reads its results: the launch, not the training, is what costs seconds.
    """
    work = tmp_path_factory.mktemp("ddp")
    cli_out, crash_out = tmp_path_factory.mktemp("ddp-cli"), tmp_path_factory.mktemp("ddp-crash")
    write_row_groups(work / "table.parquet", [60, 50, 50, 40])
    codes, outs, ended = two_launches([str(SCRIPT), "train", str(work), str(cli_out / "run"), str(crash_out / "run")],
                                      tmp_path_factory.mktemp("ddp-logs"))
    dumps = [work / f"rank{r}.json" for r in range(2)]
    assert all(d.is_file() for d in dumps), "\n".join(
        f"--- launch {i} (exit {code}): its workers' errors, then its last lines\n{failure(out)}"
        for i, (code, out) in enumerate(zip(codes, outs)))
    job = {"codes": codes, "text": "\n".join(outs), "ended": ended, "cli_out": cli_out, "crash_out": crash_out}
    return work, [json.loads(d.read_text()) for d in dumps], job


@pytest.fixture(scope="module")
def single_process():
    """The same training in this process with the same global batches (batch 16 = 2 x 8)."""
    import torchclf

    result = torchclf.train(script.DATA, config=script.config(2 * script.LOCAL_BATCH))
    state = {k: v.numpy() for k, v in result.predictor.model.state_dict().items()}
    return state, result.history


@pytest.fixture(scope="module")
def hung(tmp_path_factory):
    """The two processes of a single-machine job whose rank 1 stalls in epoch 2, after each rank wrote its thread
    count; rank 0 waits out the 3 s timeout (long beyond a healthy collective on this data) and fails.

    They are forked from this process with the environment torchrun gives its workers (RANK, LOCAL_RANK, their
    sizes, the rendezvous address), and once rank 0 has ended, rank 1 gets torchrun's SIGTERM: two_ranks'
    launches are the torchrun here, this job is about torchclf's timeout. Returns the folder, the exit statuses,
    the ranks' output and the seconds rank 0 took.
    """
    work = tmp_path_factory.mktemp("hang")
    port = free_port()
    logs = [work / f"rank{r}.log" for r in range(2)]
    ranks = []
    t0 = time.perf_counter()
    try:
        for rank, log in enumerate(logs):
            env = launch_env(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                             MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), TORCHCLF_DIST_TIMEOUT="3")
            with open(log, "w") as fh:
                ranks.append(Forked(lambda: script.run(["hang", str(work), str(work / "run")]), env=env,
                                    stdout=fh, stderr=fh))
        ranks[0].wait(timeout=LAUNCH_TIMEOUT_S)
        seconds = time.perf_counter() - t0
    finally:
        for rank in ranks:
            rank.terminate()
            rank.wait(timeout=30)
    return work, [rank.returncode for rank in ranks], "\n".join(log.read_text() for log in logs), seconds


@pytest.mark.slow
def test_both_ranks_end_with_identical_weights(two_ranks):
    work, (r0, r1), _ = two_ranks
    assert r0["world"] == r1["world"] == 2
    assert sorted(p.name for p in work.iterdir()) == ["rank0.json", "rank1.json", "table.parquet"]
    w0, w1 = weights(r0["state"]), weights(r1["state"])
    assert w0.keys() == w1.keys()
    for name in w0:
        np.testing.assert_array_equal(w0[name], w1[name], err_msg=name)
    drop_time = [{k: v for k, v in row.items() if k != "seconds"} for row in r0["history"]]
    assert drop_time == [{k: v for k, v in row.items() if k != "seconds"} for row in r1["history"]]


@pytest.mark.slow
def test_two_ranks_match_one_process_over_the_same_global_batches(two_ranks, single_process):
    _, (r0, _), _ = two_ranks
    state, history = single_process
    w0 = weights(r0["state"])
    # Only the order of float additions differs (gradient averaging, loss sums).
    for name, ref in state.items():
        np.testing.assert_allclose(w0[name], ref, rtol=0, atol=2e-5, err_msg=name)
    assert len(r0["history"]) == len(history) == script.TRAIN["epochs"]
    for dd, one in zip(r0["history"], history):
        assert dd["train_accuracy"] == one["train_accuracy"]
        assert dd["val_accuracy"] == one["val_accuracy"]
        assert dd["train_loss"] == pytest.approx(one["train_loss"], rel=1e-5)
        assert dd["val_loss"] == pytest.approx(one["val_loss"], rel=1e-5)


@pytest.mark.slow
def test_parquet_parts_train_one_model_with_every_rank_reading_only_its_row_groups(two_ranks):
    _, (r0, r1), _ = two_ranks
    p0, p1 = r0["parquet"], r1["parquet"]
    assert (p0["rows"], p1["rows"]) == (100, 100)  # groups {0, 3} and {1, 2} of 60, 50, 50, 40 rows
    # Class "c" is only in rank 1's row groups, yet both ranks code three classes.
    assert p0["classes"] == p1["classes"] == ["a", "b", "c"]
    w0, w1 = weights(p0["state"]), weights(p1["state"])
    for name in w0:
        np.testing.assert_array_equal(w0[name], w1[name], err_msg=name)
    # Test metrics count every rank's held-out rows.
    assert p0["test_confusion"] == p1["test_confusion"]
    assert np.sum(p0["test_confusion"]) == p0["test_rows"] + p1["test_rows"]


@pytest.mark.slow
def test_each_rank_gets_its_share_of_the_cores(hung):
    """Two processes on one machine (the two launches of two_ranks each have a machine to themselves)."""
    work = hung[0]
    expected = accel.thread_count(None, accel.available_cores(), 2)
    assert [int((work / f"threads-rank{r}.txt").read_text()) for r in range(2)] == [expected, expected]


@pytest.mark.slow
def test_estimator_works_unchanged_under_torchrun(two_ranks):
    _, (r0, r1), _ = two_ranks
    if r0["estimator"] is None:
        pytest.skip("torchclf.estimator is not part of this build yet")
    np.testing.assert_array_equal(np.asarray(r0["estimator"]), np.asarray(r1["estimator"]))


@pytest.mark.slow
def test_two_nodes_on_one_machine_run_the_cli(two_ranks):
    """The command line, run by each rank of two_ranks' two launches: one report, one folder, the API's weights.

    It runs without its pictures (about 3 s on rank 0 that nothing here checks).
    """
    _, (r0, r1), job = two_ranks
    assert r0["cli_exit"] == r1["cli_exit"] == 0
    cli_out = job["cli_out"]
    assert job["text"].count("run folder:") == 1, job["text"][-3000:]  # only rank 0 reports
    assert [p.name for p in cli_out.iterdir()] == ["run"]  # one complete folder, no partial ones
    assert (cli_out / "run" / "metrics.json").is_file() and (cli_out / "run" / "history.csv").is_file()
    import torchclf

    saved = torchclf.load(cli_out / "run").model.state_dict()
    for name, ref in weights(r0["state"]).items():
        np.testing.assert_allclose(saved[name].numpy(), ref, rtol=0, atol=1e-6, err_msg=name)


@pytest.mark.slow
def test_a_crashing_rank_stops_the_job_and_leaves_no_run_folder(two_ranks):
    """two_ranks' last run: rank 1 raises in epoch 2, and both launches end, non-zero, leaving no run folder."""
    _, _, job = two_ranks
    crash_out = job["crash_out"]
    assert 0 not in job["codes"], job["codes"]
    assert "injected failure on rank 1" in job["text"]
    began = min(float((crash_out / f"crash-start-rank{r}.txt").read_text()) for r in range(2))
    assert job["ended"] - began < 60  # the other rank did not wait out TORCHCLF_DIST_TIMEOUT (600 s)
    assert not (crash_out / "run").exists() and no_partial_folders(crash_out, "run")
    assert not any(crash_out.glob("after-crash-rank*"))  # no rank went on past the failed run


@pytest.mark.slow
def test_a_hanging_rank_is_bounded_by_the_timeout(hung):
    work, codes, text, seconds = hung
    assert codes[0] not in (0, None) and codes[1] == 143, (codes, text[-3000:])
    assert "rank 1 stalls in epoch 2" in text and "Timed out" in text, text[-3000:]
    assert seconds < 90, text[-3000:]
    assert not (work / "run").exists() and no_partial_folders(work, "run")
