"""Answers about DNA documents, pure: a page of the library, a ValidateDna answer, an
inline DNA checked, the DNA names an agent advertises.

Synchronous and free of grpc. Parsing and checking a large document take milliseconds,
so the servicer calls `validate_dna` and `inline_dna` from a worker thread.
"""

from __future__ import annotations

import collections
import threading
from dataclasses import dataclass, field

import helix.v1.dna_pb2 as dna_pb2
import helix.v1.generator_pb2 as generator_pb2
from helix.common import pages
from helix.generator.library import LibraryPage, invalid_dna_error
from helix.generator.validation import GeneratorLimits
from helix.genome.documents import check_dna_message, parse_dna_text

# Room for a ListDnasResponse's next_page_token and framing, under the message limit.
_PAGE_RESERVE = 64 + 2048
# Skipped files a first page names at most (ListDnasResponse.skipped).
MAX_SKIPPED_LISTED = 100
# What the registry accepts in GeneratorDetails.dnas (registry.proto).
MAX_ADVERTISED_DNAS = 10_000


def page_position(
    request: generator_pb2.ListDnasRequest, limits: GeneratorLimits
) -> tuple[str, int]:
    """Where a valid ListDnas request's page starts (after which name) and its size."""
    after = ""
    if request.page_token:
        position = pages.decode_page_token(request.page_token)
        if position.snapshot:  # the library is read live: its tokens never name a snapshot
            raise pages.invalid_page_token("is not a next_page_token of this listing")
        after = position.after
    return after, limits.page_size(request.page_size)


def list_page(
    request: generator_pb2.ListDnasRequest,
    page: LibraryPage,
    *,
    max_bytes: int,
) -> generator_pb2.ListDnasResponse:
    """ListDnas' answer from the library's `page` for a valid `request` (its documents are
    the page size's worth after the request's position): cut short rather than exceed
    `max_bytes` (yet never empty while documents remain), with a next_page_token while
    more follow, and on the first page the files that are not served."""
    response = generator_pb2.ListDnasResponse()
    if not request.page_token:
        response.total_skipped = len(page.skipped)
        for file in page.skipped[:MAX_SKIPPED_LISTED]:
            response.skipped.add(file=file.file, rule=file.rule, description=file.description)
    room = max_bytes - _PAGE_RESERVE - response.ByteSize()
    for document in page.documents:
        room -= document.ByteSize() + 6  # the field's tag and length prefix
        if room < 0 and response.dnas:
            break
        response.dnas.append(document)
    if len(response.dnas) < len(page.documents):  # cut short
        position = pages.PagePosition(response.dnas[-1].name)
        response.next_page_token = pages.encode_page_token(position)
    elif page.more:
        response.next_page_token = pages.encode_page_token(pages.PagePosition(page.last))
    return response


@dataclass(slots=True)
class Advertisement:
    """The DNA names an agent registers with: offered the valid DNAs in name order, it
    keeps the first ones that fit in `max_bytes` of GeneratorDetails.dnas as serialised,
    at most `max_names` of them, and counts the others (`left_out`). The registry bounds
    an Agent's size and its number of DNAs; an agent that advertised them all would never
    be registered."""

    max_bytes: int
    max_names: int = MAX_ADVERTISED_DNAS
    names: list[str] = field(default_factory=list, init=False)
    left_out: int = field(default=0, init=False)
    _room: int = field(default=0, init=False, repr=False)

    def __post_init__(self) -> None:
        self._room = self.max_bytes

    def offer(self, name: str) -> None:
        size = len(name.encode()) + 2  # the field's tag and length (a name is < 128 bytes)
        if self.left_out or len(self.names) >= self.max_names or size > self._room:
            self.left_out += 1  # and every name after it: the first ones in name order
            return
        self._room -= size
        self.names.append(name)


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


class InlineDnas:
    """The normalised form of the inline DNAs checked lately, by their bytes: a run sends
    the same pinned DNA with every generation, and checking it again each time cost the
    generator about a tenth of its Python time per generation. Bounded by count and by
    the size of each DNA kept; a DNA is kept as bytes and parsed on each hit (a message
    handed out twice could be changed by one holder under the other)."""

    def __init__(self, entries: int = 64, max_bytes: int = 64 << 10) -> None:
        self.entries = entries
        self.max_bytes = max_bytes
        self._kept: collections.OrderedDict[bytes, bytes] = collections.OrderedDict()
        self._lock = threading.Lock()

    def cached(self, dna: dna_pb2.Dna) -> tuple[bytes, dna_pb2.Dna | None]:
        """`dna`'s key and its normalised form if it was checked lately (cheap: call it
        on the event loop before `check` in a thread)."""
        key = dna.SerializeToString(deterministic=True)
        with self._lock:
            found = self._kept.get(key)
            if found is not None:
                self._kept.move_to_end(key)
        return key, None if found is None else dna_pb2.Dna.FromString(found)

    def check(self, key: bytes, dna: dna_pb2.Dna) -> dna_pb2.Dna:
        """`inline_dna(dna)`, remembered under `key` when valid. Blocking."""
        normalised = inline_dna(dna)
        if len(key) <= self.max_bytes:
            with self._lock:
                self._kept[key] = normalised.SerializeToString()
                while len(self._kept) > self.entries:
                    self._kept.popitem(last=False)
        return normalised


def inline_dna(dna: dna_pb2.Dna) -> dna_pb2.Dna:
    """GenerateRequest.dna, checked and normalised; DnaInvalid (INVALID_ARGUMENT, each
    violation under "dna.") when it is not valid. Blocking (checks the document)."""
    check = check_dna_message(dna, "")
    if check.normalised is None:
        raise invalid_dna_error("", "dna", check.violation_protos(), field_prefix="dna")
    return check.normalised
