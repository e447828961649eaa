"""POST/GET/DELETE /datasets in-process, with real zip and tar archives built here, hostile ones included.

The app, the job store and the training pipeline's reader are the real thing; only Celery is
replaced (``fake_celery`` from test_api) so a job can be submitted in-process.
"""

from __future__ import annotations

import gzip
import io
import json
import struct
import subprocess
import tarfile
import zipfile
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from common.settings import Settings
from models.config import TrainConfig
from models.data import scan_images
from service.archives import safe_path
from tests.apptest import TINY_JOB, assert_json_error, changed
from tests.photos import make_photo

# -- archives built on the fly -------------------------------------------------------------------


def image_bytes(width: int = 40, height: int = 32, fmt: str = "PNG", seed: int = 0) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(make_photo(width, height, seed)).save(buffer, fmt)
    return buffer.getvalue()


def zip_of(members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in members.items():
            archive.writestr(zipfile.ZipInfo(name), data, compress_type=compression)
    return buffer.getvalue()


def tar_of(members: list[tuple[tarfile.TarInfo, bytes | None]], compress: bool = False) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz" if compress else "w") as archive:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            archive.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def file_info(name: str) -> tarfile.TarInfo:
    return tarfile.TarInfo(name)


def link_info(name: str, target: str, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


def upload(client: TestClient, data: bytes, name: str | None = "flowers", how: str = "multipart", **kw):
    """POST /datasets as multipart (fields archive and name) or as a raw zip body with ?name=."""
    if how == "multipart":
        fields = {"name": name} if name is not None else {}
        return client.post(
            "/datasets", files={"archive": ("photos.zip", data, "application/zip")}, data=fields, **kw
        )
    params = {"name": name} if name is not None else {}
    headers = {"content-type": kw.pop("content_type", "application/zip"), **kw.pop("headers", {})}
    return client.post("/datasets", content=data, params=params, headers=headers, **kw)


def leftovers(settings: Settings) -> list[str]:
    """Everything in the datasets folder but the fixture's ``tiny`` dataset."""
    return sorted(p.name for p in settings.datasets_dir.iterdir() if p.name != "tiny")


def declared_size_lies(data: bytes, member: str, declared: int) -> bytes:
    """The zip with ``member``'s uncompressed size rewritten to ``declared`` in both of its headers."""
    patched = bytearray(data)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        info = archive.getinfo(member)
    struct.pack_into("<I", patched, info.header_offset + 22, declared)  # local file header
    central = patched.find(b"PK\x01\x02")
    while central >= 0:
        name_length = struct.unpack_from("<H", patched, central + 28)[0]
        if patched[central + 46 : central + 46 + name_length] == member.encode():
            struct.pack_into("<I", patched, central + 24, declared)
            return bytes(patched)
        central = patched.find(b"PK\x01\x02", central + 4)
    raise AssertionError(f"{member} not in the central directory")


# -- names and paths -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("a.png", "a.png"),
        ("sub/dir/b.jpg", "sub/dir/b.jpg"),
        ("folder/", "folder"),
        ("../evil.png", None),
        ("a/../../evil.png", None),
        ("/etc/evil.png", None),
        ("..\\evil.png", None),
        ("\\server\\share.png", None),
        ("C:/windows.png", None),
        ("a//b.png", None),
        ("./a.png", "a.png"),
        ("./sub/./b.png", "sub/b.png"),
        ("./", None),
        ("./../evil.png", None),
        ("bell\x07.png", None),
        ("x" * 256 + ".png", None),
    ],
)
def test_safe_path_keeps_relative_paths_and_refuses_escapes(name, expected):
    assert safe_path(name) == expected


# -- uploads that work ---------------------------------------------------------------------------


