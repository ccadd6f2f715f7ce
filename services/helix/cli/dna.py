"""`helix dna validate|list|get`: check DNA files offline; list a generator's DNA library
and show one of its documents.

`validate` needs no server: it reads each file (or each DNA file of a directory), prints
every broken rule as "file:line: field_path: description [rule]" and "file: ok (name,
fingerprint …)" for good ones. It applies a library's rules too: a file a generator would
not serve (`Upper.yaml`, `sphere.txt`: rule "file_name"; in a directory, a link out of
it: "outside_library") is reported, however good its DNA. Exit status: 0 when every file
is a valid DNA a library serves, 1 when any is not, 2 for a usage error or a file that
cannot be read at all (missing, a directory without DNA files, no permission).

`list` prints every page of a generator's library, then the files it skips, and why.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TextIO

import grpc

import helix.v1.dna_pb2 as dna_pb2
import helix.v1.generator_pb2 as generator_pb2
import helix.v1.generator_pb2_grpc as generator_pb2_grpc
from helix.cli.client import add_client_arguments, describe_error, open_channel
from helix.cli.output import message_json
from helix.common.errors import FieldViolation
from helix.common.rules import FILE_NAME, OUTSIDE_LIBRARY
from helix.common.validation import check_resource_name
from helix.generator.library import OUTSIDE_TEXT, leads_outside
from helix.genome.documents import (
    DNA_EXTENSIONS,
    MAX_DOCUMENT_BYTES,
    DnaCheck,
    check_dna_bytes,
    dna_name_for,
    file_problem,
    from_dna_violation,
    why_not_served,
)
from helix.security.scopes import DNA_READ

PAGE_SIZE = 1000
TABLE_COLUMNS = ("NAME", "VALID", "GENES", "STRATEGY", "FINGERPRINT", "SOURCE")
EXIT_OK, EXIT_INVALID, EXIT_UNREADABLE = 0, 1, 2


def add_dna_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `helix dna validate|list|get` to the `helix` command line."""
    dna = subparsers.add_parser(
        "dna", help="check DNA files; list and show the DNAs of a generator's library"
    )
    actions = dna.add_subparsers(dest="dna_command", metavar="ACTION", required=True)

    validate = actions.add_parser(
        "validate",
        help="check DNA files offline",
        description="Check DNA documents (YAML or JSON) without a server. Prints each "
        "broken rule as 'file:line: field_path: description [rule]', and 'file: ok (name, "
        "fingerprint F)' for each valid file. A directory stands for its *.yaml, *.yml "
        "and *.json files (not hidden ones), as a generator's library does. A file a "
        "library would not serve (its name is not DNA.yaml|yml|json with DNA matching "
        "[a-z][a-z0-9-]{0,62}; in a directory, a link out of it) is reported.",
        epilog="Exit status: 0 all valid and served, 1 some DNA invalid or not served, 2 "
        "usage error or a file that cannot be read.",
    )
    validate.add_argument("files", nargs="+", type=Path, metavar="FILE", help="DNA file or dir")
    validate.set_defaults(handler=lambda args: validate_files(args.files))

    listing = actions.add_parser(
        "list",
        help="list a generator's DNA documents",
        description="List the DNA documents of a generator's library, in name order, "
        "invalid ones included (their violations follow the table).",
    )
    listing.add_argument("--json", action="store_true", help="one JSON object per document")
    add_client_arguments(listing)
    listing.set_defaults(handler=lambda args: asyncio.run(list_dnas(args)))

    get = actions.add_parser(
        "get",
        help="show one DNA document of a generator's library",
        description="Show a DNA document of a generator's library: its name, source, "
        "validity, fingerprint, strategy and genes (or its violations), or the whole "
        "document as JSON.",
        epilog="Exit status: 0 the document was shown (valid or not), 1 an error from the "
        "server (such as NOT_FOUND), 2 a usage error.",
    )
    get.add_argument("name", type=parse_dna_name, help="dnas/NAME or NAME")
    get.add_argument("--json", action="store_true", help="the DnaDocument as JSON")
    add_client_arguments(get)
    get.set_defaults(handler=lambda args: asyncio.run(get_dna(args)))


