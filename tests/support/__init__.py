"""Real local servers (object origin, counting proxy, moto S3) used by the test-suite."""