def test_uploading_a_zip_creates_a_dataset_the_training_pipeline_reads(client, settings):
    good = {
        "a.png": image_bytes(seed=1),
        "sub/b.jpg": image_bytes(48, 36, "JPEG", 2),
        "c.webp": image_bytes(fmt="WEBP"),
    }
    archive = zip_of(
        {
            **good,
            "notes.txt": b"not a photo",
            "corrupt.png": image_bytes()[:60],
            "inner.zip": zip_of({"x.png": image_bytes()}),
            "__MACOSX/._a.png": b"resource fork",
            "tiny.png": image_bytes(4, 4),
        }
    )
    response = upload(client, archive)
    assert response.status_code == 201, response.text
    assert response.headers["location"] == "/datasets/flowers"
    body = response.json()
    assert body["name"] == "flowers" and body["images"] == 3 and body["source"] == "upload"
    assert body["skipped_reasons"] == {
        "not an image file type": 1,
        "unreadable image": 1,
        "nested archive": 1,
        "hidden or system file": 1,
        "too small": 1,
    }
    assert body["skipped"] == 5
    assert body["pixels"] == 40 * 32 + 48 * 36 + 40 * 32
    folder = settings.datasets_dir / "flowers"
    assert body["bytes"] == sum((folder / name).stat().st_size for name in good)
    assert (folder / "a.png").read_bytes() == good["a.png"]  # subfolders kept, bytes untouched
    scan = scan_images(folder, 16)
    assert sorted(p.relative_to(folder).as_posix() for p in scan.files) == sorted(good)
    assert not scan.skipped  # training sees the photographs, and no dataset.json as a "skipped file"
    assert leftovers(settings) == ["flowers"]  # no staging folder left

    assert client.get("/datasets/flowers").json() == {**body, "jobs": []}
    listed = {d["name"]: d for d in client.get("/datasets").json()}
    assert listed["flowers"] == {**body, "jobs": []}


def test_a_folder_placed_by_hand_is_listed_by_scanning_it(client):
    [tiny] = [d for d in client.get("/datasets").json() if d["name"] == "tiny"]
    assert tiny["source"] == "folder" and tiny["images"] == 6 and tiny["pixels"] is None
    assert client.get("/datasets/tiny").json()["images"] == 6


@pytest.mark.parametrize(
    "content_type", ["application/gzip", "application/x-tar", "application/octet-stream"]
)
def test_uploading_a_raw_tar_gz_body_with_the_name_in_the_query_works(client, content_type):
    archive = tar_of(
        [(file_info("p/one.png"), image_bytes(seed=3)), (file_info("two.jpg"), image_bytes(fmt="JPEG"))], True
    )
    response = upload(client, archive, name="raw-set_1.0", how="raw", content_type=content_type)
    assert response.status_code == 201, response.text
    assert response.json()["images"] == 2 and response.json()["skipped"] == 0


def tar_made_the_usual_way(tmp_path, files: dict[str, bytes]) -> bytes:
    """``tar -czf photos.tar.gz -C folder .``: every member named ``./...``, a ``./`` entry first."""
    folder = tmp_path / "to-pack"
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    subprocess.run(["tar", "-czf", str(tmp_path / "photos.tar.gz"), "-C", str(folder), "."], check=True)
    return (tmp_path / "photos.tar.gz").read_bytes()


def test_a_tar_made_with_tar_czf_dot_is_imported(client, tmp_path):
    photos = {"one.png": image_bytes(seed=3), "sub/two.jpg": image_bytes(fmt="JPEG")}
    archive = tar_made_the_usual_way(tmp_path, photos)
    response = upload(client, archive, name="dotted", how="raw", content_type="application/gzip")
    assert response.status_code == 201, response.text
    assert response.json()["images"] == 2 and response.json()["skipped"] == 0


def test_a_job_naming_an_uploaded_dataset_is_accepted(client, fake_celery, settings):
    name = "my.photos-2"
    TrainConfig(**{**TINY_JOB, "dataset": name})  # the dataset name rules agree with the job's
    assert (
        upload(client, zip_of({f"p{i}.png": image_bytes(seed=i) for i in range(3)}), name=name).status_code
        == 201
    )
    submitted = client.post("/jobs", json={**TINY_JOB, "dataset": name})
    assert submitted.status_code == 202, submitted.text
    assert fake_celery.calls[0]["args"][1]["dataset"] == name
    assert client.get(f"/datasets/{name}").json()["jobs"] == [submitted.json()["id"]]


# -- hostile archives ----------------------------------------------------------------------------


