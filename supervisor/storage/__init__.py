"""Disk backends (image files, files in ZFS datasets, zvols) and the block calls."""
