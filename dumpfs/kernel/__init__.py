"""Kernel introspection: facts read from the dumped kernel's own memory."""
