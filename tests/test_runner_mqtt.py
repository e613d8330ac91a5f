"""`--runner mqtt` trains the simulator's model with real worker processes over real brokers, and survives faults.

One fleet per broker kind (module-scoped, since P worker processes take ~30 s to import torch on the
loaded 2-core machine): six `edgecloud train-worker --keep-serving` processes, each run's PS in this
process. Over Mosquitto the fleet is locked down as serving's: one login per identity and the
per-sender ACL (`device_acl`), plus a `rogue` login that may publish only as itself.
Equality is on the trained parameters against `Simulator.run` with the same config (relative 1e-6).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pytest
from broker_fixtures import BROKER_KINDS
from test_cli_bad_inputs import run_cli

from edgecloud.errors import TransportError
from edgecloud.training.deadlines import DEADLINE_FACTOR, DEADLINE_FLOOR_S
from edgecloud.training.local_fleet import WorkerProcesses
from edgecloud.training.protocol import SERVER, TrainingJob, update_message, worker_name
from edgecloud.training.server import FleetResult, ParameterServer, ServerOptions, serve
from edgecloud.training.worker import rebuild_simulator
from edgecloud.transport.broker import EmbeddedBrokerProcess, MosquittoBroker, device_acl
from edgecloud.transport.mqtt import MqttTransport
from edgecloud.transport.topics import DEFAULT_DEPLOYMENT, sender_topic
from robust_training.simulator import RoundRecord, SimulationConfig

P = 6
WORKERS = [worker_name(w) for w in range(P)]
ROGUE = "rogue"


@dataclass
class Fleet:
    kind: str
    broker: EmbeddedBrokerProcess | MosquittoBroker
    workers: WorkerProcesses
    passwords: dict[str, str] = field(default_factory=dict)

    def url(self, identity: str) -> str:
        if not self.passwords:
            return self.broker.url
        return f"mqtt://{identity}:{self.passwords[identity]}@127.0.0.1:{self.broker.port}"

    def restart_broker(self) -> None:
        """Kill the broker and start a new one on the same port with the same logins and ACL."""
        assert isinstance(self.broker, MosquittoBroker)
        port, passwords, acl = self.broker.port, self.broker.passwords, self.broker.acl
        self.broker.stop()
        self.broker = MosquittoBroker(port=port, passwords=passwords, acl=acl).start()


@pytest.fixture(scope="module", params=BROKER_KINDS)
def fleet(request: pytest.FixtureRequest) -> Iterator[Fleet]:
    if request.param == "embedded":
        broker: EmbeddedBrokerProcess | MosquittoBroker = EmbeddedBrokerProcess().start()
        passwords: dict[str, str] = {}
    else:
        passwords = {name: secrets.token_urlsafe(12) for name in [SERVER, *WORKERS, ROGUE]}
        broker = MosquittoBroker(passwords=passwords, acl=device_acl(DEFAULT_DEPLOYMENT, [SERVER, *WORKERS], [ROGUE]))
        broker.start()
    running = Fleet(request.param, broker, None, passwords)  # type: ignore[arg-type]
    try:
        running.workers = WorkerProcesses(P, {name: running.url(name) for name in WORKERS}, DEFAULT_DEPLOYMENT,
                                          ["--keep-serving"]).start()
        yield running
    finally:
        if running.workers is not None:
            running.workers.stop()
        running.broker.stop()


def _config(**settings: object) -> SimulationConfig:
    defaults: dict[str, object] = {"n_workers": P, "rounds": 3, "lr": 0.1, "batch_size": 16, "seed": 3}
    return SimulationConfig(**{**defaults, **settings})  # type: ignore[arg-type]


# Every wait of a test's PS is bounded well inside pytest's 600 s timeout, so that a lost worker fails the
# test with a sentence instead of hanging it: the server's own join timeout (600 s) and a round deadline
# derived from a slow round 1 (10 x up to 120 s) would each outlast pytest's.
JOIN_TIMEOUT_S = 120.0


def _assert_workers_alive(fleet: Fleet) -> None:
    """A worker process that died (in an earlier test) would only show up as a PS waiting for it."""
    for name, process in fleet.workers.processes.items():
        assert process.poll() is None, (f"{name} exited with code {process.returncode}: "
                                        f"{fleet.workers.log_text(name).strip()[-1500:]}")


def _options(deadline_s: float | None) -> ServerOptions:
    return ServerOptions(round_deadline_s=deadline_s, join_timeout_s=JOIN_TIMEOUT_S)


def _train(fleet: Fleet, model: str, config: SimulationConfig, deadline_s: float | None = None,
           on_round=None) -> FleetResult:
    _assert_workers_alive(fleet)
    return serve(fleet.url(SERVER), TrainingJob("digits", model, config), _options(deadline_s), on_round)


def _simulated(model: str, config: SimulationConfig) -> np.ndarray:
    return rebuild_simulator(TrainingJob("digits", model, config)).run().params


def _assert_same(params: np.ndarray, expected: np.ndarray) -> None:
    gap = np.linalg.norm(params - expected) / np.linalg.norm(expected)
    assert gap < 1e-6, gap


CASES = {
    "mean-clean-tau1": ("logistic", {}),
    "cyclic-reverse-tau1": ("logistic", {"code": "cyclic", "redundancy": 3, "n_adversaries": 1, "attack": "reverse"}),
    "cyclic-labelflip-tau2": ("svm", {"code": "cyclic", "redundancy": 3, "n_adversaries": 1, "attack": "labelflip",
                                      "tau": 2}),
    "repetition-gaussian-tau2": ("logistic", {"code": "repetition", "redundancy": 3, "n_adversaries": 1,
                                              "attack": "gaussian", "tau": 2}),
    "repetition-alie-tau1": ("svm", {"code": "repetition", "redundancy": 3, "n_adversaries": 1, "attack": "alie"}),
}


@pytest.mark.parametrize("case", CASES)
def test_the_mqtt_runner_trains_the_simulators_model(fleet: Fleet, case: str, caplog: pytest.LogCaptureFixture) -> None:
    model, settings = CASES[case]
    config = _config(**settings)
    with caplog.at_level(logging.INFO, logger="edgecloud.training.server"):
        run = _train(fleet, model, config)
    # no --round-deadline: derived from round 1's measured time, never below the floor
    derived = [record.args for record in caplog.records if record.getMessage().startswith("round deadline")]
    assert len(derived) == 1 and derived[0][0] == max(DEADLINE_FLOOR_S, DEADLINE_FACTOR * derived[0][2])
    _assert_same(run.result.params, _simulated(model, config))
    simulated = rebuild_simulator(TrainingJob("digits", model, config)).run()
    assert [r.flagged for r in run.result.records] == [r.flagged for r in simulated.records]
    assert [r.adversaries for r in run.result.records] == [r.adversaries for r in simulated.records]
    for record, sim_record in zip(run.result.records, simulated.records):
        assert record.erased == [] and not record.skipped  # type: ignore[attr-defined]
        assert record.batch_loss == pytest.approx(sim_record.batch_loss, rel=1e-9)
        # measured: every worker's model down and message up, at least the simulator's modelled bytes
        assert record.transfer_bytes >= sim_record.transfer_bytes > 0
        assert record.compute_s > 0 and record.transfer_s >= 0 and record.aggregate_s > 0
    assert run.startup_s > 0


def test_train_server_prints_and_saves_what_train_does(fleet: Fleet, tmp_path) -> None:
    """The multi-host command (`edgecloud train-server`, the workers already running) against `--runner sim`."""
    import json

    args = ["train", "--dataset", "digits", "--model", "logistic", "--nodes", str(P), "--rounds", "2",
            "--batch-size", "16", "--seed", "3", "--code", "cyclic", "--redundancy", "3", "--adversaries", "1",
            "--json"]
    code, stdout, stderr = run_cli([*args, "--save", str(tmp_path / "sim.npz")])
    assert code == 0, stderr[-2000:]
    server_args = ["train-server", *args[1:], "--broker", fleet.url(SERVER), "--save", str(tmp_path / "mqtt.npz")]
    code, server_out, stderr = run_cli(server_args)
    assert code == 0, stderr[-2000:]
    summary, sim_summary = json.loads(server_out), json.loads(stdout)
    assert summary["runner"] == "mqtt" and summary["rounds"] == sim_summary["rounds"] == 2
    assert summary["flagged_per_round"] == sim_summary["flagged_per_round"]
    with np.load(tmp_path / "sim.npz") as sim, np.load(tmp_path / "mqtt.npz") as mqtt:
        assert sim.files == mqtt.files
        for name in sim.files:
            _assert_same(mqtt[name], sim[name])


def _train_killing(fleet: Fleet, config: SimulationConfig, victim: str, after_round: int = 2) -> FleetResult:
    """Train with a 2 s deadline, SIGKILL `victim` after `after_round`, and restart it for the next test."""
    def on_round(record: RoundRecord) -> None:
        if record.round == after_round:
            fleet.workers.kill(victim)

    try:
        return _train(fleet, "logistic", config, deadline_s=2.0, on_round=on_round)
    finally:
        fleet.workers.restart(victim)


@pytest.mark.parametrize("settings", [
    {"code": "cyclic", "redundancy": 3},
    {"code": "repetition", "redundancy": 3},
    {"code": "cyclic", "redundancy": 5, "n_adversaries": 1, "attack": "reverse"},
], ids=["cyclic-r3-e1", "repetition-r3-e1", "cyclic-r5-s1-e1"])
def test_a_killed_worker_within_the_bound_is_an_erasure_and_changes_nothing(fleet: Fleet, settings: dict) -> None:
    config = _config(rounds=4, **settings)
    run = _train_killing(fleet, config, "worker-1")
    assert [r.erased for r in run.result.records] == [[], [], [1], [1]]  # type: ignore[attr-defined]
    assert not any(r.skipped for r in run.result.records)  # type: ignore[attr-defined]
    _assert_same(run.result.params, _simulated("logistic", config))


def test_beyond_the_bound_the_round_is_skipped_with_a_warning(fleet: Fleet, caplog: pytest.LogCaptureFixture) -> None:
    """Cyclic r = 3 with s = 1 has no room for an erasure (2s + e <= r - 1): after the kill the model stays."""
    config = _config(rounds=4, code="cyclic", redundancy=3, n_adversaries=1, attack="reverse")
    with caplog.at_level(logging.WARNING, logger="edgecloud.training.server"):
        run = _train_killing(fleet, config, "worker-4")
    assert [r.skipped for r in run.result.records] == [False, False, True, True]  # type: ignore[attr-defined]
    assert sum("round 3 skipped" in m or "round 4 skipped" in m for m in caplog.messages) == 2
    _assert_same(run.result.params, _simulated("logistic", _config(rounds=2, code="cyclic", redundancy=3,
                                                                   n_adversaries=1, attack="reverse")))


def test_a_restarted_worker_rejoins_at_the_next_round(fleet: Fleet) -> None:
    """Killed after round 2, restarted after round 3: once it holds its data again (it says hello, gets
    the job and loads; waited for here, since that takes longer than a round on a loaded machine) it
    answers the next round and every one after."""
    config = _config(rounds=6, code="cyclic", redundancy=3, n_adversaries=1, attack="reverse")
    _assert_workers_alive(fleet)
    server = ParameterServer(fleet.url(SERVER), TrainingJob("digits", "logistic", config), _options(4.0))

    def on_round(record: RoundRecord) -> None:
        if record.round == 2:
            fleet.workers.kill("worker-2")
            with server._ready_changed:  # the PS's record that worker 2 joined: it must join again
                server._ready.discard(2)
        if record.round == 3:
            fleet.workers.restart("worker-2")  # returns once connected; it then fetches the job itself
            server.wait_for_workers(JOIN_TIMEOUT_S)

    server.connect()
    try:
        server.wait_for_workers(JOIN_TIMEOUT_S)
        result = server.train(on_round)
    finally:
        server.close()
    erased = [r.erased for r in result.records]  # type: ignore[attr-defined]
    assert erased == [[], [], [2], [], [], []], erased
    assert [r.skipped for r in result.records] == [False, False, True, False, False, False]  # type: ignore[attr-defined]


@pytest.mark.parametrize("fleet", ["mosquitto"], indirect=True)
def test_a_rogue_client_cannot_speak_for_a_worker(fleet: Fleet) -> None:
    """The rogue logs in as itself and forges worker-1's round-2 update twice: on worker-1's topic (the ACL
    refuses it) and on its own topic with worker-1 in the header (the PS drops it). The model is unchanged;
    under a plain mean a forged 1e6 update that got through would wreck it."""
    config = _config(rounds=3)
    refusals: list[str] = []

    def forge(record: RoundRecord) -> None:
        if record.round != 1:
            return
        forged = update_message(1, job.job_id, 1, np.full(rebuild_simulator(job).params0.size, 1e6), np.zeros(1), 0.0)
        with MqttTransport(fleet.url(ROGUE), client_id=ROGUE) as rogue:
            try:
                rogue.publish_message(sender_topic(DEFAULT_DEPLOYMENT, SERVER, "worker-1"), forged).result(30.0)
            except TransportError as error:
                refusals.append(str(error))
            rogue.publish_message(sender_topic(DEFAULT_DEPLOYMENT, SERVER, ROGUE), forged).result(30.0)

    job = TrainingJob("digits", "logistic", config)
    _assert_workers_alive(fleet)
    # an explicit deadline: a derived one after a slow round 1 under load would outlast pytest's timeout
    run = serve(fleet.url(SERVER), job, _options(60.0), forge)
    assert [r.erased for r in run.result.records] == [[]] * 3, "a worker's answer did not arrive within 60 s"  # type: ignore[attr-defined]
    assert refusals and "Not authorized" in refusals[0]
    _assert_same(run.result.params, _simulated("logistic", config))


@pytest.mark.parametrize("fleet", ["mosquitto"], indirect=True)
def test_training_survives_a_broker_restart_and_ends_with_the_simulators_model(fleet: Fleet) -> None:
    """Mosquitto is killed after round 3 and a new one started on its port: every client reconnects, the
    round message is sent again to whoever has not answered, and with a deadline longer than the outage
    no round loses a worker: the model is exactly the simulator's."""
    config = _config(rounds=6, code="cyclic", redundancy=3)

    def on_round(record: RoundRecord) -> None:
        if record.round == 3:
            fleet.restart_broker()

    run = _train(fleet, "logistic", config, deadline_s=30.0, on_round=on_round)
    assert [r.erased for r in run.result.records] == [[]] * 6  # type: ignore[attr-defined]
    _assert_same(run.result.params, _simulated("logistic", config))


def test_a_robust_aggregator_runs_on_the_updates_that_arrived(fleet: Fleet) -> None:
    """Krum needs n > 2f + 2: with f = 1 it works on the 5 answers left after a kill, and the adversary
    (re-drawn among all six, the dead one included) still cannot take the model anywhere."""
    config = _config(rounds=4, aggregator="krum", n_adversaries=1, attack="constant")
    run = _train_killing(fleet, config, "worker-3")
    assert [r.erased for r in run.result.records] == [[], [], [3], [3]]  # type: ignore[attr-defined]
    assert not any(r.skipped for r in run.result.records)  # type: ignore[attr-defined]
    assert np.all(np.isfinite(run.result.params)) and run.result.records[-1].test_accuracy > 0.5
