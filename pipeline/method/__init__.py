"""The method: the dense forward, attention variants (bases + ResCLIP's RCS/SFR), presets, pre- and
post-processing (docs/method.md)."""
