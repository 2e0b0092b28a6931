"""Data: the bundled real images (samples), degradations, datasets and calibration sets."""
