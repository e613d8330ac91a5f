"""`edgecloud fleet init`: a deployment's broker config, password file, ACL, TLS material and credentials."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from edgecloud.cli.user_errors import reports_user_errors

app = typer.Typer(help="Lock a deployment down: per-identity logins, ACL and TLS for Mosquitto.", no_args_is_help=True)


@app.command("init")
@reports_user_errors
def init(
    deployment: Annotated[str, typer.Argument(help="Deployment id (the agents' and clients' --deployment).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder to write (must not hold a fleet yet).")],
    device: Annotated[list[str], typer.Option("--device", help="A device identity (runs an agent); repeat it.")],
    client: Annotated[Optional[list[str]], typer.Option("--client", help="A client identity (sends requests); repeat it.")] = None,
    tls: Annotated[bool, typer.Option("--tls", help="Generate a CA and a server certificate; serve mqtts://.")] = False,
    host: Annotated[str, typer.Option("--host", help="Address the broker listens on and clients connect to.")] = "127.0.0.1",
    port: Annotated[Optional[int], typer.Option("--port", min=1, max=65535, help="Broker port (default 8883 with --tls, else 1883).")] = None,
) -> None:
    """Write everything a locked-down deployment needs into one folder and list its identities."""
    from edgecloud.transport.fleet import init_fleet

    fleet = init_fleet(deployment, device, client or [], output, tls=tls, host=host, port=port)
    # plain lines, not a table: the URLs and paths are meant to be copied whole
    typer.echo(f"fleet {fleet.deployment} written to {fleet.directory}; identities:")
    for identity in fleet.identities:
        typer.echo(f"  {identity.name} ({identity.kind}): --broker '{identity.url}' "
                   f"--broker-password-file {identity.password_file}")
    typer.echo(f"start the broker: edgecloud broker --mosquitto --config {fleet.directory}")
