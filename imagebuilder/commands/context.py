"""What every verb is handed besides its options: the host it asks (``HostFacts``), as click's
context object, made on first use; tests invoke a verb with ``obj=`` a host of their own."""

import click

from ..host.facts import HostFacts

pass_host = click.make_pass_decorator(HostFacts, ensure=True)
