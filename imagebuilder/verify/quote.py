"""A TD quote (Intel TDX DCAP quote format, versions 4 and 5), read offline.

Layout from Intel's "TDX DCAP Quoting Library API" appendix and google/go-tdx-guest ``abi``:
a 48-byte header (version, attestation key type, TEE type 0x81 = TDX, QE vendor ...), then
- v4: the TD report body (584 bytes, TDX 1.0), then the signed data's size and the signed data;
- v5: a body descriptor (type 2 = TDX 1.0 body of 584 bytes, 3 = TDX 1.5 body of 648 bytes,
  which adds TEE_TCB_SVN2 and MRSERVICETD), the body, then the signed data's size and data.
Only the body is read; the signature, the QE report and the PCK certificate chain are not
checked here (``SIGNATURE_NOT_CHECKED`` says why and what does).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

HEADER = struct.Struct("<HHI")  # version, attestation key type, TEE type
HEADER_BYTES = 48
QE_VENDOR_ID = slice(12, 28)
TDX_TEE_TYPE = 0x81
ECDSA_P256_KEY_TYPE = 2
BODY_V10_BYTES, BODY_V15_BYTES = 584, 648
BODY_TYPES = {2: ("TDX 1.0", BODY_V10_BYTES), 3: ("TDX 1.5", BODY_V15_BYTES)}
DESCRIPTOR = struct.Struct("<HI")  # v5: body type, body size
SIGNED_DATA_SIZE = struct.Struct("<I")
RTMR_BYTES = 48

# TD report body fields: name -> (offset, size) (TDX module ABI TDREPORT's TDINFO + REPORTDATA).
BODY_FIELDS = {
    "tee_tcb_svn": (0, 16), "mrseam": (16, 48), "mrsignerseam": (64, 48),
    "seam_attributes": (112, 8), "td_attributes": (120, 8), "xfam": (128, 8), "mrtd": (136, 48),
    "mrconfigid": (184, 48), "mrowner": (232, 48), "mrownerconfig": (280, 48),
    **{f"rtmr{index}": (328 + RTMR_BYTES * index, RTMR_BYTES) for index in range(4)},
    "reportdata": (520, 64),
}
BODY_V15_FIELDS = {"tee_tcb_svn2": (584, 16), "mrservicetd": (600, 48)}
# TD_ATTRIBUTES bits a verifier decides on (TDX module ABI, TDATTRIBUTES).
TD_ATTRIBUTE_BITS = {"debug": 0, "sept_ve_disable": 28, "pks": 30, "kl": 31, "perfmon": 63}

SIGNATURE_NOT_CHECKED = (
    "the quote's ECDSA signature, QE report and PCK certificate chain are not checked here: "
    "that needs Intel's collateral (TCB info, QE identity, CRLs from Intel's PCS or a PCCS), "
    "which this offline tool does not fetch. go-tdx-guest `check -get_collateral -check_crl`, "
    "Intel's Quote Verification Library (QVL) or Phala's dcap-qvl check them")


class QuoteError(Exception):
    """The bytes are not a TD quote this reader knows."""


@dataclass(frozen=True)
class TdQuote:
    version: int
    body_type: str  # "TDX 1.0" or "TDX 1.5"
    fields: dict[str, bytes]  # BODY_FIELDS (and BODY_V15_FIELDS for a TDX 1.5 body)
    qe_vendor_id: bytes
    signed_data_size: int

    @property
    def rtmrs(self) -> list[bytes]:
        return [self.fields[f"rtmr{index}"] for index in range(4)]

    @property
    def td_attributes(self) -> dict[str, bool]:
        value = int.from_bytes(self.fields["td_attributes"], "little")
        return {name: bool(value >> bit & 1) for name, bit in TD_ATTRIBUTE_BITS.items()}

    def to_dict(self) -> dict:
        return {"version": self.version, "body": self.body_type,
                **{name: value.hex() for name, value in self.fields.items()},
                "td_attributes_flags": self.td_attributes,
                "qe_vendor_id": self.qe_vendor_id.hex(),
                "signature_checked": False}


def parse_quote(data: bytes) -> TdQuote:
    if len(data) < HEADER_BYTES:
        raise QuoteError(f"{len(data)} bytes: too short for a quote header ({HEADER_BYTES} bytes)")
    version, key_type, tee_type = HEADER.unpack_from(data)
    if version not in (4, 5):
        raise QuoteError(f"quote version {version}: only TD quotes of version 4 and 5 are read")
    if tee_type != TDX_TEE_TYPE:
        raise QuoteError(f"TEE type 0x{tee_type:x}: not a TDX quote (0x81)"
                         + (" but an SGX enclave's" if tee_type == 0 else ""))
    if key_type != ECDSA_P256_KEY_TYPE:
        raise QuoteError(f"attestation key type {key_type}: a TD quote is signed with "
                         f"ECDSA P-256 ({ECDSA_P256_KEY_TYPE})")
    position = HEADER_BYTES
    body_type, body_bytes = BODY_TYPES[2]
    if version == 5:
        if len(data) < position + DESCRIPTOR.size:
            raise QuoteError("cut off inside the v5 body descriptor")
        type_id, size = DESCRIPTOR.unpack_from(data, position)
        if type_id not in BODY_TYPES or BODY_TYPES[type_id][1] != size:
            raise QuoteError(f"v5 body type {type_id} of {size} bytes: not a TD report body "
                             "(type 2 of 584 or type 3 of 648 bytes)")
        body_type, body_bytes = BODY_TYPES[type_id]
        position += DESCRIPTOR.size
    body = data[position : position + body_bytes]
    position += body_bytes
    if len(data) < position + SIGNED_DATA_SIZE.size:
        raise QuoteError(f"cut off: {len(data)} bytes end inside the {body_type} report body")
    (signed_size,) = SIGNED_DATA_SIZE.unpack_from(data, position)
    if len(data) < position + SIGNED_DATA_SIZE.size + signed_size:
        raise QuoteError(f"cut off: the signed data needs {signed_size} bytes, "
                         f"{len(data) - position - SIGNED_DATA_SIZE.size} are there")
    layout = {**BODY_FIELDS, **(BODY_V15_FIELDS if body_bytes == BODY_V15_BYTES else {})}
    fields = {name: body[offset : offset + size] for name, (offset, size) in layout.items()}
    return TdQuote(version, body_type, fields, data[QE_VENDOR_ID], signed_size)
