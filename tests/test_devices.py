"""Device and link profiles: the catalogue, its sources, and one-sentence errors for bad files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from devices import host
from devices.errors import DeviceError
from devices.lookup import catalogue, catalogue_names, load_device
from devices.profiles import DeviceProfile, LinkProfile, link_presets, link_sources, load_link

FIGURES = ("peak_flops", "memory_bandwidth_bytes_per_s", "memory_bytes", "threads")
SHIPPED = ("rpi4", "jetson-nano", "edge-server", "cloud-server")


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The host profile is cached per test session, never in the user's real cache; a short measuring
    budget keeps the tests fast (the figures' accuracy is not what they check)."""
    folder = tmp_path_factory.getbasetemp() / "edgecloud-cache"
    monkeypatch.setenv("EDGECLOUD_CACHE", str(folder))
    monkeypatch.setattr(host, "_BUDGET_S", 0.05)
    return folder


def test_catalogue_has_the_four_shipped_devices_and_the_host() -> None:
    devices = catalogue()
    assert set(SHIPPED) | {"host"} == set(devices) == set(catalogue_names())
    for name, device in devices.items():
        assert device.name == name
        assert device.peak_flops > 0 and device.memory_bandwidth_bytes_per_s > 0
        assert device.memory_bytes > 0 and device.threads >= 1


def test_every_catalogue_figure_names_its_source() -> None:
    for name, device in catalogue().items():
        for figure in FIGURES:
            assert len(device.sources.get(figure, "")) > 10, f"{name}.{figure} has no source"


def test_catalogue_orders_devices_as_their_datasheets_do() -> None:
    devices = catalogue()
    assert devices["rpi4"].peak_flops < devices["edge-server"].peak_flops < devices["cloud-server"].peak_flops
    assert devices["rpi4"].memory_bandwidth_bytes_per_s < devices["jetson-nano"].memory_bandwidth_bytes_per_s


def test_round_trip_through_a_file(tmp_path: Path) -> None:
    device = load_device("rpi4")
    path = tmp_path / "rpi.json"
    device.save(path)
    assert load_device(str(path)) == device
    assert DeviceProfile.from_dict(device.to_dict()).sources == device.sources


def test_host_is_measured_once_then_read_from_the_cache(isolated_cache: Path) -> None:
    host.host_profile.cache_clear()
    measured = load_device("host")
    assert (isolated_cache / host.HOST_CACHE_FILE).is_file()
    assert measured.threads >= 1 and measured.memory_bytes == host.memory_bytes()
    host.host_profile.cache_clear()
    assert load_device("host") == measured  # the cached figures, not a second (noisy) measurement


def test_a_cache_of_another_machine_is_measured_again(isolated_cache: Path) -> None:
    isolated_cache.mkdir(parents=True, exist_ok=True)
    stale = DeviceProfile("host", 1.0, 1.0, 1, 1)
    (isolated_cache / host.HOST_CACHE_FILE).write_text(
        json.dumps({"machine": {"cpu": "another"}, "profile": stale.to_dict()}))
    host.host_profile.cache_clear()
    assert load_device("host").peak_flops > 1e6
    host.host_profile.cache_clear()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"name": "x", "peak_flops": 1e9}', "missing key(s) memory_bandwidth_bytes_per_s, memory_bytes, threads"),
        ('{"name": "x", "peak_flops": "fast", "memory_bandwidth_bytes_per_s": 1, "memory_bytes": 1, "threads": 1}',
         "'peak_flops' must be a finite number"),
        ('{"name": "x", "peak_flops": -1, "memory_bandwidth_bytes_per_s": 1, "memory_bytes": 1, "threads": 1}',
         "'peak_flops' must be positive"),
        ('{"name": "x", "peak_flops": 1, "memory_bandwidth_bytes_per_s": 1, "memory_bytes": 1, "threads": 1.5}',
         "'threads' must be a whole number"),
        ('{"name": "x", "peak_flops": 1, "memory_bandwidth_bytes_per_s": 1, "memory_bytes": 1, "threads": true}',
         "'threads' must be a finite number"),
        ('{"name": "x", "peak_flops": 1' + "0" * 400 + ', "memory_bandwidth_bytes_per_s": 1, "memory_bytes": 1, '
         '"threads": 1}', "'peak_flops' must be a finite number"),
        ('{"name": "x", "peak_flops": 1' + "0" * 5000 + "}", "not readable JSON"),
    ],
)
def test_bad_device_files_raise_one_sentence(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "device.json"
    path.write_text(content)
    with pytest.raises(DeviceError, match="^.*" + message.replace("(", r"\(").replace(")", r"\)")) as error:
        load_device(str(path))
    assert "\n" not in str(error.value)


def test_unknown_device_name_lists_the_choices() -> None:
    with pytest.raises(DeviceError, match="unknown device 'pi5'.*rpi4"):
        load_device("pi5")
    with pytest.raises(DeviceError, match="does not exist"):
        load_device("nowhere.json")


def test_link_presets_have_sources_and_cost_transfers() -> None:
    presets = link_presets()
    assert {"ethernet", "wifi", "4g"} <= set(presets)
    for name in presets:
        assert set(link_sources(name)) == {"bandwidth_bps", "latency_s"}
    assert presets["ethernet"].bandwidth_bps > presets["wifi"].bandwidth_bps > presets["4g"].bandwidth_bps
    link = LinkProfile(bandwidth_bps=8e6, latency_s=0.01)
    assert link.transfer_time_s(1_000_000) == pytest.approx(1.01)
    assert load_link("wifi") == presets["wifi"]


def test_bad_link_files_raise(tmp_path: Path) -> None:
    path = tmp_path / "link.json"
    path.write_text('{"bandwidth_bps": 0, "latency_s": 0.01}')
    with pytest.raises(DeviceError, match="'bandwidth_bps' must be positive"):
        load_link(str(path))
    path.write_text('{"bandwidth_bps": 1e6}')
    with pytest.raises(DeviceError, match="missing key"):
        load_link(str(path))
    with pytest.raises(DeviceError, match="unknown link"):
        load_link("carrier-pigeon")
