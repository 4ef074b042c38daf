"""Writes the committed seed inputs of the two fuzz targets (needs Pillow; run once).

    python fuzz/seeds/make_seeds.py

decode/: tiny images in every format and colour type the service decodes (a few hundred
bytes each, so mutations stay cheap), plus an EXIF-rotated JPEG, an animated GIF and the
CMYK JPEG fixture. request/: `<content-type>\\n<query>\\n<multipart body>` inputs (see
fuzz_targets/request.rs) with an image part and option fields, good and bad.
"""
import io
import pathlib

from PIL import Image

here = pathlib.Path(__file__).resolve().parent
root = here.parent.parent
dec = here / "decode"
req = here / "request"
dec.mkdir(exist_ok=True)
req.mkdir(exist_ok=True)


def pattern(mode, w, h):
    im = Image.new("RGB", (w, h))
    im.putdata([((x * 37) % 256, (y * 53) % 256, ((x + y) * 11) % 256) for y in range(h) for x in range(w)])
    return im.convert(mode)


def save(name, im, fmt, **kw):
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    (dec / name).write_bytes(buf.getvalue())
    return buf.getvalue()


png = save("rgb.png", pattern("RGB", 8, 6), "PNG")
save("rgba.png", pattern("RGBA", 5, 7), "PNG")
save("grey.png", pattern("L", 6, 6), "PNG")
save("grey_alpha.png", pattern("LA", 4, 9), "PNG")
save("palette.png", pattern("RGB", 7, 5).convert("P"), "PNG")
save("grey16.png", pattern("L", 6, 4).convert("I;16"), "PNG")
save("one_pixel.png", pattern("RGB", 1, 1), "PNG")
jpeg = save("rgb.jpg", pattern("RGB", 16, 8), "JPEG", quality=50)
save("grey.jpg", pattern("L", 8, 8), "JPEG", quality=50)
save("progressive.jpg", pattern("RGB", 9, 17), "JPEG", quality=50, progressive=True)
exif = Image.Exif()
exif[0x0112] = 6  # orientation: rotate 90
save("exif_rot90.jpg", pattern("RGB", 12, 4), "JPEG", quality=50, exif=exif.tobytes())
save("rgb.webp", pattern("RGB", 8, 8), "WEBP", quality=50)
save("lossless.webp", pattern("RGBA", 6, 5), "WEBP", lossless=True)
save("rgb.gif", pattern("RGB", 8, 8), "GIF")
frames = [pattern("RGB", 6, 6), pattern("RGB", 6, 6).rotate(90)]
save("animated.gif", frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
save("rgb.bmp", pattern("RGB", 5, 3), "BMP")
save("rgb.tiff", pattern("RGB", 4, 4), "TIFF")
save("deflate.tiff", pattern("RGB", 4, 4), "TIFF", compression="tiff_deflate")
(dec / "cmyk.jpg").write_bytes((root / "tests/fixtures/cmyk.jpg").read_bytes())


def request(name, content_type, query, parts):
    body = b""
    for part_name, filename, data in parts:
        disp = f'Content-Disposition: form-data; name="{part_name}"'
        if filename:
            disp += f'; filename="{filename}"\r\nContent-Type: application/octet-stream'
        body += b"--B\r\n" + disp.encode() + b"\r\n\r\n" + data + b"\r\n"
    body += b"--B--\r\n"
    (req / name).write_bytes(content_type + b"\n" + query + b"\n" + body)


ct = b"multipart/form-data; boundary=B"
request("png", ct, b"", [("image", "a.png", png)])
request("jpeg_query", ct, b"top_k=3&target=5&alpha=0.25&overlay=false&resize=crop", [("image", "a.jpg", jpeg)])
request("form_fields", ct, b"", [("target", None, b"281"), ("top_k", None, b"10"), ("alpha", None, b"1"), ("overlay", None, b"true"), ("resize", None, b"stretch"), ("image", "a.png", png)])
request("bad_option", ct, b"top_k=0", [("image", "a.png", png)])
request("unknown_option", ct, b"colour=red", [("image", "a.png", png)])
request("twice", ct, b"target=1", [("target", None, b"2"), ("image", "a.png", png)])
request("no_image", ct, b"", [("target", None, b"1")])
request("two_images", ct, b"", [("image", "a.png", png), ("image", "b.png", png)])
request("other_file", ct, b"", [("picture", "a.png", png)])
(req / "no_boundary").write_bytes(b"multipart/form-data\n\n--B\r\n")
(req / "not_multipart").write_bytes(b"application/json\n\n{}")
(req / "empty").write_bytes(b"")
