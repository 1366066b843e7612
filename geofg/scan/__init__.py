"""Nightly scans: an inbox of scenes warped onto one fixed grid, a mosaic with a time axis.

``geofg scan SCAN.yaml`` (:func:`geofg.scan.run.run_scan`) looks at an inbox folder, processes
only scenes that are new or changed since the last scan, writes one time slice per acquisition
date plus a ``latest_*`` view into the mosaic, and writes a run report. See docs/scan.md.
"""
