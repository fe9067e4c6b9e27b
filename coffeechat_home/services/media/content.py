"""Pure rules of the content repository: media id and file name grammar,
content types (what was declared, what the bytes are) and the headers that
stop a stored file from ever running as a page."""

from __future__ import annotations

import re
import urllib.parse

from ...errors import MatrixError, invalid_param, not_found

MEDIA_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,255}")
MAX_FILENAME_BYTES = 255
OCTET_STREAM = "application/octet-stream"

# The spec's "serving inline content" list (client-server API, content
# repository): anything else is served as an attachment.
INLINE_TYPES = frozenset({
    "text/css", "text/plain", "text/csv", "application/json", "application/ld+json",
    "image/jpeg", "image/gif", "image/png", "image/apng", "image/webp", "image/avif",
    "video/mp4", "video/webm", "video/ogg", "video/quicktime",
    "audio/mp4", "audio/webm", "audio/aac", "audio/mpeg", "audio/ogg", "audio/wave", "audio/wav",
    "audio/x-wav", "audio/x-pn-wav", "audio/flac", "audio/x-flac",
})

# Image types whose bytes we recognise; a body declared as one of them
# that is not such an image is served as application/octet-stream.
SNIFFED_IMAGE_TYPES = frozenset({"image/png", "image/apng", "image/jpeg", "image/gif", "image/webp", "image/avif"})

# Every stored file is served with these: no scripts, no plugins, no
# sniffing the type into something executable, usable cross-origin.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "sandbox; default-src 'none'; script-src 'none'; plugin-types application/pdf; "
        "style-src 'unsafe-inline'; media-src 'self'; object-src 'self';"
    ),
    "X-Content-Type-Options": "nosniff",
    "Cross-Origin-Resource-Policy": "cross-origin",
    "Referrer-Policy": "no-referrer",
}

_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_CONTENT_TYPE_RE = re.compile(rf"\s*({_TOKEN})/({_TOKEN})\s*(;.*)?")
_CHARSET_RE = re.compile(r";\s*charset\s*=\s*\"?([A-Za-z0-9._:-]{1,40})\"?", re.IGNORECASE)
HEADER_BYTES = 64  # enough of a body to sniff its type


def check_media_id(media_id: str) -> None:
    """Media ids are [A-Za-z0-9_-]+: anything else names no media here."""
    if not MEDIA_ID_RE.fullmatch(media_id):
        raise not_found("Invalid media id")


def check_filename(name: str) -> str:
    """A file name as given with an upload or a download: one path
    component, no control characters, at most 255 bytes (M_INVALID_PARAM)."""
    if name in (".", "..") or "/" in name or "\\" in name:
        raise invalid_param("The file name must not contain path separators or be '.' or '..'")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        raise invalid_param("The file name must not contain control characters")
    if len(name.encode("utf-8", "surrogatepass")) > MAX_FILENAME_BYTES:
        raise invalid_param(f"The file name is longer than {MAX_FILENAME_BYTES} bytes")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise invalid_param("The file name is not valid UTF-8") from None
    return name


def normalize_content_type(declared: str | None) -> str:
    """type/subtype in lower case, keeping only a charset for text/*;
    missing or malformed: application/octet-stream."""
    if not declared:
        return OCTET_STREAM
    m = _CONTENT_TYPE_RE.fullmatch(declared)
    if m is None:
        return OCTET_STREAM
    main = f"{m.group(1).lower()}/{m.group(2).lower()}"
    if main.startswith("text/") and m.group(3):
        cs = _CHARSET_RE.search(m.group(3))
        if cs:
            return f"{main}; charset={cs.group(1).lower()}"
    return main


def sniff_image(head: bytes) -> str | None:
    """The image type the first bytes of a body announce, if any."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if head[4:12] in (b"ftypavif", b"ftypavis"):
        return "image/avif"
    return None


def effective_content_type(declared: str | None, head: bytes) -> str:
    """The type to store: the declared one, corrected by the bytes for images
    (an image sent as octet-stream becomes its type; a body that claims to
    be an image it is not becomes octet-stream)."""
    ctype = normalize_content_type(declared)
    sniffed = sniff_image(head)
    if sniffed is not None and (ctype == OCTET_STREAM or ctype.startswith("image/")):
        if ctype == "image/apng" and sniffed == "image/png":
            return ctype
        return sniffed
    if sniffed is None and ctype in SNIFFED_IMAGE_TYPES:
        return OCTET_STREAM
    return ctype


def is_inline(content_type: str) -> bool:
    return content_type.split(";", 1)[0].strip() in INLINE_TYPES


def content_disposition(content_type: str, filename: str | None) -> str:
    kind = "inline" if is_inline(content_type) else "attachment"
    if not filename:
        return kind
    if all(0x20 <= ord(c) < 0x7F for c in filename):
        escaped = filename.replace("\\", "\\\\").replace('"', '\\"')
        return f'{kind}; filename="{escaped}"'
    return f"{kind}; filename*=utf-8''{urllib.parse.quote(filename, safe='')}"


def download_headers(content_type: str, filename: str | None) -> dict[str, str]:
    return {
        "Content-Type": content_type,
        "Content-Disposition": content_disposition(content_type, filename),
        "Cache-Control": "private, max-age=86400",
        **SECURITY_HEADERS,
    }


# -- federation answers: multipart/mixed with a JSON part and the file ----------

CRLF = b"\r\n"


def multipart_parts(boundary: str, content_type: str, filename: str | None) -> tuple[bytes, bytes]:
    """What goes before and after a file's bytes in a federation media
    answer (``multipart/mixed; boundary=...``): the metadata part (an empty
    JSON object, its only header ``Content-Type: application/json``, as
    Synapse's parser expects), then the file part's headers; and the
    closing delimiter."""
    b = boundary.encode("ascii")
    head = (
        CRLF + b"--" + b + CRLF + b"Content-Type: application/json" + CRLF + CRLF + b"{}"
        + CRLF + b"--" + b + CRLF
        + b"Content-Type: " + content_type.encode("ascii", "replace") + CRLF
        + b"Content-Disposition: " + content_disposition(content_type, filename).encode("ascii", "replace")
        + CRLF + CRLF
    )
    return head, CRLF + b"--" + b + b"--" + CRLF


_DISPOSITION_NAME_RE = re.compile(r"""filename\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^;\s]+))""", re.IGNORECASE)
_DISPOSITION_NAME_STAR_RE = re.compile(r"filename\*\s*=\s*([A-Za-z0-9_-]+)''([^;\s]+)", re.IGNORECASE)


def filename_from_disposition(header: str | None) -> str | None:
    """The file name a ``Content-Disposition`` header gives (``filename*``
    first), if it is an acceptable one (else None: a remote server's bad
    name is dropped, not an error)."""
    if not header:
        return None
    name: str | None = None
    star = _DISPOSITION_NAME_STAR_RE.search(header)
    if star and star.group(1).lower() in ("utf-8", "utf8"):
        try:
            name = urllib.parse.unquote(star.group(2), encoding="utf-8", errors="strict")
        except UnicodeDecodeError:
            name = None
    if name is None:
        plain = _DISPOSITION_NAME_RE.search(header)
        if plain:
            name = re.sub(r"\\(.)", r"\1", plain.group(1)) if plain.group(1) is not None else plain.group(2)
    if not name:
        return None
    try:
        return check_filename(name)
    except MatrixError:
        return None
