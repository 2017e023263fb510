"""The platform process: hosts every service (the embedded default) or any subset of them."""
