"""Stage restore: restore image files, tiled and written atomically (`driver.restore_files`), with a
torch model or an exported artifact (`runners.open_runner`)."""
