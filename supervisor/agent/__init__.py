"""The QEMU guest agent client: a sans-IO protocol core and a trio transport."""
