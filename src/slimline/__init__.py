"""slimline."""
