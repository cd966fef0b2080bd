"""Workflows that combine recording, diffing and the Hub: the layer under the CLI."""
