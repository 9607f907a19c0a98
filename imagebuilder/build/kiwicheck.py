"""KIWI's own offline checks of a description: schema validation and the runtime checks
``kiwi-ng system build`` runs before it touches anything, with our repositories applied.

Runs in a child Python (``python -m imagebuilder.kiwicheck``) because ``import kiwi``
replaces Python's logger class for the whole process.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..host import runner
from ..core.errors import InputError
from ..distros.repos import Repository


def check_description(description: Path, profile: str | None, repositories: list[Repository]) -> None:
    """Raise InputError with KIWI's message if the description would not build."""
    request = {"description": str(description), "profile": profile,
               "repositories": [repo.kiwi_add_repo() for repo in repositories]}
    result = runner.run([sys.executable, "-m", "imagebuilder.build.kiwicheck"],
                        input=json.dumps(request), text=True)
    if result.returncode != 0:
        lines = [line for line in result.stdout.splitlines() + result.stderr.splitlines() if line.strip()]
        raise InputError(f"KIWI rejects the description {description}: "
                         f"{lines[-1] if lines else 'no message'}")


def _check_in_this_process(request: dict) -> None:
    from kiwi.tasks.system_build import SystemBuildTask

    argv = ["kiwi-ng"]
    if request["profile"]:
        argv += ["--profile", request["profile"]]
    argv += ["system", "build", "--description", request["description"],
             "--target-dir", "/nonexistent", "--ignore-repos"]
    for repo in request["repositories"]:
        argv += ["--add-repo", repo]
    sys.argv = argv
    task = SystemBuildTask(should_perform_task_setup=False)
    task.load_xml_description(request["description"])
    task.run_checks(task.checks_before_command_args)
    # What `system build --ignore-repos --add-repo` does before its remaining checks.
    task.xml_state.delete_repository_sections()
    for repo in task.command_args["--add-repo"]:
        task.xml_state.add_repository(*task._get_repo_parameters(repo, None))
    task.run_checks(task.checks_after_command_args)


if __name__ == "__main__":
    try:
        _check_in_this_process(json.load(sys.stdin))
    except Exception as error:  # noqa: BLE001 - KiwiError subclasses and schema failures alike: report, exit 1
        print(f"{type(error).__name__}: {error}".replace("\n", " "))
        sys.exit(1)
