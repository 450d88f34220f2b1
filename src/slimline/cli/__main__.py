"""`python -m slimline.cli` (e.g. under `accelerate launch -m slimline.cli distill ...`)."""

from slimline.cli import main

main()
