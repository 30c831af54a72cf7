``--client-framing websocket``: WebSocket clients (``ws://``, ``wss://``), one message per backend message, with ``--websocket-path``, ``--websocket-origin`` and ``--websocket-message-type``.
