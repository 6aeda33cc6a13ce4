"""The embedded demo corpus: real photos that ship inside scikit-image, with alt-texts
taken from their real descriptions, plus a few broken rows that show the dead letter.

Written as an img2dataset-style parquet file, so the demo goes through the same reader
as a user's data.
"""
from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

# (file inside skimage/data, alt-text). Descriptions follow the skimage.data docstrings.
DEMO_PAIRS: tuple[tuple[str, str], ...] = (
    ("astronaut.png", "Astronaut Eileen Collins, the first woman to command a NASA Space Shuttle mission"),
    ("rocket.jpg", "Launch of the DSCOVR satellite on a SpaceX Falcon 9 rocket from Florida"),
    ("chelsea.png", "Chelsea the cat, a tabby cat sitting indoors"),
    ("coffee.png", "A cup of coffee on a saucer stock photo"),
    ("hubble_deep_field.jpg", "Hubble eXtreme Deep Field: thousands of galaxies seen by the Hubble Space Telescope"),
    ("horse.png", "Black and white silhouette of a horse"),
    ("camera.png", "A cameraman with a camera on a tripod, classic black and white photograph"),
    ("moon.png", "Surface of the Moon with craters"),
    ("brick.png", "Brick wall texture"),
    ("clock_motion.png", "Motion blurred clock on a wall"),
    ("coins.png", "Greek coins from Pompeii"),
    ("page.png", "Scanned page of a printed book"),
    ("motorcycle_left.png", "Rectified stereo photo of a motorcycle"),
    ("retina.jpg", "Human retina photographed through the eye"),
    ("ihc.png", "Immunohistochemical staining of tissue under a microscope"),
    ("text.png", "Gray-level text image used for corner detection"),
)
DEMO_URL = "https://scikit-image.org/docs/stable/api/skimage.data.html#{}"


def skimage_data_dir() -> Path:
    import skimage

    return Path(skimage.__file__).parent / "data"


def demo_rows() -> list[dict]:
    """The demo's rows: real pairs, then one duplicate, one truncated, one empty image and
    one alt-text that is only a file name (the last four are meant to be dropped)."""
    data = skimage_data_dir()
    rows = [{"jpg": (data / name).read_bytes(), "caption": text, "url": DEMO_URL.format(name.split(".")[0])}
            for name, text in DEMO_PAIRS]
    rocket = (data / "rocket.jpg").read_bytes()
    rows += [
        {"jpg": rows[2]["jpg"], "caption": "Cat photo", "url": "https://example.org/copy-of-chelsea.png"},
        {"jpg": rocket[: len(rocket) // 2], "caption": "Falcon 9 launch (file cut short)", "url": None},
        {"jpg": b"", "caption": "A dog on a beach", "url": None},
        {"jpg": (data / "grass.png").read_bytes(), "caption": "IMG_2034.JPG", "url": None},
    ]
    return rows


def write_demo_parquet(path: str | Path) -> Path:
    """Write the demo corpus as img2dataset-style parquet (jpg, caption, url). An existing
    file with the same content is left alone: its size and modification time are the
    input's version, and a rewrite would make a rerun annotate the demo again."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(demo_rows(), schema=pa.schema(
        [("jpg", pa.binary()), ("caption", pa.string()), ("url", pa.string())]))
    buffer = pa.BufferOutputStream()
    pq.write_table(table, buffer)
    data = buffer.getvalue().to_pybytes()
    if not path.exists() or path.read_bytes() != data:
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
    return path
