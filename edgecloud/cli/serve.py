"""`edgecloud split`, `edgecloud agent`, `edgecloud infer`: serve a plan's split model over MQTT."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from edgecloud.cli.broker_options import BrokerPasswordFile
from edgecloud.cli.options import COUNT_MAX, THREADS_MAX
from edgecloud.cli.user_errors import writable_output

DEFAULT_BROKER = "mqtt://127.0.0.1:1883"


def split(
    plan: Annotated[Path, typer.Argument(help="Plan JSON (from `edgecloud plan`), or a plan set (`plan --adaptive`).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for the stage files and manifest.json "
                                         "(a plan set: one interval-K folder each).")],
    force: Annotated[bool, typer.Option("--force", help="Split even if the model file is not the one the plan was made for.")] = False,
) -> None:
    """Cut the plan's model into one ONNX file per stage and write the manifest that routes them."""
    from rich.console import Console
    from rich.table import Table

    from edgecloud.errors import EdgecloudError
    from partitioner.split.onnx_split import split_plan

    if output.exists() and not output.is_dir():
        raise EdgecloudError(f"--output {output} is a file; give the folder to write the stages into.")
    from devices.json_files import read_json_file
    from partitioner.errors import PartitionerError
    from partitioner.plan.plan_set import PLANS_FORMAT
    from partitioner.split.onnx_split import split_plan_set

    try:
        content = read_json_file(plan, "plan", error=PartitionerError)
    except PartitionerError:
        content = None  # split_plan below names what is wrong with the file, with its hint
    if isinstance(content, dict) and content.get("format") == PLANS_FORMAT:
        manifests = split_plan_set(plan, output, force=force)
        console = Console()
        for index, manifest in enumerate(manifests):
            devices = ", ".join(f"{d} {len(manifest.stages_of(d))}" for d in manifest.devices)
            console.print(f"interval {index + 1}: {len(manifest.stages)} stage(s) ({devices}) in "
                          f"{output / f'interval-{index + 1}'}")
        return
    manifest = split_plan(plan, output, force=force)
    table = Table(title=f"{len(manifest.stages)} stage(s), source {manifest.source}, sink {manifest.sink}")
    for column in ("stage", "device", "nodes", "receives", "sends", "file"):
        table.add_column(column, justify="right" if column in ("stage", "nodes") else "left")
    for stage in manifest.stages:
        receives = ", ".join(sorted({"source" if item.origin is None else f"{item.origin.device}#{item.origin.stage}"
                                     for item in stage.inputs}))
        sends = ", ".join(sorted({f"{ref.device}#{ref.stage}" for item in stage.outputs for ref in item.destinations}
                                 | ({"sink"} if any(item.to_sink for item in stage.outputs) else set())))
        table.add_row(str(stage.index), stage.device, str(len(stage.nodes)), receives, sends, stage.file)
    console = Console()
    console.print(table)
    idle = [device for device in manifest.devices if not manifest.stages_of(device)]
    if idle:
        console.print(f"devices with no stage (they only receive and answer): {', '.join(idle)}")
    console.print(f"wrote {output / 'manifest.json'}")


