"""The whole job from a recipe: validate it, then run the stages with resume
(`driver.run_pipeline`, `recipe.py`, `stages.py`)."""
