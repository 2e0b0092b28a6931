"""Stage-independent foundations: errors, version, the targets table, metrics, shapes,
resource limits, tiling and host/ISA facts. Imports nothing else from the package."""
