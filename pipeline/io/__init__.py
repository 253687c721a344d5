"""Bytes in: literal URIs (local paths and s3://) and the hardened image decoder."""
