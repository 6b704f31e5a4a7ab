"""Golden-file tests of the translators: cases.py → out/, checked by real Envoy too."""
