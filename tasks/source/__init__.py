"""Stage 1, the source: what the archive publishes (listing), what a run fetches (plan), and the download."""
