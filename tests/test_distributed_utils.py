"""bcl.distributed: single-process no-ops and real 2-process runs (Gloo on CPU, torch.multiprocessing spawn).

Each multi-process test starts its workers with ``torch.multiprocessing.start_processes(join=False)`` and
joins them against a deadline (killing leftovers), so a broken collective fails the test instead of hanging
the suite. Workers catch their own exceptions and write what happened to ``tmp_path/rank{r}.json``
(tensors to ``rank{r}.pt``); the assertions run in the parent.
"""

from __future__ import annotations

import json
import os
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Dict, List

import pytest
import torch
import torch.distributed as dist

import bcl.distributed as bd
from process_launch import free_port, launch
from bcl.distributed import (
    DistInfo,
    all_gather_no_grad,
    all_gather_with_grad,
    all_reduce_sum,
    barrier,
    broadcast_object,
    check_batch_divisible,
    check_same_config,
    cleanup,
    get_rank,
    get_world_size,
    init_distributed,
    is_distributed,
    is_main_process,
    rank_seed,
)

WORLD = 2
B, V, D = 3, 2, 4
ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


# ----------------------------------------------------------------------------------------------------
# Shared inputs (the workers and the single-process reference build the same tensors)
# ----------------------------------------------------------------------------------------------------


pytestmark = pytest.mark.distributed  # Gloo process groups


def _features(rank: int) -> torch.Tensor:
    return torch.randn(B, D, generator=torch.Generator().manual_seed(100 + rank), dtype=torch.float64)


def _weights(rank: int) -> torch.Tensor:
    return torch.randn(WORLD * B, D, generator=torch.Generator().manual_seed(200 + rank), dtype=torch.float64)


def _views(rank: int) -> torch.Tensor:
    return torch.randn(B, V, D, generator=torch.Generator().manual_seed(300 + rank), dtype=torch.float64)


def _view_weights(rank: int) -> torch.Tensor:
    return torch.randn(WORLD * B, V, D, generator=torch.Generator().manual_seed(400 + rank), dtype=torch.float64)


def _contrastive_like(local: torch.Tensor, gathered: torch.Tensor) -> torch.Tensor:
    # Local anchors against the gathered batch: the local rows reach the loss both directly and through
    # the gather, so both gradient paths must add up.
    return torch.logsumexp(local @ gathered.T, dim=1).sum()


# ----------------------------------------------------------------------------------------------------
# Worker plumbing
# ----------------------------------------------------------------------------------------------------


def _expect_error(result: Dict[str, Any], key: str, exc_type: type, fn: Callable[[], Any]) -> None:
    try:
        fn()
    except exc_type as e:
        result[key] = f"{type(e).__name__}: {e}"
    else:
        result[key] = "no error"


