"""A dm-verity hash tree read and checked in Python, offline: no device-mapper, no loop device.

The on-disk format is cryptsetup's (``veritysetup format``; lib/verity/verity.c and verity_hash.c):
a 512-byte superblock at the start of the hash device, then the tree's levels, top level first,
each in ``hash_block_size`` blocks; level 0 holds one digest per data block.  Format version 1
hashes ``salt || block``; digests are packed, and the unused tail of a hash block is zero.  The
root hash is the digest of the single top-level block.  The kernel (drivers/md/dm-verity-target.c)
checks a data block against level 0, and each hash block against the level above, up to the root
hash it was given: so an image boots only if its stored tree matches its data *and* the root hash.
"""

from __future__ import annotations

import hashlib
import struct
import uuid
from collections.abc import Callable
from dataclasses import dataclass

SUPERBLOCK = struct.Struct("<8sII16s32sIIQH6x256s168x")
SIGNATURE = b"verity\0\0"
READ_CHUNK = 8 * 2**20


class VerityError(Exception):
    """The hash device holds no usable verity superblock."""


@dataclass(frozen=True)
class Superblock:
    version: int
    hash_type: int
    uuid: uuid.UUID
    algorithm: str
    data_block_size: int
    hash_block_size: int
    data_blocks: int
    salt: bytes


def read_superblock(data: bytes) -> Superblock:
    if len(data) < SUPERBLOCK.size or not data.startswith(SIGNATURE):
        raise VerityError("no verity superblock (signature 'verity') at the start of the hash partition")
    (_, version, hash_type, raw_uuid, algorithm, data_block_size, hash_block_size, data_blocks,
     salt_size, salt) = SUPERBLOCK.unpack_from(data)
    name = algorithm.rstrip(b"\0").decode(errors="replace")
    if version != 1 or hash_type != 1:
        raise VerityError(f"verity superblock version {version}, hash type {hash_type}: only 1/1 (veritysetup's default) is read")
    if name not in hashlib.algorithms_available:
        raise VerityError(f"verity hash algorithm {name!r} is not available here")
    for size in (data_block_size, hash_block_size):
        if size < 512 or size & (size - 1):
            raise VerityError(f"verity block size {size} is not a power of two >= 512")
    if salt_size > 256:
        raise VerityError(f"verity salt of {salt_size} bytes (at most 256)")
    return Superblock(version, hash_type, uuid.UUID(bytes=raw_uuid), name, data_block_size,
                      hash_block_size, data_blocks, salt[:salt_size])


@dataclass(frozen=True)
class Verdict:
    root_hash: str  # what the stored tree's top block hashes to (hex)
    computed_root_hash: str  # what the data's tree hashes to (hex)
    first_bad_data_block: int | None  # the first data block whose digest differs from the tree's
    bad_hash_blocks: int  # stored hash blocks that differ from those the data gives

    @property
    def intact(self) -> bool:
        return self.first_bad_data_block is None and self.bad_hash_blocks == 0


def level_sizes(superblock: Superblock) -> list[int]:
    """Hash blocks per level, level 0 (digests of the data blocks) first (verity_hash.c hash_levels)."""
    digest_size = hashlib.new(superblock.algorithm).digest_size
    per_block = 1 << ((superblock.hash_block_size // digest_size).bit_length() - 1)
    sizes, blocks = [], superblock.data_blocks
    while True:
        blocks = -(-blocks // per_block)
        sizes.append(blocks)
        if blocks == 1:
            return sizes


def verify(superblock: Superblock, read_data: Callable[[int, int], bytes],
           read_hash: Callable[[int, int], bytes]) -> Verdict:
    """Recompute the tree from the data device and compare it with the hash device, level by level.

    ``read_data(offset, length)`` / ``read_hash(offset, length)`` read the two devices (the hash
    device from its start, where the superblock is)."""
    algorithm, salt = superblock.algorithm, superblock.salt
    digest_size = hashlib.new(algorithm).digest_size
    hash_block = superblock.hash_block_size
    per_block = 1 << ((hash_block // digest_size).bit_length() - 1)
    if per_block * digest_size != hash_block:  # SHA-1's 20 bytes: slots padded, not read here
        raise VerityError(f"{algorithm} digests do not fill {hash_block}-byte hash blocks: not read here")
    sizes = level_sizes(superblock)
    # Levels are stored top first, after the superblock's block.
    starts, position = [0] * len(sizes), -(-SUPERBLOCK.size // hash_block)
    for level in reversed(range(len(sizes))):
        starts[level] = position
        position += sizes[level]

    def digest(block: bytes | memoryview) -> bytes:
        hasher = hashlib.new(algorithm, salt)
        hasher.update(block)
        return hasher.digest()

    zero_block = bytes(superblock.data_block_size)
    zero_digest = digest(zero_block)  # most of a fresh file system: hashed once
    # Whole hash blocks of level 0 per read, so computed and stored digests compare as bytes.
    block_size = superblock.data_block_size
    chunk_blocks = max(per_block, READ_CHUNK // block_size // per_block * per_block)
    digests: list[bytes] = []
    first_bad, done = None, 0
    while done < superblock.data_blocks:
        count = min(chunk_blocks, superblock.data_blocks - done)
        view = memoryview(read_data(done * block_size, count * block_size))
        if len(view) != count * block_size:
            raise VerityError(f"the data device ends before block {done + count} of {superblock.data_blocks}")
        computed = [zero_digest if view[i:i + block_size] == zero_block else digest(view[i:i + block_size])
                    for i in range(0, len(view), block_size)]
        if first_bad is None:
            stored = read_hash(starts[0] * hash_block + done // per_block * hash_block, count * digest_size)
            if stored != b"".join(computed):
                first_bad = done + next(i for i, value in enumerate(computed)
                                        if value != stored[i * digest_size:(i + 1) * digest_size])
        digests += computed
        done += count
    bad_hash_blocks = 0
    for level, size in enumerate(sizes):
        blocks = [_pack(digests[i:i + per_block], hash_block) for i in range(0, len(digests), per_block)]
        stored = read_hash(starts[level] * hash_block, size * hash_block)
        bad_hash_blocks += sum(stored[i * hash_block:(i + 1) * hash_block] != block
                               for i, block in enumerate(blocks))
        if level == len(sizes) - 1:
            return Verdict(digest(stored[:hash_block]).hex(), digest(blocks[0]).hex(), first_bad,
                           bad_hash_blocks)
        digests = [digest(block) for block in blocks]
    raise AssertionError("unreachable: the last level has one block")


def _pack(digests: list[bytes], hash_block: int) -> bytes:
    return b"".join(digests).ljust(hash_block, b"\0")