def test_zip_slip_and_absolute_paths_are_skipped_and_never_written(client, settings, tmp_path):
    archive = zip_of(
        {
            "../evil.png": image_bytes(),
            "a/../../evil2.png": image_bytes(),
            "/tmp/abs.png": image_bytes(),
            "..\\win.png": image_bytes(),
            "C:/drive.png": image_bytes(),
            "ok.png": image_bytes(),
        }
    )
    response = upload(client, archive)
    assert response.status_code == 201, response.text
    assert response.json()["images"] == 1 and response.json()["skipped_reasons"] == {"unsafe path": 5}
    written = sorted(p.name for p in tmp_path.rglob("*.png"))
    assert "evil.png" not in written and "evil2.png" not in written and "abs.png" not in written
    assert [p.name for p in (settings.datasets_dir / "flowers").rglob("*.png")] == ["ok.png"]


def test_tar_links_and_devices_are_skipped_never_created(client, settings):
    device = tarfile.TarInfo("dev.png")
    device.type = tarfile.CHRTYPE
    device.devmajor, device.devminor = 1, 3
    fifo = tarfile.TarInfo("pipe.png")
    fifo.type = tarfile.FIFOTYPE
    archive = tar_of(
        [
            (file_info("good.png"), image_bytes()),
            (link_info("passwd.png", "/etc/passwd", tarfile.SYMTYPE), None),
            (link_info("up.png", "../../outside.png", tarfile.SYMTYPE), None),
            (link_info("hard.png", "good.png", tarfile.LNKTYPE), None),
            (link_info("hard-out.png", "/etc/shadow", tarfile.LNKTYPE), None),
            (device, None),
            (fifo, None),
        ]
    )
    response = upload(client, archive, how="raw", content_type="application/x-tar")
    assert response.status_code == 201, response.text
    assert response.json()["skipped_reasons"] == {"link": 4, "not a regular file": 2}
    folder = settings.datasets_dir / "flowers"
    assert [p.name for p in folder.iterdir() if p.suffix == ".png"] == ["good.png"]
    assert not any(p.is_symlink() for p in folder.rglob("*"))


def test_a_zip_bomb_is_refused_with_413_and_leaves_nothing(settings, start):
    client = start(changed(settings, max_unpacked_bytes=1_000_000))
    bomb = zip_of({"ok.png": image_bytes(), "bomb.png": b"\0" * 20_000_000})
    assert len(bomb) < 100_000  # small compressed, huge unpacked
    response = upload(client, bomb)
    assert_json_error(response, 413, "COLORIZER_MAX_UNPACKED_BYTES")
    assert leftovers(settings) == []


def test_a_tar_gz_bomb_is_refused_even_in_members_that_would_be_skipped(settings, start):
    client = start(changed(settings, max_unpacked_bytes=1_000_000))
    bomb = tar_of(
        [(file_info("ok.png"), image_bytes()), (file_info("padding.bin"), b"\0" * 20_000_000)], True
    )
    assert len(bomb) < 100_000
    assert_json_error(upload(client, bomb, how="raw", content_type="application/gzip"), 413, "unpacks")
    assert leftovers(settings) == []


def test_a_zip_member_whose_declared_size_lies_is_not_trusted(settings, start):
    client = start(changed(settings, max_unpacked_bytes=1_000_000))
    honest = zip_of({"ok.png": image_bytes(), "liar.png": b"\0" * 5_000_000})
    # Declared 100 bytes, 5 MB inside: reading stops at the declared size and the CRC fails.
    response = upload(client, declared_size_lies(honest, "liar.png", 100))
    assert response.status_code == 201, response.text
    assert response.json()["images"] == 1 and response.json()["skipped_reasons"] == {"unreadable entry": 1}
    # Declared 4 GB, a small PNG inside: what is read counts, not what is declared.
    big_claim = declared_size_lies(zip_of({"real.png": image_bytes()}), "real.png", 4_000_000_000)
    response = upload(client, big_claim, name="second")
    assert response.status_code == 201, response.text
    assert response.json()["images"] == 1
    assert leftovers(settings) == ["flowers", "second"]


