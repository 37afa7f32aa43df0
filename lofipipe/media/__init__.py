"""Decoding, frame codecs and synthetic videos: pixels in and out, no Ray, no ROOT."""
