"""`edgecloud calibrate --broker URL [--peer-broker URL2] -o link.json`: price every message of a deployment.

Measures what a message costs on the broker path beyond the wire (`edgecloud.transport.hop_costs`) and
writes a link profile (`devices.profiles.LinkProfile`: the given bandwidth and latency plus the measured
`message_s`, `broker_s`, `host_s_per_byte`, and the client's own `client_link`) that
`edgecloud plan MODEL --link edge-cloud=link.json` reads. Run it once per deployment, from the edge host
against the brokers the agents will use; with a bridged pair, `--broker` is the edge's and
`--peer-broker` the cloud's.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from edgecloud.cli.options import COUNT_MAX
from edgecloud.cli.user_errors import writable_output


def calibrate(
    broker: Annotated[str, typer.Option(help="The broker the edge agent and the client use, e.g. mqtt://127.0.0.1:1883.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Link profile JSON file to write.")] = Path("link.json"),
    peer_broker: Annotated[Optional[str], typer.Option(
        help="The cloud's broker, bridged to --broker (topics edgecloud/# both ways): the bridge hop is priced.")] = None,
    echo_broker: Annotated[Optional[str], typer.Option(
        help="--broker under a second login, for the echo end (needed where the broker requires logins).")] = None,
    bandwidth: Annotated[str, typer.Option(help="Edge-cloud bandwidth to record with the measured costs.")] = "20Mbit",
    latency: Annotated[str, typer.Option(help="Edge-cloud propagation latency to record.")] = "10ms",
    repeats: Annotated[int, typer.Option(help="Round trips per path at the small size.", min=5, max=COUNT_MAX)] = 200,
) -> None:
    """Measure the per-message cost of the broker path and store it in a link profile for `plan`."""
    from datetime import datetime, timezone

    from rich.console import Console
    from rich.table import Table

    from devices.json_files import write_json_file
    from devices.profiles import CLIENT_LINK_KEY, LinkProfile
    from edgecloud.transport.hop_costs import CLIENT_BANDWIDTH_BPS, LARGE_BYTES, SMALL_BYTES, measure_hop_costs
    from partitioner.units import parse_bandwidth_bps, parse_duration_s

    output = writable_output(output, "--output")
    bandwidth_bps, latency_s = parse_bandwidth_bps(bandwidth), parse_duration_s(latency)
    load_before = os.getloadavg()[0]
    costs = measure_hop_costs(broker, peer_broker, repeats, echo_broker)
    link = LinkProfile(bandwidth_bps, latency_s, **costs.link_figures())
    client = LinkProfile(CLIENT_BANDWIDTH_BPS, 0.0, **costs.client_figures())
    paths = {"ours/local": costs.ours_local, "floor/local": costs.floor_local,
             "ours/bridged": costs.ours_bridged, "floor/bridged": costs.floor_bridged}
    write_json_file(output, {
        **link.to_dict(), CLIENT_LINK_KEY: client.to_dict(),
        "calibration": {"broker": _without_password(broker),
                        "peer_broker": None if peer_broker is None else _without_password(peer_broker),
                        "sizes_bytes": [SMALL_BYTES, LARGE_BYTES], "bridge_s": costs.bridge_s,
                        "paths": {name: path.to_dict() for name, path in paths.items() if path is not None},
                        "load_average_1min": {"before": load_before, "after": os.getloadavg()[0]},
                        "when": datetime.now(timezone.utc).isoformat()},
    }, "link profile", indent=2)
    table = Table(title="One-way time per message (median)")
    for column in ("path", f"{SMALL_BYTES} B", f"{LARGE_BYTES // 1024} KiB", "fixed", "per KB"):
        table.add_column(column, justify="right")
    for name, path in paths.items():
        if path is not None:
            table.add_row(name, f"{path.small_s * 1e3:.3f} ms", f"{path.large_s * 1e3:.3f} ms",
                          f"{path.fixed_s * 1e3:.3f} ms", f"{path.s_per_byte * 1e9:.2f} µs")
    console = Console()
    console.print(table)
    bridge = "" if costs.bridge_s is None else f", of which the bridge {costs.bridge_s * 1e3:.3f} ms"
    console.print(f"edge-cloud link: message_s {link.message_s * 1e3:.3f} ms (our client libraries), broker_s "
                  f"{link.broker_s * 1e3:.3f} ms (the broker path{bridge}), host {link.host_s_per_byte * 1e9:.2f} µs/KB; "
                  f"client's hops: {client.message_s * 1e3 + client.broker_s * 1e3:.3f} ms each + bytes.")
    console.print(f"wrote {output}: plan with `edgecloud plan MODEL --link edge-cloud={output}`")


def _without_password(url: str) -> str:
    from edgecloud.transport.mqtt_url import split_password

    return split_password(url)[0]
