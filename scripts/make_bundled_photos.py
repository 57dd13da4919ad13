"""Make the bundled calibration photographs in ``calibration/photos/``.

Developer-only generator; nothing in resnet-edge runs it at run time. It
takes real photographs shipped inside the scikit-image wheel whose licence,
according to scikit-image's own docstrings (``skimage/data/_fetchers.py``), is
public domain or CC0, cuts five deterministic crops from each (the four
corners and the centre, each 60 % of the width and height, so no crop is
ever upscaled), resizes every crop so its shorter side is 160 px, and writes
them as JPEG (quality 90) or, for a few, PNG. Grayscale sources stay
grayscale. It also writes ``MANIFEST.json`` (file, sha256, source, crop box,
author, licence, the docstring sentence the licence was taken from) and
``README.md`` in the same folder.

Before writing anything it checks that each source file's sha256 matches
scikit-image's data registry and that the quoted licence sentence really is
in that function's docstring, so a scikit-image release that swaps an image
or changes its licence text makes the script stop instead of shipping it.

Run it from the repository root with a throwaway venv, never the project one::

    python3 -m venv /tmp/skvenv
    /tmp/skvenv/bin/pip install scikit-image==0.26.0 pillow==13.0.0 numpy
    /tmp/skvenv/bin/python scripts/make_bundled_photos.py

The JPEG/PNG bytes depend on Pillow's encoders, so a different Pillow may
produce different (equally valid) files and hashes; the manifest records the
versions that were used.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import skimage.data
from PIL import Image
from skimage.data._registry import registry

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "calibration" / "photos"
GENERATOR = "scripts/make_bundled_photos.py"
SKIMAGE_VERSION = version("scikit-image")
PILLOW_VERSION = version("pillow")

SHORT_SIDE = 160
CROP_FRACTION = 0.6
JPEG_QUALITY = 90
CROP_NAMES = ("top-left", "top-right", "bottom-left", "bottom-right", "centre")

# (source name, crop index) pairs written as PNG instead of JPEG, so both
# decoders are exercised: two grayscale and two colour images.
PNG_CROPS = frozenset({("camera", 4), ("clock", 4), ("chelsea", 4), ("coffee", 4)})


@dataclass(frozen=True)
class Source:
    """One scikit-image sample photograph and its licence as documented."""

    name: str  # name of the skimage.data function, used in output file names
    file: str  # file name inside skimage/data/
    author: str
    licence: str  # "public domain" or "CC0-1.0"
    statement: str  # sentence that must appear in the docstring (whitespace-normalised)
    url: str | None  # original URL given in the docstring, if any
    note: str | None = None


SOURCES: tuple[Source, ...] = (
    Source(
        name="astronaut",
        file="astronaut.png",
        author="NASA",
        licence="public domain",
        statement="No known copyright restrictions, released into the public domain.",
        url="https://flic.kr/p/r9qvLn",
        note="Photograph of astronaut Eileen Collins, from the NASA Great Images database.",
    ),
    Source(
        name="brick",
        file="brick.png",
        author="CC0Textures (texture Bricks25)",
        licence="CC0-1.0",
        statement="licensed under the Creative Commons CC0 License.",
        url="https://cc0textures.com/view.php?tex=Bricks25",
        note=("scikit-image applied a perspective transform, rotation, crop, rescale and grayscale conversion."),
    ),
    Source(
        name="camera",
        file="camera.png",
        author="Lav Varshney",
        licence="CC0-1.0",
        statement="No copyright restrictions. CC0 by the photographer (Lav Varshney).",
        url=None,
    ),
    Source(
        name="chelsea",
        file="chelsea.png",
        author="Stefan van der Walt",
        licence="CC0-1.0",
        statement="No copyright restrictions. CC0 by the photographer (Stefan van der Walt).",
        url=None,
    ),
    Source(
        name="clock",
        file="clock_motion.png",
        author="Stefan van der Walt",
        licence="public domain",
        statement="Released into the public domain by the photographer (Stefan van der Walt).",
        url=None,
        note="Deliberately motion-blurred photograph of a wall clock.",
    ),
    Source(
        name="coffee",
        file="coffee.png",
        author="Rachel Michetti",
        licence="CC0-1.0",
        statement="No copyright restrictions. CC0 by the photographer (Rachel Michetti).",
        url=None,
    ),
    Source(
        name="grass",
        file="grass.png",
        author="linolafett (DeviantArt)",
        licence="CC0-1.0",
        statement="and licensed under the Creative Commons CC0 License.",
        url="https://www.deviantart.com/linolafett/art/Grass-01-434853879",
        note="scikit-image cropped the top-left 512x512 region and converted it to grayscale.",
    ),
    Source(
        name="gravel",
        file="gravel.png",
        author="CC0Textures (texture Gravel04)",
        licence="CC0-1.0",
        statement="licensed under the Creative Commons CC0 License.",
        url="https://cc0textures.com/view.php?tex=Gravel04",
        note="scikit-image rescaled, cropped the top-left 512x512 region and converted it to grayscale.",
    ),
    Source(
        name="hubble_deep_field",
        file="hubble_deep_field.jpg",
        author="NASA",
        licence="public domain",
        statement="The image was captured by NASA and `may be freely used in the public domain",
        url="http://hubblesite.org/newscenter/archive/releases/2012/37/image/a/",
    ),
    Source(
        name="retina",
        file="retina.jpg",
        author="Mikael Häggström",
        licence="CC0-1.0",
        statement=(
            "This file is made available under the Creative Commons CC0 1.0 Universal Public Domain Dedication."
        ),
        url="https://commons.wikimedia.org/wiki/File:Fundus_photograph_of_normal_left_eye.jpg",
    ),
    Source(
        name="rocket",
        file="rocket.jpg",
        author="SpaceX",
        licence="public domain",
        statement="The image was captured by SpaceX and `released in the public domain",
        url="https://www.flickr.com/photos/spacexphotos/16511594820/in/photostream/",
    ),
)

# Sample images in the wheel that were considered and left out, with why.
EXCLUDED: dict[str, str] = {
    "coins.png": (
        "docstring says only 'No known copyright restrictions.' (Brooklyn Museum); "
        "that is not a public-domain dedication or CC0, so it is not used"
    ),
    "ihc.png": (
        "docstring says only 'No known copyright restrictions.' with no author or "
        "source; not treated as public domain, so it is not used"
    ),
    "cell.png": ("CC0, but a quantitative phase image computed from a digital hologram, not a photograph"),
    "microaneurysms.png": "CC0, but only 102x102 px: too small for 160 px crops without upscaling",
    "text.png": "public domain, but a synthetic corner-detection test pattern, not a photograph",
    "horse.png": "CC0, but a black-and-white clip-art silhouette, not a photograph",
    "moon.png, page.png, motorcycle_*.png, lfw_subset.npy": "no licence stated in the docstring",
    "eagle.png": "CC0, but not shipped in the wheel (downloaded on demand)",
}


def normalise_ws(text: str) -> str:
    """Collapse every run of whitespace to one space."""
    return re.sub(r"\s+", " ", text).strip()


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fetcher(source: Source) -> Callable[..., object]:
    fn: Callable[..., object] = getattr(skimage.data, source.name)
    return fn


def verify_source(source: Source, data_dir: Path) -> Path:
    """Check the licence sentence against the docstring and the file against the registry."""
    doc = normalise_ws(fetcher(source).__doc__ or "")
    if normalise_ws(source.statement) not in doc:
        raise SystemExit(
            f"licence statement for {source.name!r} not found in skimage.data.{source.name} "
            f"docstring; re-check its licence before regenerating"
        )
    if source.url is not None and source.url not in doc:
        raise SystemExit(f"URL for {source.name!r} not found in its docstring")
    path = data_dir / source.file
    expected = registry[f"data/{source.file}"]
    actual = sha256_of(path)
    if actual != expected:
        raise SystemExit(f"{path}: sha256 {actual} does not match skimage registry {expected}")
    return path


def crop_boxes(width: int, height: int) -> list[tuple[int, int, int, int]]:
    """Four corner crops and a centre crop, each CROP_FRACTION of each side."""
    cw = round(width * CROP_FRACTION)
    ch = round(height * CROP_FRACTION)
    cx = (width - cw) // 2
    cy = (height - ch) // 2
    return [
        (0, 0, cw, ch),
        (width - cw, 0, width, ch),
        (0, height - ch, cw, height),
        (width - cw, height - ch, width, height),
        (cx, cy, cx + cw, cy + ch),
    ]


def resize_short_side(image: Image.Image, short_side: int) -> Image.Image:
    width, height = image.size
    if min(width, height) < short_side:
        raise SystemExit(f"crop {image.size} is smaller than {short_side} px; would upscale")
    if width <= height:
        size = (short_side, round(height * short_side / width))
    else:
        size = (round(width * short_side / height), short_side)
    return image.resize(size, Image.Resampling.LANCZOS)


def load_source(path: Path) -> Image.Image:
    with Image.open(path) as image:
        image.load()
        if image.mode not in ("L", "RGB"):
            raise SystemExit(f"{path}: unexpected mode {image.mode}")
        return image.copy()


def save(image: Image.Image, path: Path) -> None:
    if path.suffix == ".jpg":
        image.save(path, format="JPEG", quality=JPEG_QUALITY)
    else:
        image.save(path, format="PNG", optimize=True)


def make_images(out_dir: Path) -> list[dict[str, object]]:
    data_dir = Path(skimage.data.__file__).resolve().parent
    package = f"scikit-image {SKIMAGE_VERSION}"
    source_paths = {source.name: verify_source(source, data_dir) for source in SOURCES}
    entries: list[dict[str, object]] = []
    for source in SOURCES:
        source_path = source_paths[source.name]
        image = load_source(source_path)
        for k, box in enumerate(crop_boxes(*image.size)):
            ext = ".png" if (source.name, k) in PNG_CROPS else ".jpg"
            out_path = out_dir / f"{source.name}_{k}{ext}"
            small = resize_short_side(image.crop(box), SHORT_SIDE)
            save(small, out_path)
            entry: dict[str, object] = {
                "file": out_path.name,
                "sha256": sha256_of(out_path),
                "width": small.size[0],
                "height": small.size[1],
                "mode": small.mode,
                "source_image": source.file,
                "source_sha256": sha256_of(source_path),
                "source_package": package,
                "crop": CROP_NAMES[k],
                "crop_box": list(box),
                "author": source.author,
                "licence": source.licence,
                "licence_text_from": f"skimage.data.{source.name} docstring",
                "licence_statement": normalise_ws(source.statement),
                "url": source.url,
            }
            if source.note is not None:
                entry["note"] = source.note
            entries.append(entry)
    entries.sort(key=lambda e: str(e["file"]))
    return entries


def readme_text(entries: list[dict[str, object]]) -> str:
    rows: dict[str, tuple[str, str, str]] = {}
    for e in entries:
        rows[str(e["source_image"])] = (str(e["author"]), str(e["licence"]), str(e["licence_text_from"]))
    table = "\n".join(
        f"| {src} | {author} | {licence} | {origin} |" for src, (author, licence, origin) in sorted(rows.items())
    )
    return f"""# Bundled calibration photographs

