"""``tdx-image run IMAGE``: print, or run with ``--exec``, the QEMU command (and the libvirt
domain) that launches an image, as launch.py composes them; a TD only on a host that meets the
TD requirements (requirements.py)."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import click

from ..core.errors import InputError
from ..host import runner
from ..core.inputs import UserPath, require_writable_file, write_text
from ..host import virt
from ..vm.launch import DEFAULT_QGS, Launch, choose_accel
from ..host.requirements import require_ovmf, require_tdx_host, tdx_host_problems
# qcow2 or raw for a readable image; a truncated qcow2 or a text file is an InputError.
from ..image.disk import GCE_TAR
from ..image.disk import image_format as disk_format
from .context import pass_host


# QEMU 7.2's q35 machine takes at most 288 vCPUs; 4 TiB is a guard against a unit too many
# (--memory is MiB), far above any TD this tool builds images for.
MAX_CPUS, MAX_MEMORY_MIB = 288, 4 * 2**20


@click.command("run")
@click.argument("image", type=UserPath(path_type=Path))
@click.option("--tdx", is_flag=True, help="Launch as an Intel TDX trust domain.")
@click.option("--accel", type=click.Choice(["auto", "kvm", "tcg"]), default="auto",
              show_default=True, help="auto: KVM where it works, else software emulation.")
@click.option("--memory", "memory_mib", type=click.IntRange(256, MAX_MEMORY_MIB), default=2048,
              show_default=True, help="Guest memory in MiB.")
@click.option("--cpus", type=click.IntRange(1, MAX_CPUS), default=2, show_default=True)
@click.option("--firmware", "--tdvf", "firmware", type=UserPath(path_type=Path),
              help="UEFI firmware (TDVF with --tdx).  [default: the host's OVMF]")
@click.option("--ssh-port", type=click.IntRange(1, 65535),
              help="Forward this port on 127.0.0.1 to the guest's SSH port 22.")
@click.option("--persistent", is_flag=True,
              help="Write the guest's changes into IMAGE.  [default: a throwaway overlay; IMAGE "
                   "is never written]")
@click.option("--qgs", default=DEFAULT_QGS, show_default=True, metavar="vsock:CID:PORT|unix:PATH|none",
              help="With --tdx: the Quote Generation Service attestation asks for quotes.")
@click.option("--libvirt-xml", type=UserPath(dir_okay=False, path_type=Path),
              help="Also write the equivalent libvirt domain XML to this file.")
@click.option("--exec", "execute", is_flag=True, help="Run QEMU instead of printing its command.")
@click.option("--allow-backing-file", "allow_backing", is_flag=True,
              help="Also read the backing files a qcow2 names (regular files, no loop): without "
                   "it such an image is refused, as its contents would come from this host.")
@click.option("--json", "as_json", is_flag=True, help="Print the QEMU command as JSON.")
@pass_host
def run_command(host, image, tdx, accel, memory_mib, cpus, firmware, ssh_port, persistent, qgs,
                libvirt_xml, execute, allow_backing, as_json):
    """Print (or run with --exec) the QEMU command that launches IMAGE.

    The serial console is on the terminal (Ctrl-A X quits QEMU); a guest reboot ends QEMU.
    """
    if libvirt_xml:
        require_writable_file(libvirt_xml, "--libvirt-xml")
    if firmware:
        virt.require_firmware_volume(firmware)
    tdvf = None
    if tdx and execute:
        tdvf = require_tdx_host(firmware, host)
    elif tdx:
        # Printing is also for copying the command to a TDX host: say what this one lacks.
        for problem in tdx_host_problems(firmware, host):
            click.echo(f"note: this host cannot run it: {problem}", err=True)
        tdvf = firmware or host.tdvf or virt.TDVF_CANDIDATES[0]
    note = host.td_firmware_note(tdvf) if tdvf and tdvf.exists() else None
    if note:
        click.echo(f"note: {note}", err=True)
    image_format = disk_format(image, allow_backing)
    if image_format == GCE_TAR:
        raise InputError(f"{image}: QEMU cannot run a gzipped tar in place",
                         f"boot a throwaway copy (tdx-image boot --cloud gcp {image}) or unpack its "
                         "disk.raw (tar -xSzf) and run that")
    launch = Launch(disk=image.resolve(), disk_format=image_format,
                    memory_mib=memory_mib, cpus=cpus, accel=choose_accel(accel, tdx, host)[0],
                    tdx=tdx, tdvf=tdvf,
                    firmware=None if tdx else (require_ovmf(firmware, host) if execute or firmware
                                               else host.ovmf),
                    snapshot=not persistent, ssh_port=ssh_port,
                    qgs=None if qgs == "none" else qgs)
    if libvirt_xml:
        write_text(libvirt_xml, launch.libvirt_xml(name=f"tdx-image-{image.stem}"), "--libvirt-xml")
        click.echo(f"libvirt domain written to {libvirt_xml}", err=True)
    args = launch.qemu_args()
    if execute:
        runner.replace_process(args)
    click.echo(json.dumps({"ok": True, "command": args}, indent=2) if as_json else shlex.join(args))
