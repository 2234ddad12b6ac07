"""Data layer: schemas, loading, validation, cleaning, splits and privacy."""