def _scenario_main(rank: int, out_dir: Path, result: Dict[str, Any]) -> None:
    info = init_distributed(timeout_s=60.0, backend="gloo")
    result["info"] = [info.rank, info.world_size, info.local_rank, info.backend, info.distributed]
    result["info_again_equal"] = init_distributed(timeout_s=60.0, backend="gloo") == info
    result["helpers"] = [is_distributed(), get_rank(), get_world_size(), is_main_process()]

    result["all_reduce"] = all_reduce_sum(torch.tensor([rank + 1.0, 10.0])).tolist()
    result["broadcast0"] = broadcast_object({"from": rank}, src=0)
    result["broadcast1"] = broadcast_object(["x"] * (rank + 1), src=1)

    saved: Dict[str, torch.Tensor] = {}
    # Linear per-rank losses on the gathered tensor.
    x = _features(rank).requires_grad_()
    gathered = all_gather_with_grad(x)
    (_weights(rank) * gathered).sum().backward()
    saved["gathered"], saved["grad_linear"] = gathered.detach(), x.grad.clone()
    # A contrastive-like loss: local anchors against the gathered batch.
    x = _features(rank).requires_grad_()
    _contrastive_like(x, all_gather_with_grad(x)).backward()
    saved["grad_contrastive"] = x.grad.clone()
    # [B, V, D] inputs.
    x = _views(rank).requires_grad_()
    gathered = all_gather_with_grad(x)
    (_view_weights(rank) * gathered).sum().backward()
    saved["gathered_views"], saved["grad_views"] = gathered.detach(), x.grad.clone()
    # float32 (the training dtype) round-trips too.
    x = _features(rank).float().requires_grad_()
    (_weights(rank).float() * all_gather_with_grad(x)).sum().backward()
    saved["grad_float32"] = x.grad.clone()

    labels = torch.arange(B, dtype=torch.int64) + 10 * rank
    gathered_labels = all_gather_no_grad(labels)
    saved["labels"] = gathered_labels
    no_grad_out = all_gather_no_grad(_features(rank).requires_grad_())
    result["no_grad_requires_grad"] = no_grad_out.requires_grad
    torch.save(saved, out_dir / f"rank{rank}.pt")

    # The shape check is an extra collective, made only in PyTorch's distributed debug mode.
    real_all_gather, calls = dist.all_gather, []
    dist.all_gather = lambda *args, **kwargs: calls.append(1) or real_all_gather(*args, **kwargs)
    all_gather_with_grad(torch.zeros(B, D))
    result["all_gathers_off"] = len(calls)
    dist.set_debug_level(dist.DebugLevel.INFO)
    calls.clear()
    all_gather_with_grad(torch.zeros(B, D))
    result["all_gathers_debug"] = len(calls)
    dist.all_gather = real_all_gather

    # In debug mode mismatches are detected collectively and raised on every rank (none is left waiting).
    _expect_error(result, "unequal_rows", ValueError, lambda: all_gather_with_grad(torch.zeros(2 + rank, D)))
    labels_of_other_length = torch.zeros(4 + rank, dtype=torch.int64)
    _expect_error(result, "unequal_labels", ValueError, lambda: all_gather_no_grad(labels_of_other_length))
    dtype = torch.float32 if rank == 0 else torch.float64
    _expect_error(result, "unequal_dtype", ValueError, lambda: all_gather_with_grad(torch.zeros(B, D, dtype=dtype)))
    dist.set_debug_level(dist.DebugLevel.OFF)
    barrier()  # the group is still usable after those errors
    result["after_errors"] = all_reduce_sum(torch.tensor([1])).tolist()

    check_same_config("model: resnet32\nseed: 0\n")
    result["same_config_ok"] = True
    text = "model: resnet32\nseed: 0\n" if rank == 0 else "model: resnet32\nseed: 1\n"
    _expect_error(result, "different_config", RuntimeError, lambda: check_same_config(text))

    result["batch_8"] = check_batch_divisible(8)
    _expect_error(result, "batch_7", ValueError, lambda: check_batch_divisible(7))

    seed = rank_seed(123, rank)
    result["seeds"] = all_gather_no_grad(torch.tensor([seed], dtype=torch.int64)).tolist()

    cleanup()
    result["after_cleanup"] = [is_distributed(), get_rank(), get_world_size()]
    cleanup()  # twice is fine


def _scenario_rank_dies(rank: int, out_dir: Path, result: Dict[str, Any]) -> None:
    init_distributed(timeout_s=5.0, backend="gloo")
    if rank == 1:
        os._exit(3)  # dies without a word, before the collective
    start = time.monotonic()
    try:
        all_reduce_sum(torch.ones(4))
        barrier()
        result["raised"] = None
    except Exception as e:  # Gloo reports a timeout or a closed connection
        result["raised"] = f"{type(e).__name__}: {e}"
    result["elapsed_s"] = time.monotonic() - start


