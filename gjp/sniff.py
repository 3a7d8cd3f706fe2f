"""Tell input files apart by their content, not their names."""

from __future__ import annotations

from pathlib import Path

from gjp.errors import GjpError

#: pyosmium format strings for each OSM flavour we read.
OSM_FORMATS = {"osm-pbf": "pbf", "osm-xml": "osm", "osm-bz2": "osm.bz2", "osm-gz": "osm.gz"}


def sniff(path: str | Path) -> str | None:
    """``"osm-pbf"``, ``"osm-xml"``, ``"osm-bz2"``, ``"osm-gz"``, ``"tiff"``, ``"png"``,
    ``"webp"``, ``"jpeg"`` or ``None``."""
    path = Path(path)
    if not path.exists():
        raise GjpError(f"{path}: no such file")
    if path.is_dir():
        raise GjpError(f"{path}: is a directory, expected a file")
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError as err:
        raise GjpError(f"{path}: cannot read ({err.strerror or err})") from err
    if head.startswith(b"BZh"):
        return "osm-bz2"
    if head.startswith(b"\x1f\x8b"):
        return "osm-gz"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    # A PBF starts with a 4-byte big-endian BlobHeader length, then the header's type string.
    if len(head) >= 8 and int.from_bytes(head[:4], "big") < 64 * 1024 and b"OSMHeader" in head[4:32]:
        return "osm-pbf"
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if text.startswith(b"<?xml") or text.startswith(b"<osm"):
        return "osm-xml"
    return None


IMAGE_KINDS = ("png", "webp", "jpeg")
