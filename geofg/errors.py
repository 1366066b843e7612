"""The geofg error tree.

Every error geofg raises on purpose derives from :class:`GeofgError`. Each carries an
``exit_code`` class attribute; the CLI maps errors to exit codes through that attribute in one
place (``geofg.cli.EXIT_CODES`` documents the table). Messages are one line and say what was
expected, what was found and how to fix it.

Exit codes (DESIGN.md): 0 done, 2 usage, 3 input/config/weights rejected before any write
(or an input that changed during the run), 4 finished with failed units, 5 cluster unreachable or
insecure, 6 mosaic locked by another run, 7 output could not be written (disk full, read-only,
I/O error; the mosaic is consistent and a re-run resumes), 8 interrupted by SIGTERM or SIGINT
(units in flight finished, lock released; a re-run resumes). See docs/reliability.md.

This module imports nothing from geofg.
"""

from __future__ import annotations

import errno


class GeofgError(Exception):
    """Root of every error geofg raises on purpose."""

    exit_code: int = 1


# --- rejected before any write: exit 3 --------------------------------------------------------


class RejectedError(GeofgError):
    """Input, config, path or weights rejected before any output was written."""

    exit_code = 3


class ConfigError(RejectedError, ValueError):
    """A configuration value is invalid or inconsistent."""


class MissingExtraError(ConfigError):
    """An optional dependency (a pip extra such as ``geofg[ray]``) the command needs is missing."""


class InputError(RejectedError):
    """An input raster (or band-file set) cannot be used."""


class RasterNotFoundError(InputError, FileNotFoundError):
    """An input path does not exist."""


class UnreadableRasterError(InputError):
    """GDAL cannot open or read the input as a raster."""


class ForbiddenPathError(InputError):
    """A path is remote, virtual (/vsi...), or escapes its allowed root."""


class ForbiddenDriverError(InputError):
    """The input is in a format geofg does not open (only GeoTIFF/COG and JPEG2000)."""


class MissingCRSError(InputError):
    """The input has no coordinate reference system."""


class UnsupportedGeoTransformError(InputError):
    """The input's geotransform is rotated, skewed or not north-up."""


class RasterTooLargeError(InputError):
    """The input declares more pixels than the configured limit."""


class MissingBandsError(InputError):
    """The input lacks bands the model needs."""


class BandCountMismatchError(InputError):
    """The number of band names does not match the raster's band count."""


class GridMismatchError(InputError):
    """Band files of one product do not share a grid geofg can align."""


class ModelError(RejectedError):
    """A model bundle cannot be used."""


class UnknownModelError(ModelError, KeyError):
    """No bundle of that name is installed."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it one plain line
        return str(self.args[0]) if self.args else ""


class WeightsError(ModelError):
    """A weights file is corrupt, truncated or inconsistent with its card."""


class UnsafeWeightsFormatError(WeightsError):
    """A weights file is not safetensors (e.g. a pickle); it is refused before any byte is read."""


class WeightsChecksumError(WeightsError):
    """A weights file's sha256 does not match the expected value."""


class MosaicError(GeofgError):
    """Base class for problems with the output mosaic."""


class MosaicSchemaMismatchError(MosaicError, RejectedError):
    """An existing mosaic has another grid or schema than this run would write."""

    exit_code = 3


class MosaicExistsError(MosaicError, RejectedError):
    """The output exists and is not a geofg mosaic (or --overwrite is required)."""

    exit_code = 3


class MosaicDamagedError(MosaicError, RejectedError):
    """A mosaic's metadata or a chunk cannot be decoded (truncated, garbage, checksum mismatch)."""

    exit_code = 3


class InputChangedError(InputError):
    """An input file changed (size, mtime or inode) after preflight, while the run read it.

    Unlike other unit errors it stops the run: every unit read after the change would mix old and
    new content. Nothing read after the change is recorded done.
    """


# --- after writing started -------------------------------------------------------------------


class UnitFailedError(GeofgError):
    """One unit of work failed; carries the unit id. The run goes on with the others."""

    exit_code = 4

    def __init__(self, unit_id: str, message: str) -> None:
        super().__init__(f"unit {unit_id}: {message}")
        self.unit_id = unit_id


class RunFailedUnitsError(GeofgError):
    """A run finished but some units failed; the mosaic is consistent and a re-run resumes."""

    exit_code = 4


class ClusterError(GeofgError):
    """A Ray cluster is unreachable or the job did not start."""

    exit_code = 5


class InsecureClusterError(ClusterError):
    """A Ray cluster accepts unauthenticated requests."""


class StorageUnreachableError(GeofgError):
    """An object store (an S3 endpoint) does not answer; nothing was written. Exit 5 like a cluster."""

    exit_code = 5


class MosaicLockedError(MosaicError):
    """Another run holds the mosaic's lock."""

    exit_code = 6


class OutputWriteError(MosaicError):
    """The mosaic (or a report) could not be written: disk full, read-only, quota, I/O error.

    The run stops; units without a ledger record are redone by the next run.
    """

    exit_code = 7


class RunInterruptedError(GeofgError):
    """SIGTERM or SIGINT stopped the run: no new units, those in flight finished, lock released."""

    exit_code = 8


#: Errors that fail one unit (recorded failed, retried up to ``runner.max_attempts``; the run goes
#: on and exits 4), not the whole run. Anything else stops the run, and so do those for which
#: :func:`stops_run` is True.
UNIT_ERRORS = (GeofgError, OSError, RuntimeError, ValueError, MemoryError)

#: errno values of writes that no retry or other unit can fix: disk full, quota, read-only, too big.
OUTPUT_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG})


def stops_run(e: BaseException) -> bool:
    """True for a unit error that must stop the whole run rather than fail one unit.

    An input that changed under the run (every later read would mix old and new content), and a
    write the disk refuses (full, quota, read-only, file too big: every later unit would fail too).
    """
    return isinstance(e, InputChangedError) or (
        isinstance(e, OSError) and not isinstance(e, GeofgError) and e.errno in OUTPUT_FULL_ERRNOS
    )


# --- warnings --------------------------------------------------------------------------------


class GeofgWarning(UserWarning):
    """Root of geofg's warnings."""


class NodataAssumedWarning(GeofgWarning):
    """No nodata was declared; geofg assumed one."""


class StaleLockWarning(GeofgWarning):
    """A lock left by a dead process was taken over."""


class FieldsWarning(GeofgWarning):
    """Field polygons were repaired, or lie (partly) outside the mosaic; the message names them."""
