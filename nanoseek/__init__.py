"""nanoseek."""