def parse_dna_name(text: str) -> str:
    """`dnas/{id}` or just `{id}`."""
    name = text if text.startswith("dnas/") else f"dnas/{text}"
    if check_resource_name(name, "dnas", "name"):
        raise argparse.ArgumentTypeError(
            f"bad DNA name {text!r}: expected dnas/ID or ID, ID matching [a-z][a-z0-9-]{{0,62}}"
        )
    return name


# --- validate -----------------------------------------------------------------------------


def _dna_files(path: Path) -> list[Path]:
    """The files `path` stands for: itself, or the DNA files of a directory (sorted, not
    hidden ones: a library neither serves nor lists those)."""
    if not path.is_dir():
        return [path]
    return sorted(
        p
        for p in path.iterdir()
        if p.name.endswith(DNA_EXTENSIONS) and not p.name.startswith(".") and p.is_file()
    )


def check_file(
    path: Path, max_bytes: int = MAX_DOCUMENT_BYTES, library: Path | None = None
) -> DnaCheck:
    """Read and check one DNA file of the directory `library` (None: a file named on its
    own); OSError if it cannot be read at all. A link out of `library` is not read."""
    if library is not None and leads_outside(path, library):
        return file_problem(str(path), OUTSIDE_LIBRARY, OUTSIDE_TEXT)
    with path.open("rb") as handle:
        data = handle.read(max_bytes + 1)
    return check_dna_bytes(data, str(path), max_bytes=max_bytes)


def describe(check: DnaCheck, not_served: str | None = None) -> list[str]:
    """The lines `validate` prints for one checked file; `not_served` is why a library
    would not serve it (`why_not_served`), which comes first (and replaces "ok")."""
    lines = []
    if not_served is not None:
        lines.append(str(FieldViolation("", not_served, FILE_NAME, check.file)))
    if check.valid:
        if not lines:
            name = check.dna.name or dna_name_for(check.file) or "unnamed"
            lines.append(f"{check.file}: ok ({name}, fingerprint {check.fingerprint})")
        return lines
    lines += [str(violation) for violation in check.violations]
    dropped = check.total_violations - len(check.violations)
    if dropped > 0:
        lines.append(f"{check.file}: … and {dropped} more violations")
    return lines


def validate_files(
    paths: Sequence[Path], out: TextIO | None = None, err: TextIO | None = None
) -> int:
    """`helix dna validate`: check every file, print the outcome, return the exit status."""
    out, err = out or sys.stdout, err or sys.stderr
    status = EXIT_OK
    for path in paths:
        files = _dna_files(path)
        if not files:
            print(f"helix dna validate: {path}: no *.yaml, *.yml or *.json files", file=err)
            status = EXIT_UNREADABLE
        library = path if path.is_dir() else None
        for file in files:
            try:
                check = check_file(file, library=library)
            except OSError as exc:
                reason = exc.strerror or type(exc).__name__
                print(f"helix dna validate: {file}: cannot read: {reason}", file=err)
                status = EXIT_UNREADABLE
                continue
            not_served = why_not_served(file.name)
            print("\n".join(describe(check, not_served)), file=out)
            if not check.valid or not_served is not None:
                status = max(status, EXIT_INVALID)
    return status


# --- list ---------------------------------------------------------------------------------


def _strategy(dna: dna_pb2.Dna) -> str:
    kind = dna.strategy.WhichOneof("kind")
    return kind or ("alpha" if dna.genes else "-")


def format_table(documents: Sequence[generator_pb2.DnaDocument]) -> str:
    """The documents as an aligned table, then each invalid document's violations."""
    rows = [TABLE_COLUMNS] + [
        (
            doc.name,
            "yes" if doc.valid else f"no ({len(doc.violations)})",
            str(len(doc.dna.genes)),
            _strategy(doc.dna),
            doc.fingerprint[:12] or "-",
            doc.source,
        )
        for doc in documents
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(TABLE_COLUMNS))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    problems = [
        str(replace(from_dna_violation(v), file=v.file or doc.source))
        for doc in documents
        for v in doc.violations
    ]
    return "\n".join(lines + (["", *problems] if problems else []))


def format_skipped(first_page: generator_pb2.ListDnasResponse) -> list[str]:
    """The files the library does not serve (named on ListDnas' first page), one a line."""
    lines = [
        str(FieldViolation("", f"not served: {file.description}", file.rule, file.file))
        for file in first_page.skipped
    ]
    more = first_page.total_skipped - len(first_page.skipped)
    if more > 0:
        lines.append(f"… and {more} more files not served")
    return lines


