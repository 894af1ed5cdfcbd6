"""The qemu backend: the backend contract against real VMs (as root, slow), and the
choice between KVM and TCG."""

from __future__ import annotations

import itertools
import os
import random
import stat
from pathlib import Path

import pytest
from backend_contract import BackendContract, BootOrder
from test_backend_nspawn import free_subnet

from corral.backends import kvm_probe, network
from corral.backends.base import ImageRef, NodeSpec, Placement
from corral.backends.qemu import QemuBackend
from corral.images.disk import VmImage
from corral.images.store import ImageStore


class TestQemuBackendContract(BackendContract):
    boot_timeout = 60.0
    poll_interval = 0.2
    pytestmark = pytest.mark.slow

    @pytest.fixture
    def backend(self, tmp_path):
        if reason := QemuBackend.detect():
            pytest.fail(reason)  # CI runs as root with qemu installed
        # a VM still booting ignores the power button: the contract's need not wait for it
        backend = QemuBackend(tmp_path / "qemu", stop_seconds=1)
        yield backend
        for machine in backend.list_machines():
            backend.terminate(machine.node_id)
        assert not [p for p in (tmp_path / "qemu").iterdir() if p.name.startswith("n-")]
        backend.close()

    @pytest.fixture
    def spec_factory(self, baked, request):
        cache, digest = baked
        image = ImageRef("debian-12-slurm", digest, ImageStore(cache).path(digest))
        cluster = f"c-qcontract{os.getpid()}-{random.randrange(1 << 16):04x}"
        subnet = free_subnet()
        hosts = itertools.islice(subnet.hosts(), 1, None)  # the first is the bridge's
        ids = itertools.count()
        made: list[str] = []

        def spec(node: str) -> BootOrder:
            node_spec = NodeSpec(f"n-{cluster}-{next(ids)}", cluster, node, image, 1, 512)
            made.append(node_spec.node_id)
            return BootOrder(node_spec, Placement("local", "local", str(next(hosts)), str(subnet)))

        yield spec
        network.remove_bridge(cluster)
        assert not network.link_exists(network.bridge_name(cluster))
        assert not [n for n in made if network.link_exists(network.tap_name(n))]


def fake_qemu(tmp_path: Path, body: str) -> str:
    script = tmp_path / "qemu"
    script.write_text("#!/bin/sh\n" + body + "\n")
    script.chmod(0o755)
    return str(script)


def test_kvm_is_chosen_when_a_guest_kernel_under_it_prints_its_banner(tmp_path):
    qemu = fake_qemu(tmp_path, 'echo "[    0.000000] Linux version 6.1.0"; exec sleep 30')
    chosen = kvm_probe.choose(tmp_path / "vmlinuz", tmp_path / "verdict.json", qemu,
                              device=Path("/dev/null"))  # fmt: skip
    assert chosen.name == "kvm"


def test_tcg_is_chosen_when_a_guest_under_kvm_prints_nothing(tmp_path):
    qemu = fake_qemu(tmp_path, 'echo "Probing EDD (edd=off to disable)... ok"; exec sleep 30')
    chosen = kvm_probe.choose(tmp_path / "vmlinuz", tmp_path / "verdict.json", qemu,
                              device=Path("/dev/null"), seconds=1)  # fmt: skip
    assert chosen.name == "tcg"
    assert "printed nothing in 1 s" in chosen.reason


def test_tcg_is_chosen_without_a_kvm_device_or_when_kvm_refuses(tmp_path):
    qemu = fake_qemu(tmp_path, 'echo "Could not access KVM kernel module" >&2; exit 1')
    missing = kvm_probe._probe(tmp_path / "vmlinuz", qemu, tmp_path / "no-kvm", 1)
    assert (missing.name, missing.reason) == (
        "tcg",
        f"{tmp_path / 'no-kvm'} is missing or not ours to use",
    )
    refused = kvm_probe._probe(tmp_path / "vmlinuz", qemu, Path("/dev/null"), 5)
    assert refused == kvm_probe.Accelerator(
        "tcg", "KVM refused a guest: Could not access KVM kernel module"
    )


