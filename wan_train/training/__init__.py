"""Training: the flow-matching LightningModule, its callbacks, and run(cfg) behind train.py."""
