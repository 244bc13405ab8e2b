"""What every part uses: the one-line error contract, entry-point plumbing, atomic files."""