@pytest.mark.parametrize("kind", ["zip", "tar"])
def test_an_archive_with_too_many_entries_is_413(settings, start, kind):
    client = start(changed(settings, max_archive_entries=5))
    names = [f"f{i}.txt" for i in range(6)]
    archive = (
        zip_of({n: b"x" for n in names}) if kind == "zip" else tar_of([(file_info(n), b"x") for n in names])
    )
    assert_json_error(upload(client, archive), 413, "COLORIZER_MAX_ARCHIVE_ENTRIES")
    assert leftovers(settings) == []


def test_an_oversized_tar_extended_header_is_refused_before_it_is_read(client, settings):
    info = file_info("p" * 300 + ".png")  # a long name: GNU long-name header
    data = image_bytes()
    huge_header = tar_of([(info, data)])
    # Inflate the long-name header's declared size to 100 MB: tarfile would read it whole.
    offset = 124  # size field of the first (the ././@LongLink) header
    patched = bytearray(huge_header)
    patched[offset : offset + 12] = b"%011o\0" % (100 * 1024 * 1024)
    checksum = sum(patched[:148]) + 8 * 32 + sum(patched[156:512])
    patched[148:156] = b"%06o\0 " % checksum
    response = upload(client, gzip.compress(bytes(patched)), how="raw", content_type="application/gzip")
    assert_json_error(response, 400, "extended tar header")
    assert leftovers(settings) == []


# -- bad requests --------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["content-length", "chunked"])
def test_an_upload_over_max_dataset_bytes_is_413(settings, start, how):
    client = start(changed(settings, max_dataset_bytes=50_000))
    archive = zip_of({f"p{i}.png": image_bytes(80, 80, seed=i) for i in range(8)}, zipfile.ZIP_STORED)
    assert len(archive) > 50_000
    if how == "content-length":
        response = upload(client, archive, how="raw")
    else:

        def body() -> Iterator[bytes]:
            for start_at in range(0, len(archive), 8192):
                yield archive[start_at : start_at + 8192]

        response = client.post(
            "/datasets", params={"name": "big"}, content=body(), headers={"content-type": "application/zip"}
        )
        assert "content-length" not in response.request.headers
    assert_json_error(response, 413, "COLORIZER_MAX_DATASET_BYTES")
    assert leftovers(settings) == []


def test_a_duplicate_name_is_409(client, settings):
    archive = zip_of({"a.png": image_bytes()})
    assert upload(client, archive).status_code == 201
    assert_json_error(upload(client, archive), 409, "already exists")  # name in the form: after the upload
    assert_json_error(upload(client, archive, how="raw"), 409, "already exists")  # in the query: before
    assert_json_error(upload(client, archive, name="tiny", how="raw"), 409, "tiny")  # a hand-placed folder
    assert leftovers(settings) == ["flowers"]


@pytest.mark.parametrize("name", ["../up", "has space", ".hidden", "a" * 65, "x..y", "-dash"])
@pytest.mark.parametrize("how", ["multipart", "raw"])
def test_a_bad_name_is_422_naming_the_field(client, settings, name, how):
    body = assert_json_error(
        upload(client, zip_of({"a.png": image_bytes()}), name=name, how=how), 422, "name"
    )
    assert body["errors"][0]["loc"][-1] == "name"
    assert leftovers(settings) == []


def test_a_name_with_a_trailing_newline_is_422_and_writes_nothing(client, settings):
    # a regular expression's $ also matches before a final newline: the name must match whole
    body = assert_json_error(upload(client, zip_of({"a.png": image_bytes()}), name="ok\n", how="raw"), 422)
    assert body["errors"][0]["loc"][-1] == "name"
    assert leftovers(settings) == []


@pytest.mark.parametrize("how", ["multipart", "raw"])
def test_a_missing_name_is_422(client, how):
    body = assert_json_error(
        upload(client, zip_of({"a.png": image_bytes()}), name=None, how=how), 422, "name"
    )
    assert body["errors"][0]["loc"][-1] == "name"


def test_multipart_without_the_archive_field_is_422_naming_archive(client):
    response = client.post(
        "/datasets", files={"photos": ("a.zip", b"PK", "application/zip")}, data={"name": "x"}
    )
    body = assert_json_error(response, 422, "archive")
    assert body["errors"][0]["loc"] == ["body", "archive"]


