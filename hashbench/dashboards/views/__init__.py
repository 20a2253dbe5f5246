"""The dashboard's views: each module has ``render(data: results.Loaded) -> None``."""
