"""The audit: a symbol's datasets against each other, and the archive's monthly files against its daily ones."""
