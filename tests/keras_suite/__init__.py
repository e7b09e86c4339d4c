"""Runs an ExportArchive test suite shipped in a Keras wheel against our archive subclass."""
