"""`edgecloud broker`: the embedded pure-Python MQTT broker (amqtt) standalone, or Mosquitto from a fleet
folder (`--mosquitto --config DIR`, see `edgecloud fleet init`), until Ctrl-C or SIGTERM."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def broker(
    port: int = typer.Option(1883, "--port", help="TCP port to listen on.", min=1, max=65535),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind; 0.0.0.0 serves other machines too."),
    mosquitto: Annotated[bool, typer.Option("--mosquitto", help="Run Mosquitto from --config instead of the embedded broker.")] = False,
    config: Annotated[Optional[Path], typer.Option("--config", help="Fleet folder (edgecloud fleet init) for --mosquitto; its address wins over --host/--port.")] = None,
) -> None:
    """Run the embedded MQTT 3.1.1 broker (amqtt) so that agents on other processes or machines can meet."""
    import asyncio
    import logging
    import signal

    from edgecloud.transport.broker import ready_banner, serve_amqtt

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if mosquitto or config is not None:
        _mosquitto(config)
        return

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signal_number in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signal_number, stop.set)
        await serve_amqtt(host, port, stop, lambda: typer.echo(f"{ready_banner(host, port)} (Ctrl-C stops it)", err=True))

    asyncio.run(run())


def _mosquitto(config: Optional[Path]) -> None:
    import signal
    import threading

    from edgecloud.errors import EdgecloudError
    from edgecloud.transport.fleet import fleet_broker

    if config is None:
        raise EdgecloudError("--mosquitto needs --config DIR, a folder written by `edgecloud fleet init`.")
    stop = threading.Event()
    for signal_number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signal_number, lambda *_: stop.set())
    with fleet_broker(config) as running:
        typer.echo(f"edgecloud broker: Mosquitto listening on {running.url} (pid {running.pid}, config {config}; "
                   "Ctrl-C stops it)", err=True)
        while not stop.wait(1.0):
            if running.exited():
                raise EdgecloudError(f"Mosquitto exited: {running.log_text().strip()[-300:]}")


if __name__ == "__main__":  # `python -m edgecloud.cli.broker`, used by EmbeddedBrokerProcess
    from robust_training.runners.parent_death import end_with_parent_from_environment

    end_with_parent_from_environment()
    typer.run(broker)
