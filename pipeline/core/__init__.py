"""Shared foundations: errors, params loading, atomic files and folders, devices and seeds, image I/O."""
