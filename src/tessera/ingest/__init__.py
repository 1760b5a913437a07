"""Copying into Tessera from elsewhere: ingest of URLs and files, bulk import of trees, and the allow-list
both check their sources against."""
