"""`python -m vitquant` = the `vitquant` command."""

from vitquant.cli import main

main()
