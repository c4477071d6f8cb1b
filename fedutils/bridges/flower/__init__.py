"""The course's model and client training as a Flower app: `task` (what both sides share),
`app/` (the Flower project: ServerApp and ClientApp), `launcher` (starts a real federation of
processes on this machine). Current-TensorFlow environment only (Flower needs protobuf >= 5)."""
