"""Serve internals: request decoding and validation, body limits, error mapping."""
