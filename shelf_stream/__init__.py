"""shelf-stream: a live camera to object detections on a remote GPU over one H.265 stream."""

__version__ = "0.1.0"
