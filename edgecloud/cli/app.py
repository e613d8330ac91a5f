"""The `edgecloud` Typer app: one module per command group, registered here.

Command modules import torch, onnxruntime and the solvers inside their functions only, so that
`edgecloud --help` and `edgecloud plan --cost-graph` start fast (tests/test_cli_startup.py checks it).
"""

from __future__ import annotations

import typer

from edgecloud.cli import broker as broker_command
from edgecloud.cli import calibrate as calibrate_command
from edgecloud.cli import models
from edgecloud.cli import plan as plan_command
from edgecloud.cli import predictor as predictor_command
from edgecloud.cli import profile as profile_command
from edgecloud.cli import demo as demo_command
from edgecloud.cli import fleet as fleet_command
from edgecloud.cli import serve as serve_command
from edgecloud.cli import testbed as testbed_command
from edgecloud.cli import train as train_command
from edgecloud.cli import train_data
from edgecloud.cli import train_fleet
from edgecloud.cli.user_errors import reports_user_errors

app = typer.Typer(
    name="edgecloud",
    help="Plan, split and serve ML models across edge devices and the cloud; train robustly across IoT devices.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

app.command("models")(reports_user_errors(models.list_models))
app.command("export")(reports_user_errors(models.export))
app.command("plan")(reports_user_errors(plan_command.plan))
app.command("sweep")(reports_user_errors(plan_command.sweep))
app.command("broker")(reports_user_errors(broker_command.broker))
app.command("profile")(reports_user_errors(profile_command.profile))
app.command("train")(reports_user_errors(train_command.train))
app.command("train-server")(reports_user_errors(train_fleet.train_server))
app.command("train-worker")(reports_user_errors(train_fleet.train_worker))
app.command("split")(reports_user_errors(serve_command.split))
app.command("agent")(reports_user_errors(serve_command.agent))
app.command("infer")(reports_user_errors(serve_command.infer))
app.command("demo")(reports_user_errors(demo_command.demo))
app.command("calibrate")(reports_user_errors(calibrate_command.calibrate))
app.command("testbed")(reports_user_errors(testbed_command.testbed))
app.add_typer(predictor_command.app, name="predictor")
app.add_typer(fleet_command.app, name="fleet")
app.add_typer(train_data.app, name="train-data")


def run(args: list[str] | None = None) -> int:
    """Run one command line (default: sys.argv) and return its exit code. A usage mistake (a value of
    the wrong type, a missing option) ends, like every other user error, in one `error: ...` line and
    exit code 2 instead of typer's boxed panel. Tests call this to see exactly what users see."""
    try:
        outcome = app(args=args, standalone_mode=False)
    except typer.TyperException as error:
        if type(error).__name__ == "NoArgsIsHelpError":  # bare `edgecloud`: the help is the answer
            typer.echo(error.format_message())
            return 0
        typer.echo(f"error: {error.format_message()}", err=True)
        return error.exit_code
    except typer.Abort:
        return 130
    return outcome if isinstance(outcome, int) else 0


def main() -> None:
    """Console-script entry point; a child of a local run (a training worker, an agent) ends with it."""
    from robust_training.runners.parent_death import end_with_parent_from_environment

    end_with_parent_from_environment()
    raise SystemExit(run())


if __name__ == "__main__":
    main()
