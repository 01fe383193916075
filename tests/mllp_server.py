"""A small MLLP receiver on loopback for the tests: a real TCP server that reads HL7 v2
messages in MLLP frames, keeps them, and answers each with an ACK (MSA-1 ``answer``:
AA accept, AE error, AR reject) or, with ``answer = None``, hangs up without one."""

from __future__ import annotations

import socketserver
import threading

START, END = b"\x0b", b"\x1c\x0d"


class MllpReceiver:
    def __init__(self, port: int = 0) -> None:
        self.messages: list[str] = []
        self.answer: str | None = "AA"
        receiver = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self):
                data = b""
                while True:
                    chunk = self.request.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                    while END in data:
                        raw, data = data.split(END, 1)
                        message = raw.lstrip(START).decode("utf-8")
                        receiver.messages.append(message)
                        if receiver.answer is None:
                            return
                        self.request.sendall(START + receiver.ack(message).encode() + END)

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def ack(self, message: str) -> str:
        msh = message.split("\r", 1)[0].split("|")
        control_id = msh[9] if len(msh) > 9 else ""
        return (
            f"MSH|^~\\&|RIS||{msh[2] if len(msh) > 2 else ''}||20260101000000||ACK^R01^ACK|A{control_id}|P|2.5\r"
            f"MSA|{self.answer}|{control_id}"
        )

    def start(self) -> "MllpReceiver":
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
