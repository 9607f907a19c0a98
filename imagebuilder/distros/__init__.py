"""What can be built: the targets and their releases as data, and their repositories, mirrors
and credentials."""