def _scenario_rank_stalls(rank: int, out_dir: Path, result: Dict[str, Any]) -> None:
    init_distributed(timeout_s=5.0, backend="gloo")
    if rank == 1:  # alive but never joins the collective (stuck in a data loader, say)
        give_up = time.monotonic() + 45.0
        while not (out_dir / "rank0.json").exists() and time.monotonic() < give_up:
            time.sleep(0.1)
        os._exit(0)
    start = time.monotonic()
    try:
        all_reduce_sum(torch.ones(4))
        result["raised"] = None
    except Exception as e:
        result["raised"] = f"{type(e).__name__}: {e}"
    result["elapsed_s"] = time.monotonic() - start


SCENARIOS = {"main": _scenario_main, "rank_dies": _scenario_rank_dies, "rank_stalls": _scenario_rank_stalls}


def _worker(rank: int, world: int, port: int, out_dir: str, scenario: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(world),
    )
    torch.set_num_threads(1)
    result: Dict[str, Any] = {}
    try:
        SCENARIOS[scenario](rank, Path(out_dir), result)
    except BaseException:
        result["worker_error"] = traceback.format_exc()
    (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps(result))
    if scenario != "main":
        os._exit(0)  # skip tearing down a group whose peer is gone; that is not what is tested


def _launch(scenario: str, tmp_path: Path, deadline_s: float = 90.0) -> List[Dict[str, Any]]:
    launch(_worker, (WORLD, free_port(), str(tmp_path), scenario), nprocs=WORLD, deadline_s=deadline_s)
    results = []
    for rank in range(WORLD):
        path = tmp_path / f"rank{rank}.json"
        results.append(json.loads(path.read_text()) if path.exists() else None)
    for rank, r in enumerate(results):
        assert r is None or "worker_error" not in r, f"rank {rank} failed:\n{r['worker_error']}"
    return results


