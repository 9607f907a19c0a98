"""The build provenance's parts that the synthetic build cannot show: a SLES repository's token
never reaches it, a repository whose metadata was not read has no digest, and the tree digest is
the shell line README gives, for names with blanks and nested directories too."""

import subprocess

from imagebuilder.build import provenance
from imagebuilder.distros.repos import Repository

TREE_DIGEST = ("find . -type f -printf '%P\\n' | LC_ALL=C sort | xargs -d '\\n' sha256sum "
               "| sha256sum")


def test_a_repository_token_stays_out_and_its_metadata_digest_is_kept():
    repo = Repository("SLE-Product-SLES", "https://updates.suse.com/SUSE/Products/SLE-Product-SLES/15-SP5/x86_64/product",
                      "rpm-md", token="secret-token-abc")
    descriptor = provenance.repository(repo, {repo.probe_url(): "cd" * 32})

    assert descriptor == {"name": "SLE-Product-SLES", "uri": repo.url,
                          "annotations": {"type": "rpm-md", "metadata": "repodata/repomd.xml"},
                          "digest": {"sha256": "cd" * 32}}
    assert "secret-token-abc" not in str(descriptor)


def test_a_repository_whose_metadata_was_not_read_has_no_digest():
    repo = Repository("bookworm", "http://mirror.example/debian", "apt-deb", distribution="bookworm")
    descriptor = provenance.repository(repo, {})

    assert "digest" not in descriptor
    assert descriptor["annotations"] == {"type": "apt-deb", "metadata": "dists/bookworm/InRelease",
                                         "distribution": "bookworm"}


def test_the_tree_digest_is_readmes_shell_line(tmp_path):
    (tmp_path / "root" / "etc" / "a b").mkdir(parents=True)
    (tmp_path / "root" / "etc" / "a b" / "file with blanks").write_text("x\n")
    (tmp_path / "root" / "config.sh").write_text("#!/bin/sh\n")
    (tmp_path / "Z-upper").write_text("sorted bytewise before lower case\n")
    (tmp_path / "link").symlink_to("config.sh")  # find -type f leaves links out, as does the digest

    shell = subprocess.run(["bash", "-c", TREE_DIGEST], cwd=tmp_path, capture_output=True,
                           text=True, check=True).stdout.split()[0]
    assert provenance.tree_digest(tmp_path) == shell