async def list_dnas(args: argparse.Namespace) -> int:
    """`helix dna list`: every page of GeneratorService.ListDnas, as a table or JSON lines,
    then the files the library skips (on stderr with --json, so stdout stays JSON)."""
    request = generator_pb2.ListDnasRequest(page_size=PAGE_SIZE)
    documents: list[generator_pb2.DnaDocument] = []
    first_page: generator_pb2.ListDnasResponse | None = None
    async with open_channel(args, [DNA_READ]) as channel:
        stub: generator_pb2_grpc.GeneratorServiceAsyncStub = (
            generator_pb2_grpc.GeneratorServiceStub(channel)
        )
        try:
            while True:
                page = await stub.ListDnas(request)
                if first_page is None:
                    first_page = page
                documents.extend(page.dnas)
                if not page.next_page_token:
                    break
                request.page_token = page.next_page_token
        except grpc.aio.AioRpcError as error:
            print(describe_error(error), file=sys.stderr)
            return 1
    skipped = format_skipped(first_page) if first_page is not None else []
    if args.json:
        for doc in documents:
            print(message_json(doc))
        if skipped:
            print("\n".join(skipped), file=sys.stderr)
        return 0
    if documents:
        print(format_table(documents))
    else:
        print("no DNA documents", file=sys.stderr)
    if skipped:
        print("\n".join(["", *skipped] if documents else skipped))
    return 0


# --- get ----------------------------------------------------------------------------------


def _number(value: float) -> str:
    return f"{value:g}"


def gene_domain(gene: dna_pb2.Gene) -> tuple[str, str]:
    """A gene's kind (with its size) and the values it takes, for a person."""
    kind = gene.WhichOneof("kind") or "-"
    size = getattr(getattr(gene, kind, None), "size", 1) if kind != "-" else 1
    shown_kind = f"{kind} x{size}" if size > 1 and kind not in ("bits", "permutation") else kind
    if kind == "real":
        scale = ", log scale" if gene.real.log_scale else ""
        return shown_kind, f"[{_number(gene.real.low)}, {_number(gene.real.high)}]{scale}"
    if kind == "integer":
        return shown_kind, f"[{gene.integer.low}, {gene.integer.high}]"
    if kind == "choice":
        return shown_kind, " | ".join(gene.choice.options)
    if kind == "bits":
        return kind, f"{gene.bits.size or 1} bits"
    if kind == "permutation":
        return kind, f"of 0..{max(gene.permutation.size, 1) - 1}"
    if kind == "sequence":
        seq = gene.sequence
        return kind, f"over {seq.alphabet}, length {seq.min_length}..{seq.max_length}"
    return kind, "-"


def format_document(doc: generator_pb2.DnaDocument) -> str:
    """One document for a person: a header, then its genes (or its violations)."""
    header = [
        ("name", doc.name),
        ("description", doc.dna.description or "-"),
        ("source", doc.source or "-"),
        ("valid", "yes" if doc.valid else f"no ({len(doc.violations)} violations)"),
        ("fingerprint", doc.fingerprint or "-"),
        ("strategy", _strategy(doc.dna)),
    ]
    lines = [f"{key:<12} {value}" for key, value in header]
    rows = [("GENE", "KIND", "VALUES")] + [
        (gene.name, *gene_domain(gene)) for gene in doc.dna.genes
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(2)]
    lines.append("")
    lines += [
        f"{name.ljust(widths[0])}  {kind.ljust(widths[1])}  {values}".rstrip()
        for name, kind, values in rows
    ]
    problems = [
        str(replace(from_dna_violation(v), file=v.file or doc.source)) for v in doc.violations
    ]
    return "\n".join(lines + (["", *problems] if problems else []))


async def get_dna(args: argparse.Namespace) -> int:
    """`helix dna get`: GeneratorService.GetDna, for a person or as JSON."""
    async with open_channel(args, [DNA_READ]) as channel:
        stub: generator_pb2_grpc.GeneratorServiceAsyncStub = (
            generator_pb2_grpc.GeneratorServiceStub(channel)
        )
        try:
            response = await stub.GetDna(generator_pb2.GetDnaRequest(name=args.name))
        except grpc.aio.AioRpcError as error:
            print(describe_error(error), file=sys.stderr)
            return 1
    print(message_json(response.dna, indent=2) if args.json else format_document(response.dna))
    return 0
