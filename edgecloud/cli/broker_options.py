"""`--broker-password-file`, one definition for every command that takes `--broker`.

Why through the environment: the commands hand a broker URL to library code (agents, the client,
child agent processes of `edgecloud demo`); the option exports the file's *path* as
`EDGECLOUD_BROKER_PASSWORD_FILE`, which `edgecloud.transport.mqtt_url.resolve_credentials` reads whenever a URL
names a user but no password, in this process and in every child it starts. The secret itself never
appears on a command line (`/proc/<pid>/cmdline` is world-readable).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from edgecloud.transport.mqtt_url import PASSWORD_FILE_ENV


def _export_password_file(path: Optional[Path]) -> Optional[Path]:
    if path is not None:
        if not path.is_file():
            raise typer.BadParameter(f"{path} is not a file.")
        os.environ[PASSWORD_FILE_ENV] = str(path.resolve())
    return path


BrokerPasswordFile = Annotated[Optional[Path], typer.Option(
    "--broker-password-file", callback=_export_password_file,
    help="File holding the broker password of the URL's user (keeps it off the command line); "
         "or set EDGECLOUD_BROKER_PASSWORD.")]
