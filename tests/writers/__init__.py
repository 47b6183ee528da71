"""Writers of dump formats for tests: independent of the readers under test."""
