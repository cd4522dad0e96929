"""``python -m unic_cache`` (also under torchrun) runs the CLI."""

from .cli import main

main()
