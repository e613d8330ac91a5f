"""The MQTT runner's pieces without processes: when a round with erasures may be applied, and what the
protocol refuses before it reaches the PS's arithmetic."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from edgecloud.errors import EdgecloudError
from edgecloud.training.erasures import why_not_decodable
from edgecloud.training.protocol import (ProtocolError, TrainingJob, check_model_fits, job_message, parse_job,
                                         parse_partition_sizes, parse_round, parse_update, round_message, sender_of,
                                         update_message, worker_index)
from edgecloud.transport.wire import decode, encode
from robust_training.aggregators import make_aggregator
from robust_training.codes import make_code
from robust_training.simulator import SimulationConfig


@pytest.mark.parametrize(("name", "n", "r"), [("cyclic", 6, 3), ("cyclic", 7, 5), ("repetition", 6, 3),
                                              ("repetition", 6, 2), ("repetition", 5, 5)])
def test_a_round_is_applied_exactly_when_every_placement_of_the_adversaries_is_correctable(name: str, n: int,
                                                                                           r: int) -> None:
    """Brute force over every erasure set and every placement of s adversaries among the answers: the
    PS's check (runs of consecutive workers) is the code's own bound for the worst placement."""
    code = make_code(name, n, r)
    for s in range(code.max_adversaries + 1):
        for n_erased in range(n + 1):
            for erased in itertools.combinations(range(n), n_erased):
                arrived = [w for w in range(n) if w not in erased]
                every = all(code.correctable(placement, erased)
                            for placement in itertools.combinations(arrived, min(s, len(arrived))))
                decodable = why_not_decodable(code, None, n, s, erased) is None
                assert decodable == (every and bool(arrived)), (s, erased)


def test_an_aggregator_is_checked_for_the_number_that_arrived() -> None:
    krum = make_aggregator("krum")  # n > 2f + 2
    assert why_not_decodable(None, krum, 6, 1, [0]) is None
    reason = why_not_decodable(None, krum, 6, 1, [0, 1])
    assert reason is not None and "krum" in reason and "2 answers missing" in reason
    assert why_not_decodable(None, make_aggregator("mean"), 6, 0, [0, 1, 2, 3, 4]) is None
    assert why_not_decodable(None, make_aggregator("mean"), 3, 0, [0, 1, 2]) == "no worker answered"


def _over_the_wire(message):
    return decode(encode(message))


def test_updates_of_the_wrong_shape_or_dtype_are_refused() -> None:
    good = _over_the_wire(update_message(2, "job", 0, np.zeros(5), np.zeros(3), 0.1))
    assert parse_update(good, 2, 5, 3, 100).message.shape == (5,)
    for message in (update_message(2, "job", 0, np.zeros(4), np.zeros(3), 0.1),
                    update_message(2, "job", 0, np.zeros(5, np.float32), np.zeros(3), 0.1),
                    update_message(2, "job", 0, np.zeros(5), np.zeros(2), 0.1),
                    update_message(2, "job", 0, np.zeros(5), np.zeros(3), -1.0)):
        with pytest.raises(ProtocolError):
            parse_update(_over_the_wire(message), 2, 5, 3, 100)
    with pytest.raises(ProtocolError, match="float64 of shape"):
        parse_round(_over_the_wire(round_message("job", 0, 1, False, np.zeros(4))), 5)


def test_the_sender_is_the_topics_and_a_worker_is_named_canonically() -> None:
    message = _over_the_wire(update_message(1, "job", 0, np.zeros(2), np.zeros(1), 0.0))
    assert sender_of(message, "edgecloud/default/ps/in/worker-1") == "worker-1"
    with pytest.raises(ProtocolError, match="claims to come from 'worker-1'"):
        sender_of(message, "edgecloud/default/ps/in/rogue")
    assert worker_index("worker-5", 6) == 5
    assert [worker_index(name, 6) for name in ("worker-6", "worker-05", "worker--1", "ps", "worker-")] == [None] * 5


def test_a_job_round_trips_and_an_unknown_config_is_refused() -> None:
    job = TrainingJob("digits", "svm", SimulationConfig(n_workers=6, rounds=3, lr=0.1, code="cyclic", redundancy=3))
    sizes = [240, 239, 240, 239, 240, 239]
    assert parse_job(_over_the_wire(job_message(job, sizes))) == job
    assert parse_partition_sizes(_over_the_wire(job_message(job, sizes)), 6) == sizes
    for bad in ([240] * 5, [240, 239, 240, 239, 240, 0], [240, 239, 240, 239, 240, True], "6 x 240"):
        with pytest.raises(ProtocolError, match="6 positive integers"):
            parse_partition_sizes(_over_the_wire(job_message(job, bad)), 6)  # type: ignore[arg-type]
    forged = job_message(job, sizes)
    meta = {**forged.meta, "config": {**forged.meta["config"], "shell": "rm -rf /"}}
    with pytest.raises(ProtocolError, match="exactly the fields"):
        parse_job(_over_the_wire(type(forged)(forged.kind, forged.request_id, forged.sender, meta=meta)))
    meta = {**forged.meta, "config": {**forged.meta["config"], "n_workers": 0}}
    with pytest.raises(ProtocolError, match="not valid"):
        parse_job(_over_the_wire(type(forged)(forged.kind, forged.request_id, forged.sender, meta=meta)))


def test_the_model_must_fit_one_wire_message() -> None:
    check_model_fits(1_033_510)  # Draco's 784-800-500-10 FC net: 8.3 MB
    with pytest.raises(EdgecloudError, match="does not chunk"):
        check_model_fits(3_000_000)
