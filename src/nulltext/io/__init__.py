"""Files in and out: reading photos and masks, PNGs with metadata and grids (`images`), atomic exclusive
publishing (`outputs`), attention-map tiles (`viz`). No algorithms."""
