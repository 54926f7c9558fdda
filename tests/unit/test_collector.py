"""A started service's garbage collector: start-up's objects out of full collections."""

import gc
from collections.abc import Iterator

import pytest

from shared.service import CollectorSettings, tune_collector
from shared.settings import from_environment


@pytest.fixture
def collector() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*before)


@pytest.mark.usefixtures("collector")
def test_a_started_service_freezes_what_start_up_made_out_of_full_collections():
    gc.unfreeze()
    gc.set_threshold(1_000, 10, 10)

    tune_collector(from_environment(CollectorSettings, {}))

    assert gc.get_threshold() == (700, 10, 10)  # Python's own, unless the service says


@pytest.mark.usefixtures("collector")
def test_a_service_s_own_threshold_applies_unless_gc_threshold_is_set():
    gc.unfreeze()
    _, middle, oldest = gc.get_threshold()

    tune_collector(from_environment(CollectorSettings, {}), default=50_000)
    assert gc.get_threshold() == (50_000, middle, oldest)

    tune_collector(from_environment(CollectorSettings, {"GC_THRESHOLD": "1000"}), default=50_000)
    assert gc.get_threshold() == (1_000, middle, oldest)
    assert gc.get_freeze_count() > 0


@pytest.mark.usefixtures("collector")
def test_gc_threshold_sets_how_often_young_objects_are_collected():
    gc.unfreeze()
    _, middle, oldest = gc.get_threshold()

    tune_collector(from_environment(CollectorSettings, {"GC_THRESHOLD": "20000"}))

    assert gc.get_threshold() == (20_000, middle, oldest)


@pytest.mark.usefixtures("collector")
def test_gc_threshold_0_keeps_python_s_collector_as_it_is():
    gc.unfreeze()
    before = gc.get_threshold()

    tune_collector(from_environment(CollectorSettings, {"GC_THRESHOLD": "0"}))

    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0
