"""Model builders, one file per family; ``catalog`` registers them."""
