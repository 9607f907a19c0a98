"""Every description passes KIWI's own schema and runtime checks, offline, per target/profile."""

import shutil

import pytest

from imagebuilder.build.pipeline import BuildRequest, compose_description
from imagebuilder.build.compose import compose
from imagebuilder.core.errors import InputError
from imagebuilder.build.kiwicheck import check_description
from imagebuilder.distros.repos import Repository
from imagebuilder.distros.targets import TARGETS, get_target
from imagebuilder.core.paths import SHARED_OVERLAY

MIRROR = "http://mirror.invalid"  # never contacted: the checks are offline


@pytest.mark.parametrize("name, release", [(name, release.name) for name, target in
                                           sorted(TARGETS.items()) for release in target.releases])
def test_composed_description_passes_kiwi_checks(tmp_path, name, release):
    """Every target x release x profile, composed as a build composes it."""
    request = BuildRequest(target=get_target(name, release), out_dir=tmp_path / "out")
    composition = compose_description(request, tmp_path / "d")
    check_description(composition.path, request.target.profile, request.target.repositories(MIRROR))


def test_kiwi_schema_rejects_a_broken_description(tmp_path):
    description = tmp_path / "broken"
    shutil.copytree(TARGETS["debian"].description_dir, description)
    config = description / "config.xml"
    # schema 8.5 replaced console= by output_console=/input_console=
    config.write_text(config.read_text().replace('output_console="serial"', 'console="serial"'))
    with pytest.raises(InputError, match="KIWI rejects"):
        check_description(description, None, TARGETS["debian"].repositories(MIRROR))


def test_unknown_profile_is_rejected(tmp_path):
    composition = compose(TARGETS["leap"].description_dir, SHARED_OVERLAY, tmp_path / "d")
    with pytest.raises(InputError, match="KIWI rejects"):
        check_description(composition.path, "Tumbleweed",
                          [Repository("x", f"{MIRROR}/x/", "rpm-md")])
