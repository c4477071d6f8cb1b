"""The course's model and client training as a Flower app: `task` (what the parties agree on,
and the simulation a run must reproduce), `app/` (the Flower project: ServerApp and ClientApp),
`launcher` (starts a real federation of processes on this machine), `processes` (starting,
watching and stopping them), `clientapp_worker` (one long-lived ClientApp process per
SuperNode). Current-TensorFlow environment only (Flower needs protobuf >= 5)."""
