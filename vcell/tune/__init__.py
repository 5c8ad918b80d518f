"""Search campaigns: Ray Tune over whole vcell training runs (`vcell tune`)."""