# ----------------------------------------------------------------------------------------------------
# Two processes
# ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def main_run(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("dist_main")
    results = _launch("main", out)
    assert all(r is not None for r in results), "a rank wrote no result"
    saved = [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    return results, saved


def test_two_process_init(main_run):
    results, _ = main_run
    for rank, r in enumerate(results):
        assert r["info"] == [rank, WORLD, rank, "gloo", True]
        assert r["info_again_equal"] is True
        assert r["helpers"] == [True, rank, WORLD, rank == 0]
        assert r["after_cleanup"] == [False, 0, 1]


def test_two_process_reduce_and_broadcast(main_run):
    results, _ = main_run
    for r in results:
        assert r["all_reduce"] == [3.0, 20.0]
        assert r["broadcast0"] == {"from": 0}
        assert r["broadcast1"] == ["x", "x"]


def test_all_gather_with_grad_matches_single_process_reference(main_run):
    _, saved = main_run
    # Reference: one process, the concatenated batch, the sum of every rank's loss.
    full = torch.cat([_features(r) for r in range(WORLD)]).requires_grad_()
    sum(((_weights(r) * full).sum() for r in range(WORLD))).backward()
    ref_linear = full.grad.clone()

    full = torch.cat([_features(r) for r in range(WORLD)]).requires_grad_()
    sum(_contrastive_like(full[r * B : (r + 1) * B], full) for r in range(WORLD)).backward()
    ref_contrastive = full.grad.clone()

    views = torch.cat([_views(r) for r in range(WORLD)]).requires_grad_()
    sum(((_view_weights(r) * views).sum() for r in range(WORLD))).backward()
    ref_views = views.grad.clone()

    for rank, s in enumerate(saved):
        rows = slice(rank * B, (rank + 1) * B)
        torch.testing.assert_close(s["gathered"], torch.cat([_features(r) for r in range(WORLD)]), rtol=0, atol=0)
        torch.testing.assert_close(s["gathered_views"], torch.cat([_views(r) for r in range(WORLD)]), rtol=0, atol=0)
        # The linear case in closed form: the sum over ranks of the weights' slice for this rank's rows.
        torch.testing.assert_close(s["grad_linear"], sum(_weights(r)[rows] for r in range(WORLD)))
        torch.testing.assert_close(s["grad_linear"], ref_linear[rows])
        torch.testing.assert_close(s["grad_contrastive"], ref_contrastive[rows])
        torch.testing.assert_close(s["grad_views"], ref_views[rows])
        torch.testing.assert_close(s["grad_float32"], ref_linear[rows].float())


def test_all_gather_no_grad_labels(main_run):
    results, saved = main_run
    for r, s in zip(results, saved):
        assert s["labels"].dtype == torch.int64
        assert s["labels"].tolist() == [0, 1, 2, 10, 11, 12]
        assert r["no_grad_requires_grad"] is False


def test_shape_checks_cost_a_collective_only_in_debug_mode(main_run):
    results, _ = main_run
    for r in results:
        assert (r["all_gathers_off"], r["all_gathers_debug"]) == (1, 2)


def test_unequal_shapes_raise_on_every_rank_in_debug_mode(main_run):
    results, _ = main_run
    for r in results:
        assert r["unequal_rows"].startswith("ValueError")
        assert "rank 0: (2, 4)" in r["unequal_rows"] and "rank 1: (3, 4)" in r["unequal_rows"]
        assert r["unequal_labels"].startswith("ValueError") and "(5,)" in r["unequal_labels"]
        assert r["unequal_dtype"].startswith("ValueError") and "torch.float64" in r["unequal_dtype"]
        assert r["after_errors"] == [2]


def test_check_same_config_two_processes(main_run):
    results, _ = main_run
    for r in results:
        assert r["same_config_ok"] is True
        msg = r["different_config"]
        assert msg.startswith("RuntimeError")
        assert "inconsistent configs across ranks: ranks [1] differ from rank 0" in msg


def test_check_batch_divisible_two_processes(main_run):
    results, _ = main_run
    for r in results:
        assert r["batch_8"] == 4
        assert r["batch_7"].startswith("ValueError") and "7" in r["batch_7"] and "world size 2" in r["batch_7"]


def test_rank_seeds_differ_across_processes(main_run):
    results, _ = main_run
    for r in results:
        assert r["seeds"] == [rank_seed(123, 0), rank_seed(123, 1)]
        assert len(set(r["seeds"])) == WORLD


def test_a_dead_rank_makes_the_others_fail_not_hang(tmp_path):
    started = time.monotonic()
    results = _launch("rank_dies", tmp_path, deadline_s=60.0)
    assert results[1] is None  # rank 1 died before writing anything
    r0 = results[0]
    assert r0 is not None and r0["raised"] is not None, "rank 0 finished a collective with a dead peer"
    assert r0["elapsed_s"] < 30.0, r0
    assert time.monotonic() - started < 60.0


def test_a_stalled_rank_makes_the_others_time_out(tmp_path):
    results = _launch("rank_stalls", tmp_path, deadline_s=60.0)
    r0 = results[0]
    assert r0 is not None and r0["raised"] is not None, "rank 0 finished a collective without its peer"
    # timeout_s=5: well past it, but nowhere near the 30-minute default (slack for a loaded machine).
    assert 4.0 <= r0["elapsed_s"] < 30.0, r0


# ----------------------------------------------------------------------------------------------------
# One process
# ----------------------------------------------------------------------------------------------------


@pytest.fixture
def plain_env(monkeypatch):
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_init_in_a_plain_process_is_a_no_op(plain_env):
    info = init_distributed()
    assert info == DistInfo(rank=0, world_size=1, local_rank=0, backend=None, distributed=False)
    assert init_distributed() == info  # twice-safe
    assert not is_distributed()
    assert (get_rank(), get_world_size(), is_main_process()) == (0, 1, True)
    barrier()
    cleanup()
    cleanup()


def test_init_with_world_size_one_is_a_no_op(plain_env):
    for name, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"}.items():
        plain_env.setenv(name, value)
    info = init_distributed()
    assert info.distributed is False and info.world_size == 1
    assert not is_distributed()


@pytest.mark.parametrize(
    "env, words",
    [
        ({"RANK": "0"}, ["WORLD_SIZE"]),
        ({"WORLD_SIZE": "2"}, ["RANK"]),
        ({"LOCAL_RANK": "0"}, ["RANK", "WORLD_SIZE"]),
        ({"RANK": "2", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}, ["RANK=2", "WORLD_SIZE=2"]),
        ({"RANK": "-1", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}, ["RANK=-1"]),
        ({"RANK": "0", "WORLD_SIZE": "0", "LOCAL_RANK": "0"}, ["WORLD_SIZE"]),
        ({"RANK": "x", "WORLD_SIZE": "2"}, ["RANK", "'x'"]),
        ({"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "h", "MASTER_PORT": "1"}, ["LOCAL_RANK"]),
        ({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "2"}, ["LOCAL_RANK=2"]),
        ({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}, ["MASTER_ADDR", "MASTER_PORT"]),
        ({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "h"}, ["MASTER_PORT"]),
        (
            {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "h", "MASTER_PORT": "70000"},
            ["MASTER_PORT"],
        ),
        ({"RANK": "0", "WORLD_SIZE": "4", "LOCAL_RANK": "2", "LOCAL_WORLD_SIZE": "2"}, ["LOCAL_WORLD_SIZE"]),
    ],
)
def test_init_rejects_partial_or_inconsistent_env(plain_env, env, words):
    for name, value in env.items():
        plain_env.setenv(name, value)
    with pytest.raises(ValueError) as err:
        init_distributed()
    for word in words:
        assert word in str(err.value)
    assert not is_distributed()


@pytest.mark.parametrize(
    "kwargs", [{"timeout_s": 0}, {"timeout_s": -1.0}, {"timeout_s": float("inf")}, {"backend": "mpi"}]
)
def test_init_rejects_bad_arguments(plain_env, kwargs):
    with pytest.raises(ValueError):
        init_distributed(**kwargs)


def test_rank_seed():
    seeds = [rank_seed(7, r) for r in range(1024)]
    assert len(set(seeds)) == len(seeds)
    assert seeds == [rank_seed(7, r) for r in range(1024)]
    assert rank_seed(7, 0) == 7
    assert all(0 <= s < 2**32 for s in seeds)
    assert rank_seed(7, 1) != rank_seed(8, 1)
    for bad in [(-1, 0), (0, -1), (1.5, 0), (0, True)]:
        with pytest.raises(ValueError):
            rank_seed(*bad)


def test_single_process_gathers_and_reductions():
    x = torch.randn(3, 2, requires_grad=True)
    out = all_gather_with_grad(x)
    assert out is x
    (out * 2).sum().backward()
    torch.testing.assert_close(x.grad, torch.full((3, 2), 2.0))
    labels = torch.tensor([1, 2], dtype=torch.int64)
    assert all_gather_no_grad(labels).tolist() == [1, 2]
    assert all_gather_no_grad(x).requires_grad is False
    with pytest.raises(ValueError, match="0-dim"):
        all_gather_with_grad(torch.tensor(1.0))
    with pytest.raises(TypeError):
        all_gather_with_grad([1.0, 2.0])
    t = torch.tensor([1.0, 2.0])
    assert all_reduce_sum(t) is t
    assert all_reduce_sum(3).item() == 3
    assert broadcast_object({"a": 1}) == {"a": 1}


def test_check_same_config_single_process():
    check_same_config("anything")
    with pytest.raises(TypeError):
        check_same_config(b"bytes")  # type: ignore[arg-type]


def test_check_batch_divisible(monkeypatch):
    assert check_batch_divisible(7) == 7  # world size 1: nothing to check
    monkeypatch.setattr(bd, "get_world_size", lambda: 2)
    assert check_batch_divisible(8) == 4
    with pytest.raises(ValueError) as err:
        check_batch_divisible(7)
    msg = str(err.value)
    assert "7" in msg and "world size 2" in msg and "6 or 8" in msg
    monkeypatch.setattr(bd, "get_world_size", lambda: 4)
    with pytest.raises(ValueError, match=r"e\.g\. 4\b"):
        check_batch_divisible(2)
    with pytest.raises(ValueError):
        check_batch_divisible(0)
