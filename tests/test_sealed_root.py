"""debian 13's sealed root as data: the release row, --root, the composed hash-tree partition KIWI
accepts, and the offline verity reader against cryptsetup's own trees (the validator's checks of
a whole sealed image: tests/test_validate_checks.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import xml.etree.ElementTree as ET

import pytest

from imagebuilder.build.compose import Customisation, compose, verity_hash_mib
from imagebuilder.build.kiwicheck import check_description
from imagebuilder.core.errors import InputError
from imagebuilder.core.paths import SHARED_OVERLAY
from imagebuilder.distros.targets import get_target
from imagebuilder.image import verity

from tests.conftest import error_line, run_cli

MIRROR = "http://mirror.invalid"  # never contacted: KIWI's checks are offline


def test_debian_13_is_a_row_with_its_own_profile_suites_and_root_default():
    trixie, bookworm = get_target("debian", "13"), get_target("debian", "12")
    assert (trixie.profile, trixie.root_mode(None)) == ("trixie", "verity")
    assert (bookworm.profile, bookworm.root_mode(None)) == ("bookworm", "writable")
    assert [repo.distribution for repo in trixie.repositories(MIRROR)] == [
        "trixie", "trixie-updates", "trixie-security"]
    assert trixie.description_dir == bookworm.description_dir  # one description, two profiles
    assert trixie.root_mode("writable") == "writable"
    with pytest.raises(InputError, match="not available for debian 12.*built for: debian 13"):
        bookworm.root_mode("verity")


def test_root_verity_where_the_chain_cannot_measure_it_is_refused_in_one_line():
    result = run_cli("build", "leap", "--release", "15.6", "--root", "verity", "--dry-run")
    assert result.returncode == 2
    assert error_line(result).startswith("error: --root verity is not available for leap 15.6")
    assert error_line(result).endswith("built for: debian 13, leap 16.0, sles 16.0)")


def test_the_dry_run_of_debian_13_builds_the_trixie_profile_from_trixie_suites():
    result = run_cli("build", "debian", "--release", "13", "--mirror", MIRROR, "--dry-run", "--json")
    assert result.returncode == 0, result.stderr
    command = json.loads(result.stdout)["command"]
    assert command[command.index("--profile") + 1] == "trixie"
    assert any(",trixie-security," in word for word in command)


@pytest.mark.parametrize("size_mib", [None, 20480])
def test_a_verity_root_gets_a_last_spare_partition_sized_for_the_tree_and_kiwi_accepts_it(tmp_path, size_mib):
    target = get_target("debian", "13")
    composition = compose(target.description_dir, SHARED_OVERLAY, tmp_path / "d",
                          Customisation(root="verity", size_mib=size_mib))
    image_type = next(t for t in ET.parse(composition.path / "config.xml").getroot().iterfind("preferences/type")
                      if t.get("editbootinstall") == "uki.sh")
    disk_mib = size_mib or 4096  # the description's <size unit="G">4</size>
    assert image_type.get("spare_part") == str(verity_hash_mib(disk_mib))
    assert image_type.get("spare_part_is_last") == "true"
    check_description(composition.path, target.profile, target.repositories(MIRROR))


def test_the_hash_partition_holds_a_tree_over_the_whole_disk():
    # what veritysetup needs for N MiB of data: 32 bytes per 4 KiB block, plus the levels above
    for data_mib in (1024, 4096, 65536):
        blocks = data_mib * 256
        needed = 4096 + sum(-(-blocks // 128 ** level) for level in (1, 2, 3)) * 4096
        assert verity_hash_mib(data_mib) * 2**20 >= needed


@pytest.fixture
def formatted(tmp_path):
    """A 40 MiB data file (random at the start, zeros after) and the tree veritysetup made of it."""
    if shutil.which("veritysetup") is None:
        pytest.skip("veritysetup (cryptsetup-bin) is not installed: setup.sh installs it")
    data, tree = tmp_path / "data.img", tmp_path / "hash.img"
    data.write_bytes(os.urandom(3 * 2**20) + bytes(37 * 2**20))
    tree.write_bytes(bytes(2**20))
    output = subprocess.run(["veritysetup", "format", data, tree], capture_output=True, text=True, check=True).stdout
    root_hash = output.split("Root hash:")[1].split()[0]
    return data, tree, root_hash


def _verify(data, tree):
    def reader(path):
        return lambda offset, length: path.read_bytes()[offset:offset + length]
    superblock = verity.read_superblock(tree.read_bytes()[:4096])
    return superblock, verity.verify(superblock, reader(data), reader(tree))


def test_the_reader_computes_cryptsetups_root_hash(formatted):
    data, tree, root_hash = formatted
    superblock, verdict = _verify(data, tree)
    assert (superblock.algorithm, superblock.data_blocks, len(verity.level_sizes(superblock))) == ("sha256", 10240, 2)
    assert verdict.intact and verdict.root_hash == verdict.computed_root_hash == root_hash


def test_a_changed_data_byte_is_found_in_its_block_and_changes_the_root_hash(formatted):
    data, tree, root_hash = formatted
    content = bytearray(data.read_bytes())
    content[5 * 2**20 + 4096 * 3 + 17] ^= 1  # in the zero part: the reader's shortcut must not hide it
    data.write_bytes(bytes(content))
    _, verdict = _verify(data, tree)
    assert verdict.first_bad_data_block == 5 * 256 + 3
    assert verdict.root_hash == root_hash != verdict.computed_root_hash
    completed = subprocess.run(["veritysetup", "verify", data, tree, root_hash], capture_output=True, text=True)
    assert completed.returncode != 0  # cryptsetup agrees


def test_a_changed_hash_block_is_counted_and_a_missing_superblock_refused(formatted):
    data, tree, _ = formatted
    content = bytearray(tree.read_bytes())
    content[4096 + 40] ^= 1  # the top level, first after the superblock's block
    tree.write_bytes(bytes(content))
    _, verdict = _verify(data, tree)
    assert verdict.first_bad_data_block is None and verdict.bad_hash_blocks == 1
    with pytest.raises(verity.VerityError, match="no verity superblock"):
        verity.read_superblock(bytes(4096))
