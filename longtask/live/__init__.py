"""Live updates: the watcher shared by every transport, and the websocket consumer."""
