"""A started service's garbage collector: start-up's objects frozen, young collections rarer."""

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
def test_a_started_service_freezes_what_start_up_made_and_collects_young_objects_less_often():
    gc.unfreeze()
    _, middle, oldest = gc.get_threshold()

    tune_collector(from_environment(CollectorSettings, {}))

    assert gc.get_threshold() == (50_000, middle, oldest)
    assert gc.get_freeze_count() > 0


@pytest.mark.usefixtures("collector")
def test_gc_threshold_0_keeps_python_s_collector_as_it_is():
    gc.unfreeze()
    before = gc.get_threshold()

    tune_collector(from_environment(CollectorSettings, {"GC_THRESHOLD": "0"}))

    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0
