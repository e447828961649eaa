"""The model store in an S3-compatible bucket (``COLORIZER_MODEL_STORE_URL=s3://bucket/prefix``),
mirrored into each machine's own store folder.

Every process keeps reading its local folder (``<data dir>/models``) as before; with a bucket, the
folder follows the bucket, and the bucket is what machines share:

* **Publishing** (``VersionStore.publish_files``): the version number is claimed in the bucket with
  a conditional write (``<prefix>/<n>/.claim``, ``If-None-Match: *``: two publishers anywhere never
  get the same number; a claimed number is never used again), the version's files are uploaded,
  and ``<prefix>/<n>/.complete`` is written last: a version without it is invisible, so a reader
  sees a whole version or none. Then the local folder gets it (renamed into place, as always).
* **Reading** (``sync``, at most once a ``SYNC_INTERVAL_S`` whenever the store is listed): complete
  versions the folder lacks are downloaded (into a hidden folder, renamed into place), versions
  the bucket no longer has (retention elsewhere) are removed from the folder, and the bucket's
  ``labels.json`` replaces the local one when it changed.
* **Labels** (``common.labels``): each change is a compare-and-swap on the bucket's
  ``labels.json`` (``If-Match`` its ETag, ``If-None-Match`` for the first), retried on a conflict,
  so two machines moving labels at once both land.
* **Retention** (``common.labels.prune_versions``): a deleted version loses ``.complete`` first
  (invisible at once), then its files; its ``.claim`` stays.

Versions in the folder that did not come through the bucket (published before it was configured)
are left alone and not shared. Credentials and the endpoint come from boto3's own settings
(``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL`` for MinIO, Ceph, R2, ...).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import threading
import time
import uuid
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

CLAIM = ".claim"
COMPLETE = ".complete"
# A version folder pulled from (or published through) the bucket carries this: only those are
# removed when the bucket drops them.
MIRRORED = ".mirrored"
LABELS_KEY = "labels.json"
SYNC_INTERVAL_S = 1.0
# What a conditional write that lost its race answers (AWS, and servers following it).
_CONFLICT = ("PreconditionFailed", "ConditionalRequestConflict")
_URL = re.compile(r"^s3://(?P<bucket>[a-z0-9][a-z0-9.-]{1,61}[a-z0-9])(?:/(?P<prefix>[^\s]*?))?/?$")


class BucketError(OSError):
    """The bucket cannot be reached or written; the sentence names it."""


class LabelsConflict(RuntimeError):
    """Another machine changed the bucket's labels meanwhile: read them again and retry."""


def parse_url(url: str) -> tuple[str, str]:
    """(bucket, prefix without slashes) of ``s3://bucket/prefix``; raises ValueError."""
    match = _URL.match(url.strip())
    if match is None:
        raise ValueError(f"{url!r} is not an s3://bucket/prefix URL")
    return match["bucket"], (match["prefix"] or "").strip("/")


