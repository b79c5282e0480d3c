"""Checks of raw event data, run before any framing or training.

Corrupt events are otherwise framed silently: a NaN or infinite timestamp (or one past the int64
range) lands in step 0 after the integer cast, an unsorted SHD sample loses or moves spikes, a
sample with more times than units invents spikes, a negative DVS ``x`` wraps to the last column and
an ``x`` past the sensor fails mid-epoch with an ``IndexError`` that names no file. These functions
refuse such data with a :class:`CorruptEventsError` that names the file, the sample and the field.

They are pure functions of arrays; the data modules call them in ``setup`` and the event engine
(:func:`sbnn.kernels.api.events_from_tonic`) calls :func:`check_event_array` on its input.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["CorruptEventsError", "check_event_array", "check_spike_sample"]

#: timestamps at or beyond this magnitude do not survive a cast to int64
_INT64_LIMIT = float(2**63)


class CorruptEventsError(ValueError):
    """Event data that cannot be framed faithfully (non-finite or out-of-range fields)."""


def _first_bad(mask: np.ndarray) -> int:
    return int(np.argmax(mask))


def _check_times(t: np.ndarray, where: str, *, require_sorted: bool, unit_scale: float = 1.0) -> None:
    if t.dtype.kind not in "iuf":
        raise CorruptEventsError(f"{where}: field t has dtype {t.dtype}, expected integer or floating timestamps")
    if t.dtype.kind == "f":
        bad = ~np.isfinite(t)
        if bad.any():
            i = _first_bad(bad)
            raise CorruptEventsError(
                f"{where}: field t of event {i} is {t[i].item()!r} (not finite; {int(bad.sum())} such events); "
                "the recording is corrupt: re-extract or remove it"
            )
        big = np.abs(t.astype(np.float64)) * unit_scale >= _INT64_LIMIT
        if big.any():
            i = _first_bad(big)
            raise CorruptEventsError(
                f"{where}: field t of event {i} is {t[i].item()!r}, past the int64 range; the recording is corrupt"
            )
    neg = t < 0
    if neg.any():
        i = _first_bad(neg)
        raise CorruptEventsError(f"{where}: field t of event {i} is negative ({t[i].item()!r}); timestamps start at 0")
    if require_sorted and t.size > 1:
        down = np.diff(t) < 0
        if down.any():
            i = _first_bad(down) + 1
            raise CorruptEventsError(
                f"{where}: field t is not sorted: event {i} (t={t[i].item()!r}) precedes event {i - 1} (t={t[i - 1].item()!r}); "
                "sort the events by time or re-extract the recording"
            )


def _check_index(values: np.ndarray, name: str, size: int, where: str) -> None:
    if values.dtype.kind == "f":
        frac = ~np.isfinite(values) | (values != np.floor(values))
        if frac.any():
            i = _first_bad(frac)
            raise CorruptEventsError(f"{where}: field {name} of event {i} is {values[i].item()!r}, not a whole number")
    elif values.dtype.kind not in "iub":
        raise CorruptEventsError(f"{where}: field {name} has dtype {values.dtype}, expected integers")
    bad = (values < 0) | (values >= size)
    if bad.any():
        i = _first_bad(bad)
        raise CorruptEventsError(
            f"{where}: field {name} of event {i} is {values[i].item()!r}, outside the sensor (0..{size - 1}; "
            f"{int(bad.sum())} such events)"
        )


def check_event_array(
    events: np.ndarray, sensor_size: Sequence[int], *, where: str = "events", require_sorted: bool = True
) -> None:
    """Refuse a structured event array whose fields cannot be framed on ``sensor_size``.

    Checks: ``t`` finite, non-negative, within the int64 range and (``require_sorted``)
    non-decreasing; ``x`` in ``0..W−1``, ``y`` in ``0..H−1`` and ``p`` in ``0..P−1`` where
    present (a single-polarity sensor accepts one polarity value of any kind, as tonic's
    ``ToFrame`` does: tonic's SHD events carry ``p = 1`` on a ``(700, 1, 1)`` sensor).

    Args:
        events: structured ``[E]`` array with fields ``t``, ``x`` and optionally ``y``, ``p``
            (tonic's format).
        sensor_size: tonic's ``(W, H, P)``.
        where: what the events are, for the message (e.g. ``"DVSGesture recording <file>"``).
        require_sorted: refuse decreasing timestamps.

    Raises:
        CorruptEventsError: naming ``where``, the event index and the field.
    """
    names = events.dtype.names if isinstance(events, np.ndarray) else None
    if names is None or not {"t", "x"} <= set(names):
        raise CorruptEventsError(f"{where}: expected a structured event array with fields t and x, got {type(events).__name__}")
    w, h, p = (int(s) for s in sensor_size)
    _check_times(np.asarray(events["t"]), where, require_sorted=require_sorted)
    _check_index(np.asarray(events["x"]), "x", w, where)
    if "y" in names:
        _check_index(np.asarray(events["y"]), "y", h, where)
    if "p" in names and events.size:
        pol = np.asarray(events["p"])
        if p == 1:
            if (pol != pol[0]).any():
                raise CorruptEventsError(f"{where}: field p holds several polarities on a single-polarity sensor")
        else:
            _check_index(pol.astype(np.int64) if pol.dtype.kind == "b" else pol, "p", p, where)


def check_spike_sample(
    times: np.ndarray, units: np.ndarray, n_units: int, *, where: str, unit_scale: float = 1e6
) -> None:
    """Refuse one SHD-style sample: spike ``times`` (s) and ``units`` (channel of each spike).

    Checks: as many times as units (a longer ``times`` would invent spikes, a shorter one drop
    them), times finite, non-negative, sorted and within the int64 range once multiplied by
    ``unit_scale`` (tonic converts SHD's seconds to µs), units whole numbers in ``0..n_units−1``.

    Raises:
        CorruptEventsError: naming ``where`` (file and sample index) and the field.
    """
    times, units = np.asarray(times), np.asarray(units)
    if times.shape != units.shape or times.ndim != 1:
        raise CorruptEventsError(
            f"{where}: spikes/times has {times.size} entries but spikes/units has {units.size}; each spike needs "
            "one time and one unit: the file is corrupt, replace it"
        )
    _check_times(times, f"{where} spikes/times", require_sorted=True, unit_scale=unit_scale)
    _check_index(units, "units", n_units, f"{where} spikes/units")
