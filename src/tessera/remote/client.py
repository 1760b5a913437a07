"""``RemoteClient``: the storage API of a Tessera server, blocking, for scripts and the CLI.

Uploads up to ``tus_threshold`` are one streamed ``PUT`` with its SHA-256 (the server stores nothing
if the bytes it got differ); larger ones go through tus (``/api/v1/uploads/``) in ``chunk_size``
pieces, each with its own checksum, and a later ``put`` of the same file to the same path resumes
where the last one stopped (the upload URL is remembered in ``resume_file``).
"""

from __future__ import annotations

import base64
import hashlib
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import quote

import httpx
from tusclient.exceptions import TusCommunicationError, TusUploadFailed
from tusclient.fingerprint.interface import Fingerprint

if TYPE_CHECKING:  # tuspy's client brings requests and aiohttp: imported by the tus path only
    from tusclient.uploader import Uploader

from tessera.errors import InvalidPath
from tessera.namespace import split_path

#: Called with the number of bytes just moved (progress bars).
Progress = Callable[[int], None]
READ_CHUNK = 1024 * 1024
DEFAULT_RESUME_FILE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tessera" / "tus.json"


class RemoteError(Exception):
    """The server refused or failed a request (``status`` 0: it could not be reached)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status}: {reason}" if status else reason)
        self.status = status
        self.reason = reason


def _reason(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return " ".join(response.text.split())[:500] or response.reason_phrase
    if isinstance(body, dict):
        for key in ("detail", "error", "message"):
            if key in body:
                return str(body[key])
    return str(body)[:500]


class _SameFileSamePath(Fingerprint):
    """Keys a remembered tus upload by the local file's identity and the target, so only the same
    unchanged file sent to the same place on the same server resumes (tuspy's default looks at the
    first 64 KiB and the size only)."""

    def __init__(self, server: str, target: str, local: Path) -> None:
        self.key = f"{server}|{target}|{local.resolve()}"

    def get_fingerprint(self, fs: IO[bytes]) -> str:
        st = os.fstat(fs.fileno())
        identity = f"{self.key}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}|{st.st_dev}"
        return hashlib.sha256(identity.encode()).hexdigest()


class RemoteClient:
    def __init__(
        self,
        server: str,
        token: str | None = None,
        *,
        timeout: float = 60.0,
        tus_threshold: int = 64 * 1024 * 1024,
        chunk_size: int = 16 * 1024 * 1024,
        resume_file: Path = DEFAULT_RESUME_FILE,
    ) -> None:
        self.server = server.rstrip("/")
        self.token = token
        self.tus_threshold = tus_threshold
        self.chunk_size = chunk_size
        self.resume_file = resume_file
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.server, headers=headers, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RemoteClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ requests

    def _request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, url, **kwargs)
        except httpx.HTTPError as exc:
            raise RemoteError(0, f"no answer from {self.server}: {exc}") from None
        if response.status_code >= 400:
            raise RemoteError(response.status_code, _reason(response))
        return response

    @staticmethod
    def _files_url(path: str) -> str:
        """The files-API URL of a virtual path, refused here if the server would refuse it (an HTTP
        client would otherwise resolve ``..`` away and send another path)."""
        try:
            split_path(path)
        except InvalidPath as exc:
            raise RemoteError(400, str(exc)) from None
        return "/api/v1/files/" + quote(path.lstrip("/"))

    # ------------------------------------------------------------------ objects

    def put(
        self, local: Path, path: str, *, create_only: bool = False, progress: Progress | None = None
    ) -> dict[str, Any]:
        """Upload ``local`` to the virtual ``path``; returns ``{path, size, etag, sha256}``."""
        size = local.stat().st_size
        if size > self.tus_threshold and not create_only:
            return self._put_tus(local, path, progress)
        digest = _sha256_of(local)
        headers = {
            "Content-Length": str(size),
            "x-amz-checksum-sha256": base64.b64encode(digest).decode(),
            "Content-Type": "application/octet-stream",
        }
        if create_only:
            headers["If-None-Match"] = "*"
        with local.open("rb") as file:
            body = _read_chunks(file, progress)
            response = self._request("PUT", self._files_url(path), content=body, headers=headers)
        result: dict[str, Any] = response.json()
        return result

    def _put_tus(self, local: Path, path: str, progress: Progress | None) -> dict[str, Any]:
        from tusclient.client import TusClient
        from tusclient.storage.filestorage import FileStorage

        self.resume_file.parent.mkdir(parents=True, exist_ok=True)
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        client = TusClient(f"{self.server}/api/v1/uploads/", headers=headers)
        remembered = FileStorage(str(self.resume_file))
        fingerprint = _SameFileSamePath(self.server, path, local)

        def uploader() -> Uploader:
            return client.uploader(
                str(local),
                chunk_size=self.chunk_size,
                metadata={"path": path, "filename": local.name},
                store_url=True,
                url_storage=remembered,
                fingerprinter=fingerprint,
                retries=3,
                retry_delay=1,
                upload_checksum=True,
            )

        try:
            try:
                upload = uploader()
            except TusCommunicationError as exc:
                if exc.status_code not in (404, 410):
                    raise
                with local.open("rb") as file:  # the remembered upload expired: start afresh
                    remembered.remove_item(fingerprint.get_fingerprint(file))
                upload = uploader()
            done = upload.offset
            if progress:
                progress(done)
            while upload.offset < upload.get_file_size():
                upload.upload_chunk()
                if progress:
                    progress(upload.offset - done)
                done = upload.offset
        except (TusCommunicationError, TusUploadFailed) as exc:
            status = getattr(exc, "status_code", None) or 0
            raise RemoteError(status, str(getattr(exc, "response_content", None) or exc)) from None
        with local.open("rb") as file:
            remembered.remove_item(fingerprint.get_fingerprint(file))
        return self.stat(path)

    def stat(self, path: str) -> dict[str, Any]:
        """``{path, size, etag, modified}`` of one object (a HEAD)."""
        response = self._request("HEAD", self._files_url(path))
        return {
            "path": path,
            "size": int(response.headers.get("content-length", 0)),
            "etag": response.headers.get("etag"),
            "modified": response.headers.get("last-modified"),
        }

    def get(self, path: str, out: IO[bytes], progress: Progress | None = None) -> int:
        """Write the object at ``path`` to ``out``; returns its size."""
        written = 0
        try:
            with self._http.stream("GET", self._files_url(path)) as response:
                if response.status_code >= 400:
                    response.read()
                    raise RemoteError(response.status_code, _reason(response))
                for chunk in response.iter_bytes(READ_CHUNK):
                    out.write(chunk)
                    written += len(chunk)
                    if progress:
                        progress(len(chunk))
                expected = response.headers.get("content-length")
        except httpx.HTTPError as exc:
            raise RemoteError(0, f"download of {path} broke off: {exc}") from None
        if expected is not None and int(expected) != written:
            raise RemoteError(0, f"download of {path} broke off after {written} of {expected} bytes")
        return written

    def delete(self, path: str) -> None:
        self._request("DELETE", self._files_url(path))

    def list(self, prefix: str, *, recursive: bool = False, limit: int = 1000) -> Iterator[dict[str, Any]]:
        """Objects under ``prefix`` (one level unless ``recursive``); sub-prefixes come as
        ``{"prefix": ...}`` entries."""
        cursor: str | None = None
        url = "/api/v1/list/" + quote(prefix.lstrip("/"))
        while True:
            params: dict[str, Any] = {"limit": limit}
            if not recursive:
                params["delimiter"] = "/"
            if cursor:
                params["cursor"] = cursor
            page = self._request("GET", url, params=params).json()
            for sub in page.get("prefixes", []):
                yield {"prefix": sub}
            yield from page.get("items", [])
            cursor = page.get("next")
            if not cursor:
                return

    # ------------------------------------------------------------------ jobs and local files

    def start_import(self, source: str, path: str) -> dict[str, Any]:
        result: dict[str, Any] = self._request(
            "POST", "/api/v1/jobs/import", json={"source": source, "path": path}
        ).json()
        return result

    def job(self, job_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._request("GET", f"/api/v1/jobs/{quote(job_id)}").json()
        return result

    def wait(
        self, job_id: str, on_update: Callable[[dict[str, Any]], None] | None = None, every: float = 0.5
    ) -> dict[str, Any]:
        """Poll a job until it ends; returns its last status."""
        while True:
            status = self.job(job_id)
            if on_update:
                on_update(status)
            if status.get("state") in ("done", "failed", "cancelled"):
                return status
            time.sleep(every)

    def cancel(self, job_id: str) -> None:
        self._request("DELETE", f"/api/v1/jobs/{quote(job_id)}")

    def retrieve(self, path: str, lease: int | None = None) -> dict[str, Any]:
        """Make ``path`` wholly local on the server's node: ``{path, local_path, size, sha256}``."""
        body: dict[str, Any] = {"path": path}
        if lease is not None:
            body["lease"] = lease
        result: dict[str, Any] = self._request("POST", "/api/v1/retrieve", json=body, timeout=None).json()
        return result


def _sha256_of(local: Path) -> bytes:
    digest = hashlib.sha256()
    with local.open("rb") as file:
        while block := file.read(READ_CHUNK):
            digest.update(block)
    return digest.digest()


def _read_chunks(file: IO[bytes], progress: Progress | None) -> Iterator[bytes]:
    while block := file.read(READ_CHUNK):
        if progress:
            progress(len(block))
        yield block
