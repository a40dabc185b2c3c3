"""Inputs of the analysis: per-seed learning curves and seed-averaged curves, and their loaders.

Two kinds of input become one of two in-memory objects:

* a run directory (or its ``curves.npz``) written by training or by the perceptron
  → :class:`SeedCurves` (every run's raw trajectory, one norm);
* an aggregated reference file of the official analysis (``shared/reference/curves/*.npz``)
  → :class:`Aggregated` directly (it is already seed-averaged on a norm grid).

``jaxscale.analysis.aggregate`` turns :class:`SeedCurves` into :class:`Aggregated`, so every fit
downstream sees one object. All norms are kept as **natural logs**: ViT norms reach 1e80 and the
run files store logs anyway, so nothing is ever exponentiated before it is needed for display.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from jaxscale.errors import UsageError

CURVES_FILE = "curves.npz"
DEFAULT_NORM = "spectral_complexity"
REFERENCE_KEYS = ("mean_val_error_arr", "log_x_grid")


@dataclasses.dataclass(frozen=True)
class SeedCurves:
    """Raw learning curves of every (P, seed) run for one norm.

    Attributes:
      P: int64 [nP], training-set sizes (samples).
      seeds: int64 [nS], seed values.
      log_norm: float64 [nP, nS, nT], natural log of the norm at each logged epoch; NaN = missing.
      test_error: float64 [nP, nS, nT], test error as a fraction in [0, 1]; NaN = missing/diverged.
      norm_name: name of the norm without the ``log_`` prefix (e.g. ``spectral_complexity``).
      label: short human-readable name of the input (used in titles and the report).
    """

    P: np.ndarray
    seeds: np.ndarray
    log_norm: np.ndarray
    test_error: np.ndarray
    norm_name: str
    label: str


@dataclasses.dataclass(frozen=True)
class Aggregated:
    """Seed-averaged test error on a norm grid: the single input of every fit.

    Attributes:
      P: float64 [nP], training-set sizes (samples).
      log_grid: float64 [G], natural log of the grid norms λ_k (log-spaced grid ⇒ uniform steps).
      mean_error: float64 [nP, G], NaN-mean over seeds of the interpolated test error (fraction);
        NaN where no seed reaches the grid point.
      log_l0: float64 [nP], natural log of l_0 = arithmetic mean over seeds of the per-seed λ*
        (the norm at each run's lowest logged test error); NaN if no seed has one.
      n_seeds: int64 [nP], number of seeds that contributed to each P (0 = none).
      norm_name: which norm the x-axis is.
      label: short human-readable name of the input.
    """

    P: np.ndarray
    log_grid: np.ndarray
    mean_error: np.ndarray
    log_l0: np.ndarray
    n_seeds: np.ndarray
    norm_name: str
    label: str


@dataclasses.dataclass(frozen=True)
class FileSettings:
    """Fit settings stored in a reference file (``fit_*`` keys); ``None`` = not stored.

    ``x_left``/``x_right`` are on the normalised axis λ/λ_opt; NaN means "no bound" (the authors'
    ``None``), which differs from ``None`` here ("the file says nothing").
    """

    x_left: float | None = None
    x_right: float | None = None
    min_p: int | None = None
    gamma2_start: int | None = None


@dataclasses.dataclass(frozen=True)
class AnalysisInput:
    """What a PATH on the command line resolves to.

    Exactly one of ``seeds`` (run directory) and ``aggregated`` (reference file) is set.
    ``stored`` holds the exponents the file itself stores (reference files), for comparison.
    """

    kind: str  # "run" or "reference"
    path: Path
    seeds: SeedCurves | None
    aggregated: Aggregated | None
    settings: FileSettings
    stored: dict[str, float]
    entry: int | None
    n_entries: int


def load_input(path: str | Path, norm: str | None = None, entry: int | None = None) -> AnalysisInput:
    """Load a run directory, a ``curves.npz`` or a reference ``.npz`` (detected by its keys).

    Raises UsageError for a missing path, an unreadable file, or keys of neither format.
    """
    path = Path(path)
    if not path.exists():
        raise UsageError(f"{path} does not exist; give a run directory, its {CURVES_FILE}, or a reference .npz")
    npz_path = path / CURVES_FILE if path.is_dir() else path
    if not npz_path.is_file():
        raise UsageError(f"{path} has no {CURVES_FILE}; point to a finished run directory or a .npz file")
    arrays = _read_npz(npz_path)
    if all(k in arrays for k in REFERENCE_KEYS):
        return _reference_input(npz_path, arrays, norm, entry)
    if "test_error" in arrays and "P" in arrays:
        if entry is not None:
            raise UsageError("--entry applies to multi-entry reference files; use --norm NAME to pick a norm of a run")
        return _run_input(npz_path, arrays, norm)
    raise UsageError(
        f"{npz_path} has keys {sorted(arrays)[:8]}, neither a run's curves.npz (P, seeds, test_error, log_<norm>) "
        f"nor a reference file ({', '.join(REFERENCE_KEYS)}); pass one of those"
    )


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    import zipfile

    if not zipfile.is_zipfile(path):  # np.load would take it for a pickle and speak of pickled data
        raise UsageError(f"{path} is not a .npz file (not a zip archive): pass a run directory, its {CURVES_FILE}, "
                         "or a reference .npz")
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except Exception as exc:  # zipfile/pickle/OS errors all mean "not a readable npz" to the user
        first_line = (str(exc).splitlines() or [""])[0]
        raise UsageError(f"cannot read {path} as .npz ({type(exc).__name__}: {first_line}); pass an uncorrupted .npz "
                         f"file") from None


def _check_P(P: np.ndarray, where: Path) -> None:
    """P must be positive and increasing: --min-p/--gamma2-start index it and the fits take ln P."""
    if P.size == 0 or not np.all(np.isfinite(P)) or not np.all(P > 0) or not np.all(np.diff(P) > 0):
        raise UsageError(f"{where}: the P values {P.tolist()[:6]} must be positive and strictly increasing; "
                         f"sort the file's P axis (and the arrays with it)")


# ------------------------------------------------------------------------------------------------
# run directories


def norm_names(arrays: dict[str, np.ndarray]) -> list[str]:
    """Norms available in a curves.npz, in file order, without the ``log_`` prefix."""
    return [k[4:] for k in arrays if k.startswith("log_")]


def _pick_norm(arrays: dict[str, np.ndarray], norm: str | None, where: Path) -> str:
    names = norm_names(arrays)
    if not names:
        raise UsageError(f"{where} has no log_<norm> array; it must hold at least one norm (e.g. log_spectral_complexity)")
    if norm is None:
        return DEFAULT_NORM if DEFAULT_NORM in names else names[0]
    name = norm[4:] if norm.startswith("log_") else norm
    if name not in names:
        raise UsageError(f"norm {norm!r} is not in {where}; choose --norm from {', '.join(names)}")
    return name


def _run_input(npz_path: Path, arrays: dict[str, np.ndarray], norm: str | None) -> AnalysisInput:
    name = _pick_norm(arrays, norm, npz_path)
    P = np.asarray(arrays["P"]).astype(np.int64).reshape(-1)
    err = np.asarray(arrays["test_error"], dtype=np.float64)
    logn = np.asarray(arrays["log_" + name], dtype=np.float64)
    seeds = np.asarray(arrays.get("seeds", np.arange(err.shape[1] if err.ndim == 3 else 0))).astype(np.int64).reshape(-1)
    if err.ndim != 3 or err.shape != logn.shape or err.shape[:2] != (P.size, seeds.size):
        raise UsageError(
            f"{npz_path}: test_error {err.shape} and log_{name} {logn.shape} must both be [nP={P.size}, "
            f"nS={seeds.size}, nT]; regenerate the run's curves.npz"
        )
    _check_P(P, npz_path)
    if not np.isfinite(err).any():
        raise UsageError(f"{npz_path}: test_error is NaN everywhere (every seed diverged or the run logged nothing): "
                         "re-run it, e.g. with a lower train.lr")
    label = npz_path.parent.name or npz_path.stem
    curves = SeedCurves(P=P, seeds=seeds, log_norm=logn, test_error=err, norm_name=name, label=label)
    return AnalysisInput("run", npz_path, curves, None, FileSettings(), {}, None, 1)


# ------------------------------------------------------------------------------------------------
# reference files of the official analysis


def _reference_input(npz_path: Path, a: dict[str, np.ndarray], norm: str | None, entry: int | None) -> AnalysisInput:
    mean = np.asarray(a["mean_val_error_arr"], dtype=np.float64)
    grid = np.asarray(a["log_x_grid"], dtype=np.float64).reshape(-1)
    P = np.asarray(a.get("P_arr", []), dtype=np.float64).reshape(-1)
    if "l_0_arr" not in a or "P_arr" not in a or mean.ndim not in (2, 3) or mean.shape[-2:] != (P.size, grid.size):
        raise UsageError(
            f"{npz_path}: a reference file needs P_arr [P], log_x_grid [G], l_0_arr and mean_val_error_arr "
            f"[P, G] or [K, P, G]; got mean_val_error_arr {mean.shape}; pass an unmodified reference file"
        )
    _check_P(P, npz_path)
    if not np.all(grid > 0):
        raise UsageError(f"{npz_path}: log_x_grid holds non-positive norms; it must be the linear grid of the reference files")
    n_entries = 1 if mean.ndim == 2 else mean.shape[0]
    labels = [str(s) for s in a["norm_labels"]] if "norm_labels" in a else []
    entry = _pick_entry(npz_path, n_entries, entry, norm, labels)
    mean_e = mean if mean.ndim == 2 else mean[entry]
    l0 = np.asarray(a["l_0_arr"], dtype=np.float64)
    l0_e = l0 if l0.ndim == 1 else l0[entry]
    if l0_e.shape != P.shape:
        raise UsageError(f"{npz_path}: l_0_arr has shape {l0.shape}, expected [P] or [K, P]; pass an unmodified reference file")
    with np.errstate(divide="ignore", invalid="ignore"):
        log_l0 = np.where(l0_e > 0, np.log(np.where(l0_e > 0, l0_e, 1.0)), np.nan)
    n_seeds = np.full(P.size, np.asarray(a.get("seed_arr", [])).size, dtype=np.int64)
    norm_name = labels[entry] if labels else "model_norm"
    label = npz_path.stem + (f"[{entry}{':' + labels[entry] if labels else ''}]" if n_entries > 1 else "")
    agg = Aggregated(P=P, log_grid=np.log(grid), mean_error=mean_e, log_l0=log_l0, n_seeds=n_seeds,
                     norm_name=norm_name, label=label)
    settings = FileSettings(
        x_left=_entry_float(a, "fit_x_left", entry),
        x_right=_entry_float(a, "fit_x_right", entry),
        min_p=_entry_int(a, "fit_min_P", entry),
        gamma2_start=_entry_int(a, "fit_gamma2_start", entry),
    )
    stored = {}
    for key in ("gamma_1", "err_gamma_1", "gamma_2", "err_gamma_2"):
        value = _entry_float(a, key, entry) if key in a else _entry_float(a, key + "_arr", entry)
        if value is not None:
            stored[key] = value
    for key in ("k1", "k2"):
        if key in a and n_entries == 1:
            stored[key] = float(a[key])
    return AnalysisInput("reference", npz_path, None, agg, settings, stored, entry if n_entries > 1 else None, n_entries)


def _pick_entry(path: Path, n_entries: int, entry: int | None, norm: str | None, labels: list[str]) -> int:
    if norm is not None:
        if not labels:
            raise UsageError(f"{path} stores no norm labels; drop --norm (use --entry I for multi-entry files)")
        if norm not in labels:
            raise UsageError(f"norm {norm!r} is not in {path}; choose --norm from {', '.join(labels)}")
        if entry is not None and entry != labels.index(norm):
            raise UsageError(f"--entry {entry} and --norm {norm} disagree; give only one of them")
        return labels.index(norm)
    if n_entries == 1:
        if entry not in (None, 0):
            raise UsageError(f"--entry {entry} is out of range: {path} has a single entry; drop --entry")
        return 0
    names = ", ".join(f"{i}={lab}" for i, lab in enumerate(labels)) if labels else f"0..{n_entries - 1}"
    if entry is None:
        raise UsageError(f"{path} holds {n_entries} entries ({names}); choose one with --entry I")
    if not 0 <= entry < n_entries:
        raise UsageError(f"--entry {entry} is out of range for {path} ({names}); choose --entry in 0..{n_entries - 1}")
    return entry


def _entry_value(a: dict[str, np.ndarray], key: str, entry: int) -> Any:
    if key not in a:
        return None
    v = np.asarray(a[key])
    return v.item() if v.ndim == 0 else v.reshape(-1)[entry].item()


def _entry_float(a: dict[str, np.ndarray], key: str, entry: int) -> float | None:
    v = _entry_value(a, key, entry)
    return None if v is None else float(v)


def _entry_int(a: dict[str, np.ndarray], key: str, entry: int) -> int | None:
    v = _entry_value(a, key, entry)
    return None if v is None else int(v)
