"""Calibration and evaluation text: where it is found, how it is read and cut."""