{len(entries)} small real photographs (shorter side {SHORT_SIDE} px; JPEG quality {JPEG_QUALITY},
a few PNG; grayscale sources kept grayscale) used as INT8 calibration and test
images. Each is a deterministic crop (four corners and the centre, {int(CROP_FRACTION * 100)} % of
each side) of a sample photograph shipped in the scikit-image {SKIMAGE_VERSION} wheel.

Only sources that scikit-image's own docstrings declare public domain or CC0
are used. `MANIFEST.json` lists, per file: sha256, source image, crop box,
author, licence, the docstring it was verified against and the exact licence
sentence, and the original URL where the docstring gives one.

| source | author | licence | licence text from |
| --- | --- | --- | --- |
{table}

Left out: coins and immunohistochemistry (their docstrings say only "No known
copyright restrictions", which is not a public-domain or CC0 statement), and
non-photographs or images without a stated licence.

Regenerate (developer only; never at run time), from the repository root:

    python3 -m venv /tmp/skvenv
    /tmp/skvenv/bin/pip install scikit-image=={SKIMAGE_VERSION} pillow=={PILLOW_VERSION} numpy
    /tmp/skvenv/bin/python {GENERATOR}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder")
    args = parser.parse_args()
    out_dir: Path = args.out
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in [*out_dir.glob("*.jpg"), *out_dir.glob("*.png")]:
        stale.unlink()

    entries = make_images(out_dir)
    manifest = {
        "generator": GENERATOR,
        "scikit_image_version": SKIMAGE_VERSION,
        "pillow_version": PILLOW_VERSION,
        "short_side": SHORT_SIDE,
        "crop_fraction": CROP_FRACTION,
        "jpeg_quality": JPEG_QUALITY,
        "excluded_sources": EXCLUDED,
        "images": entries,
    }
    (out_dir / "MANIFEST.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (out_dir / "README.md").write_text(readme_text(entries), encoding="utf-8")
    total = sum(p.stat().st_size for p in out_dir.iterdir())
    print(f"wrote {len(entries)} images to {out_dir} ({total} bytes in total)")


if __name__ == "__main__":
    main()
