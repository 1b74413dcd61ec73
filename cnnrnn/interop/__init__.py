"""Weight conversion to and from reference implementations (`cnnrnn.interop.torch`)."""
