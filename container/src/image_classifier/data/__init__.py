"""Finding, checking and loading labelled image folders."""
