"""ray_s3ft."""
