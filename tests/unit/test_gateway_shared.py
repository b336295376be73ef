"""The workers' shared live-load table: one row per worker, sums over all, one name table."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest

from gateway.routing.live import LiveLoad
from gateway.routing.service_time import Measured, ServiceModel
from gateway.routing.shared import IN_FLIGHT, MAX_VARIANTS, SharedLearning, SharedTable


def _other_worker(path: str) -> None:
    table = SharedTable(2, 1, Path(path))
    live = LiveLoad(table)
    for _ in range(3):
        live.begin("vision__int8")
    live.begin("vision__fp32")
    model = ServiceModel(None, observed_weight=1.0, min_samples=1)
    model.learning = SharedLearning(table, table.column("vision__int8@x"))
    model.observe(1, None, 0.030)


def test_two_processes_share_in_flight_and_learning(tmp_path: Path) -> None:
    path = tmp_path / "live"
    SharedTable.create(path, 2)
    mine = SharedTable(2, 0, path)
    live = LiveLoad(mine)
    live.begin("vision__int8")
    process = multiprocessing.get_context("spawn").Process(target=_other_worker, args=(path,))
    process.start()
    process.join(60)
    assert process.exitcode == 0
    assert live.in_flight("vision__int8") == 4  # one here, three there
    assert live.in_flight("vision__fp32") == 1
    assert live.total == 5
    learned = SharedLearning(mine, mine.column("vision__int8@x"))
    assert learned.read().ratio == pytest.approx(0.030)  # measured in the other worker
    assert learned.read().samples == 1
    assert learned.own() == Measured()  # this worker measured nothing
    mine.clear_worker(1)
    assert live.in_flight("vision__int8") == 1
    assert learned.read().samples == 1  # what was learned survives the worker


def test_learning_is_weighted_by_each_workers_samples(tmp_path: Path) -> None:
    path = tmp_path / "live"
    SharedTable.create(path, 2)
    rows = [SharedTable(2, w, path) for w in (0, 1)]
    learners = [SharedLearning(rows[w], rows[w].column("v@1")) for w in (0, 1)]
    learners[0].write(Measured(2.0, 3.0, 3))
    learners[1].write(Measured(4.0, 8.0, 1))
    assert learners[0].read() == Measured(pytest.approx(2.5), pytest.approx(4.25), 4)
    assert learners[1].own() == Measured(4.0, 8.0, 1)


def test_names_map_to_the_same_columns_everywhere_and_the_table_has_an_end(tmp_path: Path) -> None:
    path = tmp_path / "live"
    SharedTable.create(path, 2)
    a, b = SharedTable(2, 0, path), SharedTable(2, 1, path)
    assert a.column("x__fp32") == b.column("x__fp32") == 0
    assert b.column("y__int8") == a.column("y__int8") == 1
    assert [name for name, _ in a.names()] == ["x__fp32", "y__int8"]
    for i in range(MAX_VARIANTS - 2):
        a.column(f"z{i}")
    assert a.column("one too many") is None
    a.add(None, IN_FLIGHT, 1)  # an uncounted variant is simply not counted
    assert a.total(None, IN_FLIGHT) == 0


def test_a_private_table_needs_no_file_and_rejects_bad_rows() -> None:
    live = LiveLoad()
    live.begin("a")
    live.end("a")
    live.end("a")
    assert live.in_flight("a") == 0 and live.total == 0
    with pytest.raises(ValueError, match="out of range"):
        SharedTable(2, 2)
