"""Devices by name: the shipped catalogue, this machine (`host`, measured), or a device JSON file.

Why a module of its own: `host` is measured by `devices.host`, which builds a `DeviceProfile`
(`devices.profiles`); the lookup that knows both sits above them, so no module of `devices` imports
one that imports it back.
"""

from __future__ import annotations

from pathlib import Path

from devices.errors import DeviceError
from devices.host import host_profile
from devices.json_files import read_json_file
from devices.profiles import HOST_DEVICE_NAME, DeviceProfile, load_shipped_device, shipped_device_files


def catalogue_names() -> list[str]:
    """Names `load_device` accepts without a file: the shipped profiles plus `host`."""
    return [*shipped_device_files(), HOST_DEVICE_NAME]


def load_device(name_or_path: str) -> DeviceProfile:
    """A catalogue device by name, `host` (measured once, then cached), or a device JSON file."""
    if name_or_path == HOST_DEVICE_NAME:
        return host_profile()
    if name_or_path in shipped_device_files():
        return load_shipped_device(name_or_path)
    path = Path(name_or_path)
    if path.suffix != ".json" and not path.exists():
        raise DeviceError(
            f"unknown device '{name_or_path}': use one of {', '.join(catalogue_names())} or a JSON file."
        )
    return DeviceProfile.from_dict(read_json_file(path, "device profile"), origin=str(path))


def catalogue() -> dict[str, DeviceProfile]:
    """Every named device, `host` included (measuring this machine the first time)."""
    return {name: load_device(name) for name in catalogue_names()}
