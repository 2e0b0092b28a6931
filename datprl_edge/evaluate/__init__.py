"""Stage evaluate: held-out PSNR/SSIM per task with classical baselines and harm counts
(`driver.evaluate`, `baselines.py`, `harm.py`)."""
