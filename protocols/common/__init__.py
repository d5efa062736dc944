"""How bytes move between parties: the wire format and framed TCP sockets."""
