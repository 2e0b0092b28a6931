"""Stage fold: bake fixed task prompts into static weights (`folding.fold_static`) or simplify
exactly and keep routing (`folding.fold_dynamic`)."""
