"""Free loopback ports for the servers a bench starts."""
import socket

_GIVEN = set()


def free_port(host="127.0.0.1"):
    """A free port on `host`, never handed out twice by this process: the
    kernel may offer a just-released port again before its new owner binds
    it, and two servers given one port make one of them answer for both."""
    while True:
        with socket.socket() as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        if port not in _GIVEN:
            _GIVEN.add(port)
            return port
