from gateway.routing.placement import Resident, plan_placement

MB = 1 << 20


def resident(
    name: str,
    mb: int,
    demand: float = 0.0,
    in_flight: int = 0,
    last: float = 0.0,
    loading: bool = False,
) -> Resident:
    return Resident(name, mb * MB, in_flight, demand, last, loading)


def test_loads_into_free_memory() -> None:
    plan = plan_placement("v__int8", 10 * MB, 1.0, [resident("v__fp32", 40)], 100 * MB)
    assert plan.load == "v__int8" and plan.evict == ()


def test_never_loads_what_can_never_fit_or_is_loaded() -> None:
    assert plan_placement("v__fp32", 200 * MB, 5.0, [], 100 * MB).load is None
    assert plan_placement("v__fp32", 10 * MB, 5.0, [resident("v__fp32", 10)], 100 * MB).load is None


def test_evicts_least_useful_first() -> None:
    residents = [
        resident("a", 40, demand=5.0, last=10.0),
        resident("b", 40, demand=0.5, last=50.0),
        resident("c", 20, demand=0.5, last=20.0),
    ]
    plan = plan_placement("d", 30 * MB, 2.0, residents, 100 * MB)
    # c (same demand as b, used longer ago) goes first, then b; a is the most useful.
    assert plan.load == "d"
    assert plan.evict == ("c", "b")


def test_never_evicts_in_flight_or_loading() -> None:
    residents = [resident("a", 50, demand=0.0, in_flight=2), resident("b", 50, loading=True)]
    plan = plan_placement("c", 30 * MB, 3.0, residents, 100 * MB)
    assert plan.load is None and plan.evict == ()


def test_does_not_evict_something_more_wanted() -> None:
    residents = [resident("a", 80, demand=10.0)]
    assert plan_placement("b", 40 * MB, 1.0, residents, 100 * MB).load is None
    assert plan_placement("b", 40 * MB, 20.0, residents, 100 * MB).evict == ("a",)
