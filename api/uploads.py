"""Streaming ``multipart/form-data`` reader with a byte cap per file.

File parts go straight to disk as they arrive, so an upload is never held in
memory and one over the cap is refused (413) the moment it passes the cap,
not after it has been read whole.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from python_multipart import MultipartParser
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import parse_options_header

from api.errors import ApiError

_MAX_FIELD_BYTES = 1024  # a parameter value ("denoise", "0.25") is short
_MAX_PARTS = 32
_FORM_OVERHEAD_BYTES = 64 * 1024  # boundaries, part headers and parameter values
# RFC 2046: 1-70 characters from this set, not ending in a space.
_BOUNDARY = re.compile(rb"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]")


@dataclass
class Upload:
    """A received form: text ``fields`` and ``files`` (form field -> file written in the staging dir)."""

    fields: dict[str, str] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)


async def receive_form(
    content_type: str | None,
    content_length: str | None,
    chunks: AsyncIterator[bytes],
    staging: Path,
    *,
    file_fields: frozenset[str],
    max_file_bytes: int,
) -> Upload:
    """Read a multipart body, writing parts named in ``file_fields`` to ``staging/<name>``.

    Args:
        content_type: The request's Content-Type header.
        content_length: The request's Content-Length header, if any (checked first).
        chunks: The request body as it arrives.
        staging: An existing empty directory for the files.
        file_fields: Part names received as files; any other part is a text field.
        max_file_bytes: Largest accepted file.

    Raises:
        ApiError: 415 (not multipart), 413 (a file over ``max_file_bytes``),
            400 (malformed body or boundary, bad encoding) or 422 (duplicate or unnamed part).
    """
    mime, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if mime != b"multipart/form-data" or not boundary:
        raise ApiError(415, "unsupported_media_type",
                       f"send the job as multipart/form-data with a boundary, got {content_type or 'none'!r}")
    if not _BOUNDARY.fullmatch(boundary):
        raise ApiError(400, "invalid_request",
                       f"malformed multipart boundary {boundary.decode('latin-1')[:80]!r}: RFC 2046 allows "
                       "1-70 characters from A-Z a-z 0-9 '()+_,-./:=? and inner spaces")
    max_body = len(file_fields) * max_file_bytes + _FORM_OVERHEAD_BYTES
    if content_length is not None and content_length.isdigit() and int(content_length) > max_body:
        raise _too_large(f"the request body ({content_length} bytes) exceeds {max_body} bytes "
                         f"({len(file_fields)} files of at most {max_file_bytes} bytes)")

    sink = _FormSink(staging, file_fields=file_fields, max_file_bytes=max_file_bytes)
    parser = MultipartParser(boundary, sink.callbacks())
    received = 0
    try:
        async for chunk in chunks:
            received += len(chunk)
            if received > max_body:
                raise _too_large(f"the request body exceeds {max_body} bytes")
            parser.write(chunk)
        parser.finalize()
    except MultipartParseError as exc:
        raise ApiError(400, "invalid_request", f"malformed multipart body: {exc}") from exc
    finally:
        sink.close()
    if not sink.complete:
        raise ApiError(400, "invalid_request", "malformed multipart body: it ends before its final boundary")
    return sink.upload


def _too_large(message: str) -> ApiError:
    return ApiError(413, "upload_too_large", message)


class _FormSink:
    """python-multipart callbacks: text parts into ``upload.fields``, file parts onto disk."""

    def __init__(self, staging: Path, *, file_fields: frozenset[str], max_file_bytes: int) -> None:
        self.upload = Upload()
        self.complete = False
        self._staging = staging
        self._file_fields = file_fields
        self._max_file_bytes = max_file_bytes
        self._parts = 0
        self._header_name = bytearray()
        self._header_value = bytearray()
        self._disposition = b""
        self._name = ""
        self._file: BinaryIO | None = None
        self._size = 0
        self._text = bytearray()

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self._part_begin, "on_header_field": self._header_field,
            "on_header_value": self._header_value_data, "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished, "on_part_data": self._part_data,
            "on_part_end": self._part_end, "on_end": self._end,
        }

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _part_begin(self) -> None:
        self._parts += 1
        if self._parts > _MAX_PARTS:
            raise ApiError(422, "invalid_parameter", f"too many form parts (more than {_MAX_PARTS})")
        self._disposition = b""
        self._size = 0
        self._text = bytearray()

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _header_value_data(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        if bytes(self._header_name).lower() == b"content-disposition":
            self._disposition = bytes(self._header_value)
        self._header_name.clear()
        self._header_value.clear()

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        raw_name = options.get(b"name")
        if not raw_name:
            raise ApiError(400, "invalid_request", "a form part has no Content-Disposition name")
        self._name = _decode(raw_name, "a form field name")
        if self._name in self.upload.fields or self._name in self.upload.files:
            raise ApiError(422, "invalid_parameter", f"{self._name}: given more than once")
        if self._name in self._file_fields:
            path = self._staging / self._name
            self._file = path.open("xb")
            self.upload.files[self._name] = path

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        self._size += end - start
        if self._file is not None:
            if self._size > self._max_file_bytes:
                raise _too_large(f"{self._name} is larger than the {self._max_file_bytes}-byte limit")
            # Local page-cache writes of one chunk: cheaper than a thread hop per chunk.
            self._file.write(data[start:end])
        else:
            if self._size > _MAX_FIELD_BYTES:
                raise ApiError(422, "invalid_parameter",
                               f"{self._name}: value longer than {_MAX_FIELD_BYTES} bytes")
            self._text += data[start:end]

    def _part_end(self) -> None:
        if self._file is not None:
            self.close()
        else:
            self.upload.fields[self._name] = _decode(bytes(self._text), f"field {self._name!r}")

    def _end(self) -> None:
        self.complete = True


def _decode(raw: bytes, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(400, "invalid_encoding", f"{what} is not valid UTF-8") from exc
