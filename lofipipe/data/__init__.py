"""Readers of the tables and records under ROOT: manifest, annotations, snippets, features, runs."""
