"""Job files in S3-compatible object storage: ``s3://<bucket>/<prefix>/<job id>/<name>``.

Credentials and region come from the standard AWS variables (or an instance
role); ``DIP_S3_ENDPOINT_URL`` points at MinIO or another S3-compatible server.
boto3 retries throttling and 5xx answers itself; what still fails is an outage
(:class:`ResultsUnavailable`). Each object is written whole by one PUT (or a
multipart upload completed at once), so a reader never sees half a file.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, PartialCredentialsError

from core.layout import JOB_ID
from core.results.base import ObjectInfo, ResultsStore, ResultsUnavailable

# Parts of 8 MiB above 16 MiB: uploads as large as DIP_MAX_UPLOAD_BYTES go up in a few parts.
_TRANSFER = TransferConfig(multipart_threshold=16 << 20, multipart_chunksize=8 << 20, use_threads=False)
_MISSING = {"404", "NoSuchKey", "NotFound", "NoSuchBucket"}


class S3Results(ResultsStore):
    """Args:
        bucket: An existing bucket.
        prefix: Key prefix of every job ('' for the bucket's root).
        endpoint_url: S3-compatible endpoint; ``None`` for AWS.
    """

    def __init__(self, bucket: str, prefix: str = "", *, endpoint_url: str | None = None,
                 client: Any = None) -> None:
        self.bucket = bucket
        self.prefix = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
        self.endpoint_url = endpoint_url
        # Short timeouts: a submission waits on them, and an endpoint that stopped answering
        # must turn into a 503 (or a hand-back) within half a minute, not hang.
        self._client = client or boto3.client(
            "s3", endpoint_url=endpoint_url,
            config=Config(connect_timeout=3, read_timeout=8, retries={"max_attempts": 2, "mode": "standard"}))

    def __repr__(self) -> str:
        return f"S3Results('s3://{self.bucket}/{self.prefix}', endpoint_url={self.endpoint_url!r})"

    def _key(self, job_id: str, name: str = "") -> str:
        if not JOB_ID.fullmatch(job_id):
            raise ValueError(f"not a job id: {job_id!r}")
        if name.startswith("/") or ".." in name.split("/"):
            raise ValueError(f"not a file name inside a job: {name!r}")
        return f"{self.prefix}{job_id}/{name}"

    def _call(self, method: str, **kwargs: Any) -> Any:
        try:
            return getattr(self._client, method)(**kwargs)
        except (NoCredentialsError, PartialCredentialsError) as exc:
            raise ResultsUnavailable(f"no credentials for s3://{self.bucket}: {exc}") from exc
        except ClientError as exc:
            if _code(exc) in _MISSING:
                raise FileNotFoundError(kwargs.get("Key", self.bucket)) from exc
            raise ResultsUnavailable(f"s3://{self.bucket}: {exc}") from exc
        except BotoCoreError as exc:  # endpoint unreachable, timeouts
            raise ResultsUnavailable(f"s3://{self.bucket}: {exc}") from exc

    def check(self) -> None:
        try:
            self._client.head_bucket(Bucket=self.bucket)
        except (NoCredentialsError, PartialCredentialsError):
            raise ValueError(f"DIP_RESULTS_URL s3://{self.bucket}: no AWS credentials (set AWS_ACCESS_KEY_ID "
                             "and AWS_SECRET_ACCESS_KEY, or a profile or role)") from None
        except ClientError as exc:
            code = _code(exc)
            reason = {"404": "no such bucket", "NoSuchBucket": "no such bucket", "403": "access denied",
                      "AccessDenied": "access denied"}.get(code, str(exc))
            raise ValueError(f"DIP_RESULTS_URL s3://{self.bucket}: {reason}") from None
        except BotoCoreError as exc:
            raise ValueError(f"DIP_RESULTS_URL s3://{self.bucket}: {exc}") from None

    def put_file(self, job_id: str, name: str, path: Path) -> None:
        try:
            self._client.upload_file(str(path), self.bucket, self._key(job_id, name), Config=_TRANSFER)
        except (BotoCoreError, ClientError) as exc:
            raise ResultsUnavailable(f"s3://{self.bucket}: upload of {job_id}/{name} failed: {exc}") from exc
        except boto3.exceptions.S3UploadFailedError as exc:
            raise ResultsUnavailable(f"s3://{self.bucket}: upload of {job_id}/{name} failed: {exc}") from exc

    def get_file(self, job_id: str, name: str, path: Path) -> bool:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        os.close(fd)
        try:
            self._client.download_file(self.bucket, self._key(job_id, name), temporary, Config=_TRANSFER)
            os.replace(temporary, path)
            return True
        except ClientError as exc:
            if _code(exc) in _MISSING:
                return False
            raise ResultsUnavailable(f"s3://{self.bucket}: download of {job_id}/{name} failed: {exc}") from exc
        except BotoCoreError as exc:
            raise ResultsUnavailable(f"s3://{self.bucket}: download of {job_id}/{name} failed: {exc}") from exc
        finally:
            Path(temporary).unlink(missing_ok=True)

    def info(self, job_id: str, name: str) -> ObjectInfo | None:
        try:
            head = self._call("head_object", Bucket=self.bucket, Key=self._key(job_id, name))
        except FileNotFoundError:
            return None
        return ObjectInfo(int(head["ContentLength"]), head["ETag"], head["LastModified"].timestamp())

    def read(self, job_id: str, name: str, *, chunk_bytes: int = 1 << 20) -> Iterator[bytes]:
        body = self._call("get_object", Bucket=self.bucket, Key=self._key(job_id, name))["Body"]
        try:
            yield from body.iter_chunks(chunk_bytes)
        finally:
            body.close()

    def list(self, job_id: str) -> dict[str, ObjectInfo]:
        prefix = self._key(job_id)
        found: dict[str, ObjectInfo] = {}
        for page in self._pages(Prefix=prefix):
            for item in page.get("Contents", []):
                found[item["Key"][len(prefix):]] = ObjectInfo(int(item["Size"]), item["ETag"],
                                                               item["LastModified"].timestamp())
        return found

    def delete(self, job_id: str, names: list[str] | None = None) -> None:
        keys = [self._key(job_id, name) for name in (self.list(job_id) if names is None else names)]
        for start in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
            batch = [{"Key": key} for key in keys[start:start + 1000]]
            answer = self._call("delete_objects", Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
            if answer.get("Errors"):
                raise ResultsUnavailable(f"s3://{self.bucket}: could not delete {answer['Errors'][0]}")

    def job_ids(self) -> Iterator[str]:
        for page in self._pages(Prefix=self.prefix, Delimiter="/"):
            for common in page.get("CommonPrefixes", []):
                job_id = common["Prefix"][len(self.prefix):].rstrip("/")
                if JOB_ID.fullmatch(job_id):
                    yield job_id

    def url(self, job_id: str, name: str, *, expires_s: int, filename: str) -> str | None:
        return str(self._client.generate_presigned_url(
            "get_object", ExpiresIn=expires_s,
            Params={"Bucket": self.bucket, "Key": self._key(job_id, name),
                    "ResponseContentDisposition": f'inline; filename="{filename}"'}))

    def _pages(self, **kwargs: Any) -> Iterator[dict[str, Any]]:
        try:
            yield from self._client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, **kwargs)
        except ClientError as exc:
            raise ResultsUnavailable(f"s3://{self.bucket}: {exc}") from exc
        except BotoCoreError as exc:
            raise ResultsUnavailable(f"s3://{self.bucket}: {exc}") from exc


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))
