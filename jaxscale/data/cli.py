"""``jaxscale data download NAME``, ``jaxscale data prepare NAME --from DIR`` and ``jaxscale data info [NAME]``
(each with ``[--data-dir DIR]``).

Wired by :mod:`jaxscale.cli`: ``add_arguments(subparser)`` then ``args.func(args)``. User errors
raise :class:`~jaxscale.errors.UsageError` (the main CLI prints one line and exits 2).
"""

from __future__ import annotations

import argparse

from jaxscale.data.datasets import NAMED_DATASETS, TFDS_DATASETS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``download`` and ``info`` sub-commands to the ``data`` parser."""
    sub = parser.add_subparsers(dest="data_command", required=True, metavar="{download,prepare,info}")
    dl = sub.add_parser("download", help="download and prepare a tfds dataset (ArrayRecord, no TensorFlow needed)",
                        description="Download MNIST / Fashion-MNIST / CIFAR-10 / CIFAR-100 and prepare them in a "
                                    "tfds data_dir. Needs internet; a dataset already prepared there is left as it is.")
    dl.add_argument("name", choices=NAMED_DATASETS, help="dataset to download")
    dl.add_argument("--data-dir", help="tfds data_dir (default: $TFDS_DATA_DIR, else ~/tensorflow_datasets)")
    dl.set_defaults(func=run)
    prep = sub.add_parser("prepare", help="prepare a tfds dataset from raw files already on disk (no network)",
                          description="Prepare a dataset in a tfds data_dir from the raw files tfds would download "
                                      "(e.g. copied onto an air-gapped cluster). Each file is verified against "
                                      "tfds' recorded size and sha256 first; the prepared copy is the one a "
                                      "download writes.")
    prep.add_argument("name", choices=TFDS_DATASETS, help="dataset to prepare")
    prep.add_argument("--from", dest="src", required=True, metavar="DIR",
                      help="folder holding the raw files under their original names")
    prep.add_argument("--data-dir", help="tfds data_dir (default: $TFDS_DATA_DIR, else ~/tensorflow_datasets)")
    prep.set_defaults(func=run)
    info = sub.add_parser("info", help="show which datasets are prepared where")
    info.add_argument("name", nargs="?", choices=NAMED_DATASETS, help="one dataset (default: all)")
    info.add_argument("--data-dir", help="tfds data_dir (default: $TFDS_DATA_DIR, else ~/tensorflow_datasets)")
    info.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Execute ``jaxscale data <download|info>``; returns the exit code."""
    if args.data_command in ("download", "prepare"):
        return _prepare(args.name, args.data_dir, getattr(args, "src", None))
    return _info(args.name, args.data_dir)


def _prepare(name: str, data_dir: str | None, src: str | None) -> int:
    if name not in TFDS_DATASETS:
        print(f"{name}: ships with scikit-learn; nothing to download")
        return 0
    from jaxscale.data import tfds_source

    path, origin = tfds_source.resolve_data_dir(data_dir)
    # stdout: stderr stays for the one-line error if anything is wrong
    print(f"Preparing {name} in {path} ({origin})" + (f" from {src}" if src else "") + " ...", flush=True)
    if src is None:
        where = tfds_source.download_dataset(name, data_dir)
    else:
        where = tfds_source.prepare_from_files(name, src, data_dir)
    status = tfds_source.dataset_status(name, data_dir)
    sizes = " / ".join(f"{n} {split}" for split, n in (status["splits"] or {}).items())
    print(f"{name}: ready in {where} ({sizes})")
    if origin != "given":
        print(f"Use it with: jaxscale run configs/<config>.toml  (data_dir from {origin})")
    else:
        print(f"Use it with: jaxscale run configs/<config>.toml --data-dir {path}")
    return 0


def _info(name: str | None, data_dir: str | None) -> int:
    from jaxscale.data import tfds_source

    path, origin = tfds_source.resolve_data_dir(data_dir)
    print(f"tfds data_dir: {path} ({origin})")
    for n in [name] if name else NAMED_DATASETS:
        if n not in TFDS_DATASETS:
            from jaxscale.data import digits

            print(f"  {n:<13} ready            bundled with scikit-learn: {digits.N_TRAIN} train / "
                  f"{digits.N_TEST} test, 8x8x1, 10 classes")
            continue
        st = tfds_source.dataset_status(n, data_dir)
        if st["state"] == "missing":
            print(f"  {n:<13} missing          get it: {tfds_source.download_command(n, path, origin)}")
            continue
        if st["state"] == "unreadable":
            print(f"  {n:<13} unreadable       {st['error']}")
            continue
        sizes = " / ".join(f"{k} {s}" for s, k in st["splits"].items())
        note = ("" if st["state"] == "ready"
                else "  (only TensorFlow reads this format: re-download into another --data-dir)")
        print(f"  {n:<13} {st['state']:<16} {st['file_format']}, {sizes}: {st['path']}{note}")
    return 0
