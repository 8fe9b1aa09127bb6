"""Our HTTP/1.1 client on httptools (llhttp): see client.py for why it is ours."""
