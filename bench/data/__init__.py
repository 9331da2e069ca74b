"""Data sets: where the images come from, how they are decoded, how the result is cached.

The package reads in the order an image travels: ``sources`` (a spec resolved to files and
labels), ``decode`` (Pillow, once), ``cache`` (decoded arrays on disk), ``splits``
(train/val/test), ``dataset`` (``load_dataset``, which runs them in that order).

``load_dataset(spec, image_size)`` returns a :class:`Dataset`: uint8 ``(N, H, W, 3)`` images
and int32 labels in ``train``, ``val`` and ``test`` splits. ``spec`` is one of

* ``digits``: the bundled default, scikit-learn's 1,797 8x8 digits (16 grey levels, scaled
  0..16 -> 0..255) upscaled to ``image_size``. No download.
* a directory or a ``.zip`` (read in place, never extracted), its layout detected:
  (a) ``train/`` + ``test/`` (and optionally ``val/`` or ``validation/``) split folders, each
  with one folder per class; (b) one folder per class; (c) flat Kaggle-style files whose name
  starts with the label (``cat.0.jpg``, ``dog.12.jpg``, ``great_dane_3.png``). Single
  wrapping folders (``archive.zip/cifar10/train/...``) are looked through. Class order is the
  sorted folder names, or a ``classes.txt`` (one name a line) at the root; next to a zip, a
  ``classes.txt`` that names exactly the zip's classes is used too.
* a folder (or zip) of images labelled by a table (``bench.data.csv_labels``): a
  ``labels.csv``/``train.csv``/``train_labels.csv``/``metadata.csv`` with an id and a label
  column found in it, ``labels=FILE`` (CLI ``--labels``), or the table itself as ``spec``;
  Hugging Face ``imagefolder`` split folders with ``metadata.csv``/``metadata.jsonl``.
* a folder of Hugging Face parquet shards or a ``save_to_disk`` folder, read with pyarrow
  (``bench.data.hf``). ``docs/data-layouts.md`` has the rules of every layout.
* ``tfds:NAME[:VERSION][:SPLIT...]``: a tensorflow-datasets data set prepared as ArrayRecord,
  read with ``tfds.data_source`` (no TensorFlow needed). 0 splits named: the builder's own
  train/validation/test; 1: that split is split here; 2: train, test; 3: train, val, test.

Splits: given split folders are kept. Where there is no test split, a stratified seeded
train/val/test split is made; where train and test are given but no val, val is carved from
train (stratified, seeded). ``Dataset.split_info`` records which, with counts per class.

Decoding (once, Pillow): JPEGs are first reduced in the DCT domain (``Image.draft``) to no
less than the target size, EXIF orientation is applied, greyscale/palette/CMYK/16-bit images
become RGB, transparency is composited onto white, then PIL bilinear resize (antialiased) to
exactly ``image_size``, aspect ratio not preserved. Unreadable images (empty, truncated, not
an image) are skipped and listed in ``Dataset.skipped`` with the reason, and one warning is
logged; non-image files (by extension), dotfiles and ``__MACOSX/`` entries are ignored.
Decoding runs in a thread pool, one thread per core (``workers``). Threads against processes,
measured on the 2-core machine while shared with other jobs (load average 8 to 12, so no run
had both cores to itself), decoding the 60,000 CIFAR-10 JPEGs: serially 21.9 to 25.4 s (9.2
to 9.4 s CPU), 2 threads 19.4 to 24.0 s (9.2 to 9.8 s CPU), 2 processes 26.6 to 29.8 s (10.9
to 11.1 s CPU: results pickled back, a zip directory parse per worker). On idle cores
processes would scale further for such tiny images (only ~19% of a 32x32 JPEG's time is in
Pillow's decoder, which releases the GIL); threads were chosen because they won here, gain
more as images grow (decoding and resizing release the GIL) and never fork a process that
is running JAX.

Cache: decoded arrays are cached under ``cache_dir`` (default ``$BENCH_CACHE_DIR/datasets``
or ``~/.cache/bench/datasets``), one folder per source and image size holding
``<group>_images.npy``, ``<group>_labels.npy`` and ``meta.json``. It is written into a
temporary folder beside it and renamed into place (``os.replace``), so a killed run leaves no
partial entry. The key is the source fingerprint (zip: member names, sizes and CRC-32s from
the central directory; folder: relative paths, sizes and mtimes), the image size and the
resize method. Splits are drawn after loading, gathered straight from memory-mapped arrays
(one copy), so every seed shares one entry.
Why not tensorflow-datasets' ArrayRecord, the intended format: measured on the 2-core
machine for 60,000 32x32x3 images, a GeneratorBasedBuilder writing ArrayRecord took 19.3 s
to write and 5.7 s to read back through ``data_source`` (over the 3 s budget, and records
come back in key-hash order); array_record's own reader with one raw record per image,
0.85 s to write and 0.82 s to read; ``.npy``, 0.04 s to write and 0.49 s to read (a memmap
opens at once). ``.npy`` needs no extra dependency, keeps file order and memory-maps.
Measured with the CIFAR-10 JPEG zip (60,000 images at 32x32) on the 2-core machine while
shared (load average 11 to 14): the first call (list, decode, write the cache) took 32.3 s
with 2 threads and 36.3 s with 1 (11.3 and 10.6 s CPU; 34 to 44 s in earlier runs at that
load); later calls load from the cache in 1.9 to 2.4 s (0.7 to 0.8 s CPU, ~0.35 s of it
listing the zip to fingerprint it).
"""

from .cache import default_cache_dir
from .dataset import Dataset, Split, load_dataset
from .decode import decode_image
from .sources import display_name, peek_image_size

__all__ = ["Dataset", "Split", "decode_image", "default_cache_dir", "display_name",
           "load_dataset", "peek_image_size"]