def test_an_archive_with_no_usable_image_is_422_and_leaves_nothing(client, settings, monkeypatch):
    from PIL import EpsImagePlugin

    opened = []  # PostScript named as a photograph is never handed to Pillow's EPS reader (Ghostscript)
    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open", lambda self: opened.append(self))
    postscript = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 48\nshowpage\n"
    members = {"readme.txt": b"hello", "broken.png": b"\x89PNG not really", "photo.jpg": postscript}
    response = upload(client, zip_of(members))
    assert_json_error(response, 422, "no usable image", "not an image file type", "unreadable image")
    assert leftovers(settings) == [] and opened == []


@pytest.mark.parametrize(
    ("data", "content_type", "status"),
    [
        (b"just some text, not an archive" * 40, "application/zip", 415),
        (image_bytes(), "application/zip", 415),
        (zip_of({"a.png": image_bytes()}), "text/plain", 415),
        (gzip.compress(b"not a tar inside" * 100), "application/gzip", 400),
        (zip_of({"a.png": image_bytes()})[:-30], "application/zip", 400),
        (b"", "application/zip", 400),
    ],
    ids=["text", "image", "wrong-content-type", "gzip-of-text", "truncated-zip", "empty"],
)
def test_a_body_that_is_not_a_usable_archive_is_a_4xx_with_a_sentence(
    client, settings, data, content_type, status
):
    assert_json_error(upload(client, data, how="raw", content_type=content_type), status)
    assert leftovers(settings) == []


# -- delete ---------------------------------------------------------------------------------------


def test_delete_is_refused_while_a_job_is_queued_and_works_once_it_is_cancelled(
    client, fake_celery, settings
):
    assert upload(client, zip_of({"a.png": image_bytes()})).status_code == 201
    job = client.post("/jobs", json={**TINY_JOB, "dataset": "flowers"}).json()
    refused = assert_json_error(client.delete("/datasets/flowers"), 409, job["id"])
    assert refused["jobs"] == [job["id"]]
    assert (settings.datasets_dir / "flowers" / "a.png").is_file()

    assert client.post(f"/jobs/{job['id']}/cancel").json()["state"] == "cancelled"
    deleted = client.delete("/datasets/flowers")
    assert deleted.status_code == 204 and deleted.content == b""
    assert not (settings.datasets_dir / "flowers").exists() and leftovers(settings) == []
    assert_json_error(client.get("/datasets/flowers"), 404, "does not exist")
    assert_json_error(client.delete("/datasets/flowers"), 404, "does not exist")


def test_deleting_a_dataset_that_links_elsewhere_removes_only_the_link(client, settings, tmp_path):
    inside = settings.datasets_dir / "tiny"
    (settings.datasets_dir / "alias").symlink_to(inside)
    assert client.delete("/datasets/alias").status_code == 204
    assert inside.is_dir() and len(list(inside.iterdir())) == 6


def test_a_link_out_of_the_datasets_folder_is_not_a_dataset(client, settings, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (settings.datasets_dir / "sneaky").symlink_to(outside)
    assert "sneaky" not in [d["name"] for d in client.get("/datasets").json()]
    assert_json_error(client.delete("/datasets/sneaky"), 404)
    assert outside.is_dir()


# -- API key -------------------------------------------------------------------------------------


def test_dataset_routes_need_the_api_key_when_one_is_set(keyed_client):
    archive = zip_of({"a.png": image_bytes()})
    assert_json_error(keyed_client.get("/datasets"), 401, "X-API-Key")
    assert_json_error(keyed_client.get("/datasets/tiny"), 401)
    assert_json_error(keyed_client.delete("/datasets/tiny"), 401)
    assert_json_error(upload(keyed_client, archive), 401)
    key = {"X-API-Key": "s3cret-key"}
    assert upload(keyed_client, archive, headers=key).status_code == 201
    assert [d["name"] for d in keyed_client.get("/datasets", headers=key).json()] == ["flowers", "tiny"]


def test_the_manifest_is_written_beside_the_images(client, settings):
    upload(client, zip_of({"a.png": image_bytes()}))
    manifest = json.loads((settings.datasets_dir / "flowers" / "dataset.json").read_text())
    assert manifest["images"] == 1 and manifest["archive"]["filename"] == "photos.zip"
