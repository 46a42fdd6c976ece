"""The client: capture, encode, send, receive results, and show them."""
