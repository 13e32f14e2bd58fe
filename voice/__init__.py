"""The media plane: the voice relay (an SFU over UDP, with a TCP arm) and simulated voice clients."""
