"""The transfer term of the time model: links, the relay, the fixed per-message cost, and their fit."""

import math

import numpy as np
import pytest

from robust_training.data import load_dataset
from robust_training.errors import TrainingError
from robust_training.models import make_objective
from robust_training.simulator import SimulationConfig, Simulator
from robust_training.time_model import ExchangeTiming, TransferModel, fit_relay

MB = 1_000_000


def test_links_only_charge_one_exchange_whatever_the_number_of_workers():
    model = TransferModel(bandwidth_bps=1e9)
    assert model.round_s(8, 8 * MB, 8 * MB) == pytest.approx(16 * MB * 8 / 1e9)
    assert model.round_s(16, 8 * MB, 8 * MB) == model.round_s(8, 8 * MB, 8 * MB)


def test_the_relay_charges_every_workers_exchange_in_turn():
    links = TransferModel(bandwidth_bps=1e9)
    relayed = TransferModel(bandwidth_bps=1e9, relay_bps=4e9)
    for n_workers in (1, 8, 16):
        extra = relayed.round_s(n_workers, 8 * MB, 2 * MB) - links.round_s(n_workers, 8 * MB, 2 * MB)
        assert extra == pytest.approx(n_workers * 10 * MB * 8 / 4e9)


def test_the_fixed_cost_is_two_messages_per_worker_and_independent_of_size():
    model = TransferModel(bandwidth_bps=math.inf, message_s=1e-3)
    assert model.round_s(8, 0, 0) == pytest.approx(16e-3)
    assert model.round_s(8, 10 * MB, 10 * MB) == pytest.approx(16e-3)
    assert TransferModel(bandwidth_bps=math.inf).round_s(16, 10 * MB, 10 * MB) == 0.0


def test_the_terms_add_up():
    model = TransferModel(bandwidth_bps=2e9, relay_bps=5e9, message_s=2e-4)
    bits = (3 * MB + 1 * MB) * 8
    assert model.round_s(10, 3 * MB, 1 * MB) == pytest.approx(bits / 2e9 + 10 * bits / 5e9 + 20 * 2e-4)


@pytest.mark.parametrize("model, problem", [
    (TransferModel(bandwidth_bps=0), "bandwidth"),
    (TransferModel(relay_bps=0.0), "relay"),
    (TransferModel(relay_bps=math.inf), "relay"),
    (TransferModel(message_s=-1e-3), "per message"),
    (TransferModel(message_s=math.nan), "per message"),
])
def test_bad_parameters_are_named(model, problem):
    assert problem in model.problem()
    assert TransferModel(relay_bps=1e9, message_s=1e-3).problem() is None


def test_the_fit_recovers_the_parameters_that_made_the_timings():
    truth = TransferModel(bandwidth_bps=math.inf, relay_bps=3.2e9, message_s=0.7e-3)
    timings = [ExchangeTiming(p, 8 * d, 8 * d, truth.round_s(p, 8 * d, 8 * d))
               for p in (4, 8, 16) for d in (1_000, 7_850, 1_033_510)]
    relay_bps, message_s = fit_relay(timings)
    assert relay_bps == pytest.approx(3.2e9, rel=1e-6)
    assert message_s == pytest.approx(0.7e-3, rel=1e-6)


def test_the_fit_weighs_small_rounds_by_relative_error():
    """One noisy large round must not swamp the fixed cost the small rounds measure."""
    truth = TransferModel(bandwidth_bps=math.inf, relay_bps=3e9, message_s=1e-3)
    timings = [ExchangeTiming(p, 8 * d, 8 * d, truth.round_s(p, 8 * d, 8 * d) * (1.3 if d > 1e5 else 1.0))
               for p in (4, 8, 16) for d in (1_000, 1_033_510)]
    _, message_s = fit_relay(timings)
    assert message_s == pytest.approx(1e-3, rel=0.1)


def test_the_fit_gives_no_relay_when_size_explains_nothing():
    timings = [ExchangeTiming(p, 8 * d, 8 * d, 2 * p * 1e-3) for p in (4, 8) for d in (1_000, 1_000_000)]
    relay_bps, message_s = fit_relay(timings)
    assert relay_bps is None
    assert message_s == pytest.approx(1e-3)


def test_the_fit_refuses_too_few_or_bad_timings():
    with pytest.raises(ValueError):
        fit_relay([ExchangeTiming(4, 8, 8, 1e-3)])
    with pytest.raises(ValueError):
        fit_relay([ExchangeTiming(4, 8, 8, 1e-3), ExchangeTiming(8, 8, 8, 0.0)])


def test_the_simulator_charges_the_configured_transfer():
    train, test = load_dataset("digits", seed=0)
    objective = make_objective("logistic", train)
    config = dict(n_workers=6, rounds=2, lr=0.1, batch_size=8, code="cyclic", redundancy=3, bandwidth_bps=1e9)
    plain = Simulator(objective, train, test, SimulationConfig(**config)).run()
    relayed = Simulator(objective, train, test, SimulationConfig(**config, relay_bps=1e8, message_s=1e-3)).run()
    d = plain.params.size
    expected = TransferModel(1e9, 1e8, 1e-3).round_s(6, 8 * d, 8 * d)
    assert [r.transfer_s for r in relayed.records] == pytest.approx([expected] * 2)
    assert [r.transfer_s for r in plain.records] == pytest.approx([16 * d * 8 / 1e9] * 2)
    np.testing.assert_array_equal(plain.params, relayed.params)  # time is charged, the model unchanged


def test_the_config_refuses_a_bad_relay():
    with pytest.raises(TrainingError, match="relay"):
        SimulationConfig(n_workers=4, rounds=1, lr=0.1, relay_bps=-1.0).validate()
