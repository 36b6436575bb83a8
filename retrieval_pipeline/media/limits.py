"""The bounds every media input is checked against before it is decoded (the server's stricter ones are
:class:`~retrieval_pipeline.media.inputs.InputLimits`)."""

# Default request timeout (seconds) for http(s) media.
URL_TIMEOUT = 30.0
# Refuse images above this many pixels before decoding them: Pillow's own decompression-bomb threshold.
MAX_IMAGE_PIXELS = 89_478_485
# Refuse downloads (and raw byte inputs) above this size.
MAX_DOWNLOAD_BYTES = 512 * 1024 * 1024
