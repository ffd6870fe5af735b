"""The browser tests' PNG reader (zlib only): it must read what a real encoder writes, every filter."""

from __future__ import annotations

import zlib

import pytest

from integration_tests.browser import decode_png


def _chunk(kind: bytes, body: bytes) -> bytes:
    return len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")


def _filter(kind: int, row: bytes, prev: bytes, bpp: int) -> bytes:
    """The encoder's side of PNG filtering, written independently of the decoder's."""
    out = bytearray()
    for i, x in enumerate(row):
        a = row[i - bpp] if i >= bpp else 0
        b = prev[i]
        c = prev[i - bpp] if i >= bpp else 0
        if kind == 0:
            pred = 0
        elif kind == 1:
            pred = a
        elif kind == 2:
            pred = b
        elif kind == 3:
            pred = (a + b) // 2
        else:
            p = a + b - c
            pred = min((abs(p - a), 0, a), (abs(p - b), 1, b), (abs(p - c), 2, c))[2]
        out.append((x - pred) & 0xFF)
    return bytes(out)


def encode_png(pixels: list[list[tuple[int, ...]]], colour_type: int) -> bytes:
    """An 8-bit PNG of `pixels`, each scanline with the next filter type in turn (0..4)."""
    height, width = len(pixels), len(pixels[0])
    bpp = len(pixels[0][0])
    raw, prev = bytearray(), bytes(width * bpp)
    for y, line in enumerate(pixels):
        row = bytes(v for px in line for v in px)
        raw += bytes([y % 5]) + _filter(y % 5, row, prev, bpp)
        prev = row
    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, colour_type, 0, 0, 0])
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(bytes(raw)))
        + _chunk(b"IEND", b"")
    )


def _picture(width: int, height: int, alpha: bool) -> list[list[tuple[int, ...]]]:
    """Bands of 7 colours with noise-like steps, so every filter sees real differences."""
    palette = [
        (255, 255, 255),
        (30, 142, 62),
        (192, 28, 40),
        (26, 95, 180),
        (178, 106, 0),
        (0, 0, 0),
        (9, 8, 7),
    ]
    rows = []
    for y in range(height):
        line = []
        for x in range(width):
            rgb = palette[(x * 3 + y * 5) // 4 % len(palette)]
            line.append((*rgb, (x * 37) % 256) if alpha else rgb)
        rows.append(line)
    return rows


@pytest.mark.parametrize(("colour_type", "alpha"), [(2, False), (6, True)])
def test_size_and_distinct_colours_survive_every_filter(colour_type: int, alpha: bool) -> None:
    picture = _picture(23, 17, alpha)
    image = decode_png(encode_png(picture, colour_type))
    assert (image.width, image.height) == (23, 17)
    expected = {px[:3] for line in picture for px in line}  # alpha does not make a colour
    assert image.colours == len(expected) == 7


def test_a_blank_image_has_one_colour() -> None:
    image = decode_png(encode_png([[(255, 255, 255)] * 8 for _ in range(5)], 2))
    assert (image.width, image.height, image.colours) == (8, 5, 1)


def test_damaged_or_foreign_data_is_refused() -> None:
    good = encode_png(_picture(4, 4, False), 2)
    with pytest.raises(ValueError, match="not a PNG"):
        decode_png(b"GIF89a" + good[6:])
    damaged = bytearray(good)
    damaged[40] ^= 0xFF  # inside the IDAT chunk
    with pytest.raises(ValueError, match="CRC"):
        decode_png(bytes(damaged))