class BucketMirror:
    """One store folder (``root``) following the bucket at ``url``."""

    def __init__(self, url: str, root: Path, client: Any = None):
        self.url = url
        self.bucket, self.prefix = parse_url(url)
        self.root = Path(root)
        self._client = client
        self._lock = threading.Lock()
        self._synced_at = 0.0
        self._labels_etag: str | None = None
        self._warned: set[int] = set()
        self._absent: dict[int, float] = {}  # version -> when the bucket was last seen without it

    # -- the bucket -----------------------------------------------------------------------------

    @property
    def client(self) -> Any:
        if self._client is None:
            import boto3

            self._client = boto3.client("s3")
        return self._client

    def _key(self, *parts: object) -> str:
        return "/".join([self.prefix, *map(str, parts)] if self.prefix else list(map(str, parts)))

    def _call(self, what: str, fn, allow: tuple[str, ...] = (), **kwargs) -> Any:
        """``fn(Bucket=..., **kwargs)``; a ClientError whose code is in ``allow`` is raised as it is,
        any other failure as BucketError saying ``what`` could not be done."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(Bucket=self.bucket, **kwargs)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in allow:
                raise
            raise BucketError(f"cannot {what} in {self.url}: {exc}") from exc
        except BotoCoreError as exc:
            raise BucketError(f"cannot {what} in {self.url}: {exc}") from exc

    def _listing(self, version: int | None = None) -> dict[int, set[str]]:
        """{version: the names of its objects} in the bucket: every version's, or ``version``'s only
        (one listing either way, paged)."""
        from common.store import parse_version

        start = self._key(version, "") if version is not None else (f"{self.prefix}/" if self.prefix else "")
        found: dict[int, set[str]] = {}
        token = None
        while True:
            options = {"Prefix": start, **({"ContinuationToken": token} if token else {})}
            page = self._call("list the versions", self.client.list_objects_v2, **options)
            for item in page.get("Contents", []):
                head, _, name = item["Key"][len(self._key("")) :].partition("/")
                number = parse_version(head)
                if number is not None and name:
                    found.setdefault(number, set()).add(name)
            if not page.get("IsTruncated"):
                return found
            token = page["NextContinuationToken"]

    def versions(self) -> tuple[set[int], set[int]]:
        """(complete versions, every claimed number) in the bucket."""
        listing = self._listing()
        return {v for v, names in listing.items() if COMPLETE in names}, set(listing)

    def claim(self, version: int) -> bool:
        """Take ``version``'s number; False when another publisher has it."""
        from botocore.exceptions import ClientError

        try:
            self._call(
                "claim a version number",
                self.client.put_object,
                allow=_CONFLICT,
                Key=self._key(version, CLAIM),
                Body=b"",
                IfNoneMatch="*",
            )
        except ClientError:
            return False
        return True

    def upload(self, version: int, folder: Path) -> None:
        """The version's files, then ``.complete``: visible only once whole."""
        for path in sorted(folder.iterdir()):
            if path.is_file() and not path.name.startswith("."):
                self._call(
                    "upload a version",
                    self.client.upload_file,
                    Filename=str(path),
                    Key=self._key(version, path.name),
                )
        self._call("publish a version", self.client.put_object, Key=self._key(version, COMPLETE), Body=b"")

    def delete(self, version: int) -> None:
        """Hide ``version`` (``.complete`` first), then delete its files; its claim stays."""
        self._call("delete a version", self.client.delete_object, Key=self._key(version, COMPLETE))
        for name in self._listing(version).get(version, set()) - {CLAIM, COMPLETE}:
            self._call("delete a version", self.client.delete_object, Key=self._key(version, name))

    # -- the folder following the bucket ----------------------------------------------------------

    def sync(self, force: bool = False) -> None:
        """Bring the folder to the bucket's versions and labels (at most once a SYNC_INTERVAL_S
        unless ``force``). A bucket that cannot be reached is logged; the folder stays as it was."""
        with self._lock:
            if not force and time.monotonic() - self._synced_at < SYNC_INTERVAL_S:
                return
            self._synced_at = time.monotonic()
            try:
                self._sync()
            except (BucketError, OSError) as exc:
                log.warning(
                    "cannot follow the model store %s (%s); serving what %s has", self.url, exc, self.root
                )

    def fetch(self, version: int) -> None:
        """Pull ``version`` alone if the bucket has it whole and the folder does not (a version asked
        for by number before the next look); one listing of that version, at most once a
        SYNC_INTERVAL_S for a number the bucket does not have. Errors are logged, as ``sync``'s."""
        with self._lock:
            if (self.root / str(version)).is_dir() or time.monotonic() - self._absent.get(
                version, 0.0
            ) < SYNC_INTERVAL_S:
                return
            try:
                names = self._listing(version).get(version, set())
                if COMPLETE in names:
                    self._pull(version, names)
                else:
                    self._absent[version] = time.monotonic()
            except (BucketError, OSError) as exc:
                log.warning("cannot look for model version %s in %s (%s)", version, self.url, exc)

    def _sync(self) -> None:
        from common.store import parse_version

        listing = self._listing()
        self.root.mkdir(parents=True, exist_ok=True)
        local = {n: p for p in self.root.iterdir() if (n := parse_version(p.name)) is not None and p.is_dir()}
        complete = {v for v, names in listing.items() if COMPLETE in names}
        for version in sorted(complete - set(local)):
            self._pull(version, listing[version])
        for version, path in local.items():
            if version in complete:
                continue
            if (path / MIRRORED).exists():
                trash = self.root / f".trash-{version}-{uuid.uuid4().hex[:8]}"
                os.rename(path, trash)
                shutil.rmtree(trash, ignore_errors=True)
                log.info("model version %s is gone from %s: removed here too", version, self.url)
            elif version not in self._warned:
                self._warned.add(version)
                log.warning(
                    "model version %s in %s is not in %s: kept, but not shared", version, self.root, self.url
                )
        self.pull_labels()

    def _pull(self, version: int, names: set[str]) -> None:
        """Download the version's files (``names``) into a hidden folder and rename it into place."""
        from common.store import TEMP_PREFIX

        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f"{TEMP_PREFIX}pull-{version}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            for name in sorted(n for n in names if not n.startswith(".")):
                self._call(
                    "download a version",
                    self.client.download_file,
                    Key=self._key(version, name),
                    Filename=str(tmp / name),
                )
            (tmp / MIRRORED).touch()
            os.chmod(tmp, 0o755)
            os.rename(tmp, self.root / str(version))
            log.info("model version %s pulled from %s", version, self.url)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            if not (self.root / str(version)).is_dir():  # else another process pulled it first
                raise

    # -- labels -----------------------------------------------------------------------------------

    def pull_labels(self) -> None:
        """The bucket's labels.json into the folder, when it changed; remembers its ETag."""
        from botocore.exceptions import ClientError

        from common.store import LABELS_FILE, replace_json

        try:
            answer = self._call(
                "read the labels", self.client.get_object, allow=("NoSuchKey",), Key=self._key(LABELS_KEY)
            )
        except ClientError:  # no label was ever set
            self._labels_etag = None
            return
        if answer["ETag"] == self._labels_etag and (self.root / LABELS_FILE).exists():
            return
        replace_json(self.root / LABELS_FILE, json.loads(answer["Body"].read()))
        self._labels_etag = answer["ETag"]

    def push_labels(self, labels: dict[str, Any]) -> None:
        """Write ``labels`` to the bucket if it still holds what ``pull_labels`` read; raises
        LabelsConflict when another machine changed them meanwhile."""
        from botocore.exceptions import ClientError

        body = json.dumps(labels, indent=2, sort_keys=True, default=str).encode()
        condition = {"IfMatch": self._labels_etag} if self._labels_etag else {"IfNoneMatch": "*"}
        try:
            answer = self._call(
                "write the labels",
                self.client.put_object,
                allow=_CONFLICT,
                Key=self._key(LABELS_KEY),
                Body=body,
                **condition,
            )
        except ClientError as exc:
            raise LabelsConflict(str(exc)) from exc
        self._labels_etag = answer["ETag"]


_MIRRORS: dict[Path, BucketMirror] = {}
_MIRRORS_LOCK = threading.Lock()


def follow(url: str | None, root: Path, client: Any = None) -> BucketMirror | None:
    """Make the store folder ``root`` follow the bucket ``url`` in this process (None: a folder
    only); returns its mirror."""
    key = Path(root).resolve()
    with _MIRRORS_LOCK:
        if url is None:
            _MIRRORS.pop(key, None)
            return None
        mirror = _MIRRORS.get(key)
        if mirror is None or mirror.url != url or client is not None:
            mirror = _MIRRORS[key] = BucketMirror(url, key, client)
        return mirror


def mirror_of(root: Path) -> BucketMirror | None:
    """The bucket the store folder ``root`` follows in this process, if any."""
    if not _MIRRORS:
        return None
    return _MIRRORS.get(Path(root).resolve())
