"""Root filesystem recipes shipped with coopy (``image = "recipe:NAME"``).

See coopy/image/recipe.py."""
