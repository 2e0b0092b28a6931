"""File input and output: images, DICOM, atomic writes."""
