"""The end-to-end demo, outside the library: data, methods (keyed by id), training, report, command line."""
