"""Real local servers (object origin, counting proxy, moto S3) and the engine factory used by the tests."""
