"""Answers about DNA documents, pure: a page of the library, a ValidateDna answer, an
inline DNA checked.

Synchronous and free of grpc. Parsing and checking a large document take milliseconds,
so the servicer calls `validate_dna` and `inline_dna` from a worker thread.
"""

from __future__ import annotations

from collections.abc import Sequence

import helix.v1.dna_pb2 as dna_pb2
import helix.v1.generator_pb2 as generator_pb2
from helix.common import pages
from helix.generator.library import invalid_dna_error
from helix.generator.validation import GeneratorLimits
from helix.genome.documents import check_dna_message, parse_dna_text

# Room for a ListDnasResponse's next_page_token and framing, under the message limit.
_PAGE_RESERVE = 64 + 2048


def list_page(
    request: generator_pb2.ListDnasRequest,
    documents: Sequence[generator_pb2.DnaDocument],
    *,
    limits: GeneratorLimits,
    max_bytes: int,
) -> generator_pb2.ListDnasResponse:
    """The page of `documents` (the whole library, in name order) that a valid `request`
    asks for: up to its page size, cut short rather than exceed `max_bytes` (yet never
    empty while documents remain), with a next_page_token while more follow."""
    after = pages.decode_page_token(request.page_token).after if request.page_token else ""
    size = limits.page_size(request.page_size)
    following = [d for d in documents if d.name > after]
    response = generator_pb2.ListDnasResponse()
    room = max_bytes - _PAGE_RESERVE
    for document in following[:size]:
        room -= document.ByteSize() + 6  # the field's tag and length prefix
        if room < 0 and response.dnas:
            break
        response.dnas.append(document)
    if len(response.dnas) < len(following):
        position = pages.PagePosition(response.dnas[-1].name)
        response.next_page_token = pages.encode_page_token(position)
    return response


def validate_dna(request: generator_pb2.ValidateDnaRequest) -> generator_pb2.ValidateDnaResponse:
    """ValidateDna's answer for a valid request: the document's violations, and when it is
    valid its normalised DNA and fingerprint. Blocking (parses and checks)."""
    if request.WhichOneof("source") == "text":
        check = parse_dna_text(request.text, request.filename)
    else:
        check = check_dna_message(request.dna, request.filename)
    response = generator_pb2.ValidateDnaResponse(
        valid=check.valid, violations=check.violation_protos()
    )
    if check.normalised is not None:
        response.dna.CopyFrom(check.normalised)
        response.fingerprint = check.fingerprint
    return response


def inline_dna(dna: dna_pb2.Dna) -> dna_pb2.Dna:
    """GenerateRequest.dna, checked and normalised; DnaInvalid (INVALID_ARGUMENT, each
    violation under "dna.") when it is not valid. Blocking (checks the document)."""
    check = check_dna_message(dna, "")
    if check.normalised is None:
        raise invalid_dna_error("", "dna", check.violation_protos(), field_prefix="dna")
    return check.normalised
