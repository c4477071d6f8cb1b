"""The course's digits model and client training (NumPy, checked against fedutils) as a Flower
app: `server_app` (FedAvg, federated evaluation), `client_app` (train, evaluate), `task` (the
model's arithmetic), `progress` (the run's record for the launcher)."""
