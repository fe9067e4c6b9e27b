"""The media repository's pure rules: ids, file names, content types,
dispositions and the choice of thumbnail size."""

from __future__ import annotations

import pytest

from coffeechat_home.errors import MatrixError
from coffeechat_home.services.media.content import (
    check_filename,
    check_media_id,
    content_disposition,
    effective_content_type,
    filename_from_disposition,
    multipart_parts,
    normalize_content_type,
    sniff_image,
)
from coffeechat_home.services.media.repository import parse_mxc
from coffeechat_home.services.media.thumbnails import choose_size

PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"


@pytest.mark.parametrize("media_id", ["abc", "A-b_9", "x" * 255])
def test_good_media_ids(media_id: str) -> None:
    check_media_id(media_id)


@pytest.mark.parametrize("media_id", ["", "..", "a/b", "a.b", "a%2Fb", "é", "x" * 256, "a\x00"])
def test_bad_media_ids_name_nothing(media_id: str) -> None:
    with pytest.raises(MatrixError) as e:
        check_media_id(media_id)
    assert (e.value.status, e.value.errcode) == (404, "M_NOT_FOUND")


@pytest.mark.parametrize("name", ["a.txt", "War and Peace.pdf", "résumé.pdf", "..hidden", "x" * 255])
def test_good_filenames(name: str) -> None:
    assert check_filename(name) == name


@pytest.mark.parametrize("name", ["..", ".", "../etc/passwd", "a/b", "a\\b", "a\nb", "a\x00", "a\x7f", "é" * 128])
def test_bad_filenames(name: str) -> None:
    with pytest.raises(MatrixError) as e:
        check_filename(name)
    assert (e.value.status, e.value.errcode) == (400, "M_INVALID_PARAM")


@pytest.mark.parametrize("declared, expected", [
    (None, "application/octet-stream"),
    ("", "application/octet-stream"),
    ("Image/PNG", "image/png"),
    ("text/plain; charset=UTF-8", "text/plain; charset=utf-8"),
    ("text/plain; boundary=x", "text/plain"),
    ("application/json; charset=utf-8", "application/json"),
    ("nonsense", "application/octet-stream"),
    ("text/html\r\nX-Evil: 1", "application/octet-stream"),
])
def test_normalize_content_type(declared: str | None, expected: str) -> None:
    assert normalize_content_type(declared) == expected


def test_sniffing() -> None:
    assert sniff_image(PNG) == "image/png"
    assert sniff_image(b"\xff\xd8\xff\xe0") == "image/jpeg"
    assert sniff_image(b"GIF89a") == "image/gif"
    assert sniff_image(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "image/webp"
    assert sniff_image(b"\x00\x00\x00\x1cftypavif") == "image/avif"
    assert sniff_image(b"<svg") is None
    assert effective_content_type("application/octet-stream", PNG) == "image/png"
    assert effective_content_type("image/jpeg", PNG) == "image/png"
    assert effective_content_type("image/apng", PNG) == "image/apng"
    assert effective_content_type("image/png", b"<script>") == "application/octet-stream"
    assert effective_content_type("image/svg+xml", b"<svg>") == "image/svg+xml"  # kept, served as attachment
    assert effective_content_type("application/pdf", PNG) == "application/pdf"  # a declared non-image stays


def test_disposition() -> None:
    assert content_disposition("image/png", None) == "inline"
    assert content_disposition("text/plain; charset=utf-8", "a.txt") == 'inline; filename="a.txt"'
    assert content_disposition("text/html", "x.html") == 'attachment; filename="x.html"'
    assert content_disposition("image/svg+xml", None) == "attachment"
    assert content_disposition("application/pdf", 'say "hi".pdf') == 'attachment; filename="say \\"hi\\".pdf"'
    assert content_disposition("application/pdf", "ü.pdf") == "attachment; filename*=utf-8''%C3%BC.pdf"


@pytest.mark.parametrize("w, h, method, expected", [
    (32, 32, "crop", (32, 32, "crop")),
    (1, 1, "crop", (32, 32, "crop")),
    (33, 20, "crop", (96, 96, "crop")),
    (100, 100, "crop", (320, 240, "scale")),  # no crop that large: the smallest scale that covers it
    (96, 96, "scale", (320, 240, "scale")),
    (321, 100, "scale", (640, 480, "scale")),
    (5000, 5000, "scale", (800, 600, "scale")),  # the largest there is
])
def test_choose_size(w: int, h: int, method: str, expected: tuple[int, int, str]) -> None:
    s = choose_size(w, h, method)
    assert (s.width, s.height, s.method) == expected


def test_parse_mxc() -> None:
    assert parse_mxc("mxc://a.b/xyz") == ("a.b", "xyz")
    for bad in ("http://a/b", "mxc://a", "mxc:///b", "mxc://a/"):
        with pytest.raises(MatrixError):
            parse_mxc(bad)


@pytest.mark.parametrize(
    "header,name",
    [
        ('attachment; filename="report.pdf"', "report.pdf"),
        ("inline; filename=report.pdf", "report.pdf"),
        ('attachment; filename="say \\"hi\\".txt"', 'say "hi".txt'),
        ("attachment; filename*=utf-8''r%C3%A9sum%C3%A9.pdf", "résumé.pdf"),
        ("attachment; filename=\"fallback.pdf\"; filename*=UTF-8''r%C3%A9sum%C3%A9.pdf", "résumé.pdf"),
        # a remote server's unacceptable names are dropped, never used as paths
        ('attachment; filename="../../etc/passwd"', None),
        ('attachment; filename=".."', None),
        ("attachment; filename*=utf-8''a%2Fb", None),
        ("attachment; filename*=utf-8''%FF%FE", None),
        ("attachment", None),
        ("", None),
        (None, None),
    ],
)
def test_filename_from_disposition(header: str | None, name: str | None) -> None:
    assert filename_from_disposition(header) == name


def test_multipart_parts_frame_a_file() -> None:
    head, tail = multipart_parts("b0und", "image/png", "cat.png")
    assert head == (b'\r\n--b0und\r\nContent-Type: application/json\r\n\r\n{}\r\n--b0und\r\n'
                    b'Content-Type: image/png\r\nContent-Disposition: inline; filename="cat.png"\r\n\r\n')
    assert tail == b"\r\n--b0und--\r\n"
