"""Reference runners: the full-precision oracle that every candidate is judged against."""
