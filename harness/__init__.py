"""What the tests and the benchmarks run against: generated images and masks, a loopback
image host, the server and the CLI in processes of their own, an API client, and a cluster on
spaces of its own in PostgreSQL, RabbitMQ and an S3 server. Shared by ``tests/`` and
``bench/``, neither of which imports the other."""