def test_the_verdict_is_kept_until_this_machine_boots_again(tmp_path):
    calls = tmp_path / "calls"
    qemu = fake_qemu(tmp_path, f'echo run >> {calls}; echo "Linux version"; exec sleep 30')
    verdict = tmp_path / "verdict.json"
    for _ in range(3):
        assert (
            kvm_probe.choose(tmp_path / "vmlinuz", verdict, qemu, Path("/dev/null")).name == "kvm"
        )
    assert calls.read_text().count("run") == 1
    verdict.write_text(verdict.read_text().replace(kvm_probe._boot_id(), "an-earlier-boot"))
    kvm_probe.choose(tmp_path / "vmlinuz", verdict, qemu, Path("/dev/null"))
    assert calls.read_text().count("run") == 2


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"accel": "xen"}, "accel"),
        ({"stop_seconds": "soon"}, "stop_seconds"),
        ({"stop_seconds": "-1"}, "stop_seconds"),
        ({"append": "a\nb"}, "append"),
        ({"append": "x" * 1025}, "append"),
        ({"append": 'init="/bin/sh'}, "append: No closing quotation"),
        ({"colour": "blue"}, "colour"),
    ],
)
def test_bad_options_are_refused_naming_the_option(tmp_path, options, named):
    with pytest.raises(ValueError, match=named):
        QemuBackend.from_options(options, tmp_path)


def test_the_backends_directory_is_root_only(tmp_path):
    backend = QemuBackend(tmp_path / "qemu")
    assert stat.S_IMODE((tmp_path / "qemu").stat().st_mode) == 0o700
    assert backend.list_machines() == []


def qemu_spec(cluster: str, node: str, image: ImageRef, outbound: bool = False) -> NodeSpec:
    return NodeSpec(f"n-{cluster}-{node}", cluster, node, image, 2, 768, outbound=outbound)


def test_a_vms_address_and_size_are_on_its_command_line_and_a_gateway_only_with_a_way_out(
    tmp_path,
):
    backend = QemuBackend(tmp_path / "qemu")
    image = VmImage(tmp_path / "disk.qcow2", tmp_path / "vmlinuz", tmp_path / "initrd.img")
    placement = Placement("local", "local", "10.9.8.7", "10.9.8.0/24")

    def command(outbound: bool) -> list[str]:
        spec = qemu_spec("c-cmdline", "worker-3", ImageRef("x"), outbound)
        return backend._command(spec, placement, image, "tcg", "crlt-x", tmp_path / "n")

    closed = command(outbound=False)
    kernel_line = closed[closed.index("-append") + 1].split()
    assert "ip=10.9.8.7:::255.255.255.0::eth0:off" in kernel_line
    assert "systemd.hostname=worker-3" in kernel_line
    assert closed[closed.index("-smp") + 1] == "2"
    assert closed[closed.index("-m") + 1] == "768"
    assert "tcg,thread=multi" in closed
    way_out = command(outbound=True)
    assert "ip=10.9.8.7::10.9.8.1:255.255.255.0::eth0:off" in way_out[way_out.index("-append") + 1]


@pytest.mark.slow
def test_each_vms_tap_is_on_its_own_clusters_bridge_only(tmp_path, baked):
    cache, digest = baked
    image = ImageRef("debian-12-slurm", digest, ImageStore(cache).path(digest))
    backend = QemuBackend(tmp_path / "qemu", stop_seconds=0)
    clusters = [f"c-qtap{os.getpid()}-{i}" for i in range(2)]
    subnets = []
    try:
        for cluster in clusters:
            subnet = free_subnet()
            subnets.append(subnet)
            for index, node in enumerate(("head-0", "worker-0")):
                address = str(list(subnet.hosts())[index + 1])
                backend.boot(qemu_spec(cluster, node, image),
                             Placement("local", "local", address, str(subnet)))  # fmt: skip
        for cluster in clusters:
            own = {network.tap_name(f"n-{cluster}-{node}") for node in ("head-0", "worker-0")}
            assert set(network.bridge_ports(cluster)) == own
    finally:
        for machine in backend.list_machines():
            backend.terminate(machine.node_id)
    for cluster in clusters:
        assert not network.link_exists(network.bridge_name(cluster))