def agent(
    plan: Annotated[Path, typer.Option("--plan", help="Plan JSON, or a plan set (`plan --adaptive`: every interval "
                                       "loaded, the source switches with the link); split on first use, cached beside it.")],
    device: Annotated[str, typer.Option("--device", help="Which of the plan's devices this agent serves.")],
    broker: Annotated[str, typer.Option("--broker", help="Broker URL: mqtt://[user:pass@]host[:port] or mqtts://...")] = DEFAULT_BROKER,
    broker_password_file: BrokerPasswordFile = None,
    deployment: Annotated[str, typer.Option("--deployment", help="Deployment id: the topic namespace shared with the client.")] = "default",
    threads: Annotated[int, typer.Option("--threads", min=1, max=THREADS_MAX, help="onnxruntime threads per stage.")] = 1,
    max_pending: Annotated[int, typer.Option("--max-pending", min=1, max=COUNT_MAX, help="Requests held at once; more are refused.")] = 256,
    fallback: Annotated[bool, typer.Option("--fallback/--no-fallback", help="Source device: run the rest itself when the answer is late.")] = True,
    fallback_margin: Annotated[Optional[str], typer.Option("--fallback-margin", help="Fall back this long before the deadline (e.g. 100ms); default: measured.")] = None,
    local_after_fallback: Annotated[str, typer.Option("--local-after-fallback", help="After a fallback, serve locally at once this long before probing the other devices again.")] = "5s",
    pin_plan: Annotated[Optional[int], typer.Option("--pin-plan", min=1, max=COUNT_MAX, help="Plan set, source device: serve every request under interval K (1 = lowest bandwidth) instead of following the link.")] = None,
    emulate_links: Annotated[bool, typer.Option("--emulate-links", help="Hold each message back as long as the plan's link would take (testing on one host).")] = False,
    ready_file: Annotated[Optional[Path], typer.Option("--ready-file", help="Touch this file once serving (for supervisors).")] = None,
    log_level: Annotated[str, typer.Option("--log-level", help="Python logging level.")] = "INFO",
) -> None:
    """Serve one device of a plan until SIGINT/SIGTERM: run its stages, pass activations on."""
    import logging

    from edgecloud.cli.long_running import configure_logging, stop_on_signals
    from edgecloud.errors import EdgecloudError
    from edgecloud.serving.agent import AgentOptions, DeviceAgent
    from edgecloud.serving.link_emulation import links_of
    from edgecloud.serving.plan_choice import load_served_plans
    from partitioner.plan.plan_file import load_plan
    from partitioner.plan.plan_set import load_plan_set
    from partitioner.units import parse_duration_s

    configure_logging(log_level)
    logging.getLogger("transitions").setLevel(logging.WARNING)
    margin_s = parse_duration_s(fallback_margin) if fallback_margin is not None else None
    served = load_served_plans(plan)
    loaded_plan = load_plan_set(plan)[-1].plan if served.adaptive else load_plan(plan)
    links = links_of(device, loaded_plan.links) if emulate_links else {}
    options = AgentOptions(deployment=deployment, threads=threads, max_pending=max_pending, fallback=fallback,
                           fallback_margin_s=margin_s, local_after_fallback_s=parse_duration_s(local_after_fallback),
                           emulated_links=links, predicted_s=max(served.predicted_s),
                           switching=pin_plan is None, start_plan=None if pin_plan is None else pin_plan - 1)
    if pin_plan is not None and pin_plan > len(served.manifests):
        raise EdgecloudError(f"--pin-plan {pin_plan}: the plan set has {len(served.manifests)} interval(s).")
    stop = stop_on_signals()
    with DeviceAgent(served, device, broker, options):
        if ready_file is not None:
            ready_file.touch()
        stop.wait()


def infer(
    plan: Annotated[Path, typer.Option("--plan", help="Plan JSON (or plan set) the agents serve.")],
    input_path: Annotated[Path, typer.Option("--input", help=".npy (one input) or .npz (inputs by name).")],
    output: Annotated[Path, typer.Option("--output", "-o", help=".npy (one output) or .npz (outputs by name).")],
    broker: Annotated[str, typer.Option("--broker", help="Broker URL.")] = DEFAULT_BROKER,
    broker_password_file: BrokerPasswordFile = None,
    deployment: Annotated[str, typer.Option("--deployment", help="Deployment id the agents use.")] = "default",
    deadline: Annotated[Optional[str], typer.Option("--deadline", help="Time the answer may take (e.g. 2s, 500ms); default: the source agent's, from the plan's prediction and its measured whole-model time.")] = None,
) -> None:
    """Send one input to the deployment's source agent and save the model's output."""
    import numpy as np
    from rich.console import Console

    from edgecloud.errors import EdgecloudError
    from edgecloud.serving.client import InferenceClient
    from partitioner.units import parse_duration_s

    deadline_s = None if deadline is None else parse_duration_s(deadline)
    # numpy.save appends .npy to any other name: check, and later name, the file really written
    output = writable_output(output, "--output", None if output.suffix.lower() in (".npy", ".npz") else ".npy")
    try:
        loaded = np.load(input_path, allow_pickle=False)
        if isinstance(loaded, np.ndarray):
            inputs: np.ndarray | dict[str, np.ndarray] = loaded
        else:  # an .npz archive: inputs by name
            with loaded:
                inputs = {name: loaded[name] for name in loaded.files}
    except FileNotFoundError:
        raise EdgecloudError(f"input file {input_path} does not exist") from None
    except (OSError, ValueError, EOFError) as error:  # EOFError: an empty file (click would call it Ctrl-D)
        # numpy offers to unpickle whatever is not .npy/.npz; we never do.
        reason = "it is not a .npy or .npz file of plain arrays" if "pickle" in str(error) else str(error)
        raise EdgecloudError(f"cannot read {input_path} as an input array: {reason}") from None
    client = InferenceClient(plan, broker, deployment=deployment)
    named = client.named_inputs(inputs)  # a wrong name, dtype or shape is reported before connecting
    with client:
        result = client.infer(named, deadline_s)
    if output.suffix.lower() == ".npz":
        np.savez(output, **result.outputs)
    elif len(result.outputs) == 1:
        np.save(output, next(iter(result.outputs.values())))
    else:
        raise EdgecloudError(f"the model has {len(result.outputs)} outputs; name an .npz file to hold them all")
    note = " (the source device fell back to running the model itself)" if result.fell_back else ""
    if result.plan is not None:
        note += f" under plan {result.plan + 1} ({result.plan_id})"
    Console().print(f"answered by {result.answered_by} in {result.timings.total_s * 1e3:.1f} ms{note}; wrote {output}")
