"""What every verb is handed besides its options: the host it asks (``HostFacts``), as click's
context object, made on first use; tests invoke a verb with ``obj=`` a host of their own; and
the options several verbs share."""

import click

from ..distros.clouds import CLOUDS, QEMU, get_cloud
from ..host.facts import HostFacts

pass_host = click.make_pass_decorator(HostFacts, ensure=True)


def cloud_option(help_text: str, names: tuple[str, ...] = tuple(CLOUDS)):
    """``--cloud qemu|gcp|azure`` (or the ``names`` a verb knows; default qemu), handed to the
    verb as its ``Cloud`` profile."""
    return click.option("--cloud", type=click.Choice(list(names)), default=QEMU.name,
                        show_default=True, callback=lambda ctx, param, name: get_cloud(name),
                        help=help_text)
