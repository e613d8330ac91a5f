"""`edgecloud broker`: the embedded pure-Python MQTT broker (amqtt) standalone, until Ctrl-C or SIGTERM."""

from __future__ import annotations

import typer


def broker(
    port: int = typer.Option(1883, "--port", help="TCP port to listen on.", min=1, max=65535),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind; 0.0.0.0 serves other machines too."),
) -> None:
    """Run the embedded MQTT 3.1.1 broker (amqtt) so that agents on other processes or machines can meet."""
    import asyncio
    import logging
    import signal

    from edgecloud.broker import ready_banner, serve_amqtt

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signal_number in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signal_number, stop.set)
        await serve_amqtt(host, port, stop, lambda: typer.echo(f"{ready_banner(host, port)} (Ctrl-C stops it)", err=True))

    asyncio.run(run())


if __name__ == "__main__":  # `python -m edgecloud.cli.broker`, used by EmbeddedBrokerProcess
    typer.run(broker)
